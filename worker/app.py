"""The Celery app, built from the service settings (``celery -A worker.app worker``).

Reliability settings (DESIGN.md §4, Celery's task guidance):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged
  only once its task returns, so a worker that dies does not lose it; tasks are
  safe to run again because each one first takes the job's lease in the database.
* ``worker_prefetch_multiplier = 1``: a worker holds one message at a time, so a
  queued job is not stuck behind a running one on a busy worker.
* Explicit task names (``worker.run_job``, ``worker.run_evaluation``): the API
  sends them by name and never imports this package.
* Redis re-delivers a message not acknowledged within its visibility timeout
  (one hour by default), and training runs longer: the copy finds the lease
  held and returns at once. A killed worker's message is not re-delivered
  soon by either broker; the sweep below sends the job again.
* Results are not stored (the database holds job state); the tasks return small
  dicts for the worker's log.

A warm shutdown (SIGTERM) hands a running job over: the trainer saves its state
at the next step and the job is queued again for another worker, its attempt
not counted (this works where the task runs in the worker's main process, the
``solo`` pool, which the worker image and docker-compose.yml use; in a
``prefork`` child the job runs on until the shutdown's grace period ends, and the
sweep requeues it once its heartbeat is stale).

A worker checks at start that it can use its device (``DYART_DEVICE``) and exits
with one line saying why not: otherwise it would take every queued job and fail it.
Invalid settings are one line per variable too.

The stale-job sweep runs inside every worker process as a daemon thread (see
:mod:`worker.sweep`), started when the worker is ready: it needs no beat process
and works with the serverless SQLite broker of the embedded mode.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down
from pydantic import ValidationError

from db.settings import Settings, get_settings, settings_error_lines


class AckAfterBrokerLoss(logging.Filter):
    """kombu logs ``CRITICAL Couldn't ack …`` with a traceback when a finished task's
    message cannot be acknowledged because the broker connection went away (a broker
    restart). Nothing is lost or run twice then: the job's row is already final, and
    a copy the broker delivers again finds it so and returns. This says that, as a
    warning without the traceback."""

    MESSAGE = (
        "could not acknowledge a finished task's message (delivery tag %r, %r): the "
        "broker connection was lost; if the broker delivers it again, the job's state "
        "in the database turns the copy away"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.CRITICAL and str(record.msg).startswith("Couldn't ack"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.exc_info, record.exc_text = self.MESSAGE, None, None
        return True


# Celery's request logger is the one kombu's ``ack_log_error`` is handed.
logging.getLogger("celery.worker.request").addFilter(AckAfterBrokerLoss())


def transport_options(broker_url: str) -> dict[str, Any]:
    """Broker options: kombu's SQLAlchemy transport passes them to ``create_engine``."""
    if broker_url.startswith("sqla+sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {}


def make_celery(settings: Settings) -> Celery:
    """The worker's Celery app for ``settings``."""
    app = Celery("dyart", broker=settings.broker_url, backend=settings.result_backend)
    app.conf.update(
        include=["worker.tasks"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.worker_queue,
        broker_transport_options=transport_options(settings.broker_url),
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=True,
    )
    return app


def device_problem(device: str) -> str | None:
    """Why a worker cannot train on ``device`` (DYART_DEVICE); None when it can.

    Asks only what CUDA reports (no context is made, so a prefork pool can still fork).
    """
    import torch

    from dyart.errors import ConfigError
    from dyart.train import resolve_device

    try:
        resolved = resolve_device(device)
    except ConfigError as exc:
        return str(exc).removeprefix("device: ")
    count = torch.cuda.device_count() if resolved.type == "cuda" else 0
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= count:
        return f"only {count} CUDA device(s) are visible here (CUDA_VISIBLE_DEVICES)"
    return None


def _settings_or_exit() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:  # one line per variable, not a traceback
        sys.exit("\n".join(f"worker: {line}" for line in settings_error_lines(exc)))


app = make_celery(_settings_or_exit())


@worker_init.connect
def _check_device(sender: Any = None, **_: Any) -> None:
    # Before the worker takes a message: a worker that cannot use its device would
    # take every queued job and fail it. os._exit: Celery would log SystemExit raised
    # here as a crash with a traceback; nothing is open yet that needs closing.
    device = get_settings().device
    problem = device_problem(device)
    if problem is not None:
        sys.stderr.write(f"worker: DYART_DEVICE={device} cannot be used: {problem}\n")
        sys.stderr.flush()
        os._exit(1)


@worker_ready.connect
def _start_sweep(sender: Any = None, **_: Any) -> None:
    from worker.sweep import start_sweeper

    start_sweeper(app, get_settings())


@worker_shutting_down.connect
def _hand_over_running_job(sender: Any = None, **_: Any) -> None:
    # Warm shutdown (SIGTERM): a running job saves its state at its next step and
    # goes back to the queue for another worker, instead of holding the shutdown.
    from worker.runner import SHUTDOWN

    SHUTDOWN.set()


@worker_shutdown.connect
def _stop_sweep(sender: Any = None, **_: Any) -> None:
    from worker.sweep import stop_sweeper

    stop_sweeper()
