"""A Celery client that only sends tasks by name.

The API never imports ``worker``: it knows the task names and their arguments
(ids only) and nothing else. Sending is best effort by design: the job row is
committed first, so a broker that is down leaves the job queued, and the
worker's periodic sweep sends it again.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

log = logging.getLogger("api")

RUN_JOB = "worker.run_job"
RUN_EVALUATION = "worker.run_evaluation"
_CONNECT_TIMEOUT = 2.0


def _transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith("sqla+"):
        # kombu hands these to SQLAlchemy's create_engine (DESIGN.md §2).
        if "sqlite" in broker_url:
            return {"connect_args": {"timeout": 10}}
        return {}
    if broker_url.startswith(("redis", "rediss")):
        return {"socket_connect_timeout": _CONNECT_TIMEOUT, "socket_timeout": 5.0}
    return {}


def make_celery_client(settings: Any) -> Celery:
    """A Celery app for sending only, configured from ``settings``' broker URL."""
    app = Celery("dyart-api", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=_transport_options(settings.broker_url),
        broker_connection_timeout=_CONNECT_TIMEOUT,
        broker_connection_retry_on_startup=False,
        task_default_queue=getattr(settings, "worker_queue", "celery"),
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def send_task(app: Celery, name: str, ident: str) -> bool:
    """Send task ``name`` with ``[ident]``; False (logged) if the broker is down."""
    try:
        app.send_task(name, args=[ident], retry=False)
    except Exception as exc:  # any broker failure: the sweep re-sends from the DB
        log.warning(
            "could not send %s(%s) to the broker (%s); the sweep will retry", name, ident, exc
        )
        return False
    return True


def broker_reachable(app: Celery, timeout: float = _CONNECT_TIMEOUT) -> bool:
    """Open a connection to the broker within ``timeout`` seconds."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception:
        return False
    return True
