"""The periodic sweep every worker runs in a daemon thread (no beat process needed).

Every ``sweep_seconds`` it

* requeues running jobs whose heartbeat is older than ``stale_after_seconds``
  (their worker died; the job resumes from its latest checkpoint), or fails
  them once they have used ``max_attempts``; a heartbeat that went stale during
  a database outage this process saw (``OutageClock``) is not the worker's
  fault, and the job gets its attempt back;
* does the same for evaluations;
* ends canceled any queued job with a cancel pending (asked while it ran, just
  before it went back to the queue): no worker claims such a job;
* sends again the task of any job or evaluation still queued
  ``resend_after_seconds`` after its task went out (the broker was down when
  the API sent it, or lost it); each further re-send waits twice as long, up
  to 8 times ``resend_after_seconds`` (``db.jobs.resend_interval``), so a job
  merely waiting in a long queue gains a few messages, not one per interval.

Each pass first touches ``worker_alive_file`` (the container health check's sign
of life, :mod:`worker.alive`) and writes this worker's row of presence
(:mod:`db.workers`: the API's ``/health`` counts the workers that can take a job);
the row is removed when the worker shuts down.

Several workers may sweep at once: each change is a conditional UPDATE, so a
job is requeued once, and a task sent twice finds the lease and exits.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from celery import Celery

from db import evaluations, jobs, workers
from db.models import utcnow
from db.settings import Settings
from worker import alive

log = logging.getLogger("worker.sweep")
RUN_JOB = "worker.run_job"
RUN_EVALUATION = "worker.run_evaluation"

_stop = threading.Event()
_thread: threading.Thread | None = None
_me: workers.Identity | None = None


class OutageClock:
    """When this process last reached the database before an outage it saw.

    ``began`` is set at the first failed pass after a good one (to that good
    pass's time, at or before the outage's start) and forgotten
    ``stale_after`` seconds after the database answers again: by then every live
    worker has written a heartbeat, so a job still stale was lost otherwise.
    A second outage within that time extends the first.
    """

    def __init__(self, stale_after: float, now: datetime) -> None:
        self.stale_after = stale_after
        self.last_answer = now
        self.began: datetime | None = None
        self._answered_again: datetime | None = None

    def unreachable(self) -> None:
        if self.began is None:
            self.began = self.last_answer
        self._answered_again = None

    def answered(self, now: datetime) -> None:
        if self.began is not None:
            if self._answered_again is None:
                self._answered_again = now
            elif (now - self._answered_again).total_seconds() > self.stale_after:
                self.began = self._answered_again = None
        self.last_answer = now


def sweep_once(
    session: Any, app: Celery, settings: Settings, outage_began: datetime | None = None
) -> dict[str, list[str]]:
    """One pass; returns the ids it sent again, by kind. ``outage_began``: see
    ``OutageClock``."""
    now = utcnow()
    stale = jobs.requeue_stale_jobs(session, now, settings.stale_after_seconds, outage_began)
    jobs.end_pending_cancels(session, now)
    unsent = jobs.queued_jobs_to_resend(session, now, settings.resend_after_seconds)
    stale_evaluations = evaluations.requeue_stale_evaluations(
        session, now, settings.stale_after_seconds, settings.max_attempts, outage_began
    )
    stale_evaluations += evaluations.queued_evaluations_to_resend(
        session, now, settings.resend_after_seconds
    )
    for job_id in dict.fromkeys(stale + unsent):
        app.send_task(RUN_JOB, args=[job_id])
    for evaluation_id in dict.fromkeys(stale_evaluations):
        app.send_task(RUN_EVALUATION, args=[evaluation_id])
    if stale or unsent or stale_evaluations:
        log.warning(
            "sweep: requeued stale jobs %s, re-sent queued jobs %s, evaluations %s",
            stale, unsent, stale_evaluations,
        )  # fmt: skip
    return {"stale": stale, "unsent": unsent, "evaluations": stale_evaluations}


def _device_name(device: str) -> str:
    """The device this worker trains on, resolved (``auto`` says which it chose)."""
    from dyart.errors import ConfigError
    from dyart.train import resolve_device

    try:
        return str(resolve_device(device))
    except ConfigError:
        return device


class Presence:
    """Writes this worker's row of presence. A failure (a database not yet migrated
    for this version, during a rolling upgrade) is logged once and does not keep the
    sweep from requeueing stale jobs; an outage makes the sweep itself fail next."""

    def __init__(self, me: workers.Identity):
        self.me, self.failing = me, False

    def beat(self, session: Any) -> None:
        try:
            workers.beat(session, self.me)
        except Exception as exc:
            try:
                session.rollback()
            except Exception:  # the connection is gone: the sweep's query says so
                pass
            if not self.failing:
                log.warning(
                    "could not write this worker's row of presence (/health will not count "
                    "it; is the database migrated? dyart-service migrate): %s",
                    str(exc).strip().splitlines()[0],
                )
            self.failing = True
        else:
            if self.failing:
                log.info("this worker's row of presence is written again")
            self.failing = False


def _loop(app: Celery, settings: Settings, me: workers.Identity) -> None:
    from worker.runner import DATABASE_DOWN, log_retry, session_factory

    clock = OutageClock(settings.stale_after_seconds, utcnow())
    presence = Presence(me)
    while not _stop.is_set():
        try:  # the container's health check reads this file's age (worker.alive)
            alive.touch(settings.worker_alive_file)
        except OSError as exc:
            log.warning("could not touch %s: %s", settings.worker_alive_file, exc)
        try:
            with session_factory()() as session:
                presence.beat(session)
                sweep_once(session, app, settings, clock.began)
            clock.answered(utcnow())
        except Exception as exc:  # a database or broker blip: try again next time
            if isinstance(exc, DATABASE_DOWN):
                clock.unreachable()
            log_retry("sweep", exc, settings.sweep_seconds)
        _stop.wait(settings.sweep_seconds)


def start_sweeper(app: Celery, settings: Settings) -> threading.Thread:
    """Start the sweep thread of this process (once)."""
    global _thread, _me
    if _thread is None or not _thread.is_alive():
        _stop.clear()
        _me = workers.Identity(
            queue=settings.worker_queue,
            device=_device_name(settings.device),
            beat_seconds=settings.sweep_seconds,
        )
        _thread = threading.Thread(
            target=_loop, args=(app, settings, _me), name="sweep", daemon=True
        )
        _thread.start()
        log.info("stale-job sweep every %ss (worker %s)", settings.sweep_seconds, _me.id)
    return _thread


def stop_sweeper() -> None:
    """Stop the sweep and remove this worker's row of presence (best effort: a row
    left behind stops counting after a few missed beats)."""
    from worker.runner import session_factory

    _stop.set()
    if _me is None:
        return
    if _thread is not None and _thread is not threading.current_thread():
        _thread.join(timeout=30)  # a pass under way would write the row again
    try:
        with session_factory()() as session:
            workers.leave(session, _me)
    except Exception as exc:
        log.warning("could not remove this worker's row of presence: %s", exc)
