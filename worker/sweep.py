"""The periodic sweep every worker runs in a daemon thread (no beat process needed).

Every ``sweep_seconds`` it

* requeues running jobs whose heartbeat is older than ``stale_after_seconds``
  (their worker died; the job resumes from its latest checkpoint), or fails
  them once they have used ``max_attempts``;
* does the same for evaluations;
* sends again the task of any job or evaluation still queued
  ``resend_after_seconds`` after its task went out (the broker was down when
  the API sent it, or lost it); each further re-send waits twice as long, up
  to 8 times ``resend_after_seconds`` (``db.jobs.resend_interval``), so a job
  merely waiting in a long queue gains a few messages, not one per interval.

Several workers may sweep at once: each change is a conditional UPDATE, so a
job is requeued once, and a task sent twice finds the lease and exits.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery

from db import evaluations, jobs
from db.models import utcnow
from db.settings import Settings

log = logging.getLogger("worker.sweep")
RUN_JOB = "worker.run_job"
RUN_EVALUATION = "worker.run_evaluation"

_stop = threading.Event()
_thread: threading.Thread | None = None


def sweep_once(session: Any, app: Celery, settings: Settings) -> dict[str, list[str]]:
    """One pass; returns the ids it sent again, by kind."""
    now = utcnow()
    stale = jobs.requeue_stale_jobs(session, now, settings.stale_after_seconds)
    unsent = jobs.queued_jobs_to_resend(session, now, settings.resend_after_seconds)
    stale_evaluations = evaluations.requeue_stale_evaluations(
        session, now, settings.stale_after_seconds, settings.max_attempts
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


def _loop(app: Celery, settings: Settings) -> None:
    from worker.runner import log_retry, session_factory

    while not _stop.is_set():
        try:
            with session_factory()() as session:
                sweep_once(session, app, settings)
        except Exception as exc:  # a database or broker blip: try again next time
            log_retry("sweep", exc, settings.sweep_seconds)
        _stop.wait(settings.sweep_seconds)


def start_sweeper(app: Celery, settings: Settings) -> threading.Thread:
    """Start the sweep thread of this process (once)."""
    global _thread
    if _thread is None or not _thread.is_alive():
        _stop.clear()
        _thread = threading.Thread(target=_loop, args=(app, settings), name="sweep", daemon=True)
        _thread.start()
        log.info("stale-job sweep every %ss", settings.sweep_seconds)
    return _thread


def stop_sweeper() -> None:
    _stop.set()
