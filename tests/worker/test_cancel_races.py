"""A cancel racing a claim, a hand-over or the stale sweep, on the real database: a job
whose cancel was asked always ends canceled, never queued for good, and never
canceled under a worker that trains it; the job's own evaluation ends with it.

The races are made to happen, not hoped for: a hook on the engine runs the other
party's statements (another session, committed) just before the first
``UPDATE job`` of the session under test reaches the database.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event, update
from sqlalchemy.exc import OperationalError

from db import jobs
from db.models import Evaluation, Job, utcnow
from tests.worker.conftest import add_own_evaluation, log_lines
from worker import runner


def _claim(session_factory, job_id, worker, now=None):
    with session_factory() as session:
        return jobs.claim_job(session, job_id, worker, 30, now=now)


def _job(session_factory, job_id) -> Job:
    with session_factory(expire_on_commit=False) as session:
        return session.get(Job, job_id)


def _cancel(session_factory, job_id) -> None:
    with session_factory() as session:
        jobs.request_cancel(session, session.get(Job, job_id))
        session.commit()


def _evaluation(session_factory, evaluation_id) -> tuple[str, str | None]:
    with session_factory() as session:
        row = session.get(Evaluation, evaluation_id)
        return row.status, row.error


@contextmanager
def before_first_job_update(session_factory, other: Callable[[], None]):
    """Run ``other()`` just before the next ``UPDATE job`` statement goes out."""
    engine, fired = session_factory.kw["bind"], []

    def hook(conn, cursor, statement, parameters, context, executemany):
        if not fired and statement.lstrip().upper().startswith("UPDATE JOB SET"):
            fired.append(True)
            other()

    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield fired
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    assert fired, "the race was not staged: no UPDATE job went out"


def test_cancel_of_a_job_claimed_since_it_was_read_asks_its_worker_to_stop(session_factory, job_id):
    """The API read the job queued; a worker claims it before the cancel is written:
    the job is not marked canceled under the worker that trains it."""
    with session_factory() as api:
        job = api.get(Job, job_id)
        assert job.status == "queued"
        with before_first_job_update(session_factory, lambda: _claim(session_factory, job_id, "w")):
            jobs.request_cancel(api, job)
        api.commit()
        assert (job.status, job.cancel_requested) == ("running", True)
    job = _job(session_factory, job_id)
    assert (job.status, job.lease_owner, job.cancel_requested) == ("running", "w", True)
    assert job.finished_at is None


def test_cancel_of_a_job_requeued_since_it_was_read_ends_it_at_once(session_factory, job_id):
    """The API read the job running; the sweep puts it back in the queue before the
    cancel is written: the job ends canceled, not queued with its flag set."""
    start = utcnow()
    assert _claim(session_factory, job_id, "w", now=start)

    def sweep():
        with session_factory() as session:
            assert jobs.requeue_stale_jobs(session, start + timedelta(seconds=61), 60) == [job_id]

    with session_factory() as api:
        job = api.get(Job, job_id)
        assert job.status == "running"
        with before_first_job_update(session_factory, sweep):
            jobs.request_cancel(api, job)
        api.commit()
    job = _job(session_factory, job_id)
    assert (job.status, job.lease_owner) == ("canceled", None) and job.finished_at


def test_cancel_of_an_ended_job_is_refused(session_factory, job_id):
    assert _claim(session_factory, job_id, "w")
    with session_factory() as session:
        assert jobs.mark_succeeded(session, job_id, "w")
        with pytest.raises(jobs.InvalidTransitionError, match="is succeeded; it cannot become"):
            jobs.request_cancel(session, session.get(Job, job_id))


def test_a_hand_over_with_a_cancel_pending_ends_canceled_not_queued(session_factory, job_id):
    """SIGTERM after the user canceled, before the worker read the flag: the
    hand-over ends the job canceled (no worker would ever claim it queued)."""
    assert _claim(session_factory, job_id, "w")
    evaluation = add_own_evaluation(session_factory, job_id)
    _cancel(session_factory, job_id)
    result = runner._hand_over(session_factory, job_id, "w")
    assert result == {"job_id": job_id, "status": "canceled"}
    job = _job(session_factory, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("canceled", None, 0)
    assert job.finished_at is not None
    assert log_lines(session_factory, job_id)[-1] == (
        "canceled: worker shutting down, with a cancel pending; "
        "its latest checkpoint is kept: resume the job to continue from it"
    )
    assert _evaluation(session_factory, evaluation)[0] == "canceled"
    assert not _claim(session_factory, job_id, "v")


def test_a_hand_over_after_the_database_came_back_honours_a_pending_cancel(
    settings, session_factory, job_id
):
    assert _claim(session_factory, job_id, "w")
    _cancel(session_factory, job_id)
    lost = OperationalError(
        "UPDATE job", {}, Exception("server closed the connection"), connection_invalidated=True
    )
    result = runner._database_lost(session_factory, job_id, "w", lost, settings)
    assert result == {"job_id": job_id, "status": "canceled"}
    assert _job(session_factory, job_id).status == "canceled"
    assert log_lines(session_factory, job_id)[-1] == (
        "canceled: database connection lost during training (OperationalError), with a "
        "cancel pending; its latest checkpoint is kept: resume the job to continue from it"
    )


def test_a_hand_over_without_a_cancel_queues_the_job_again(session_factory, job_id):
    assert _claim(session_factory, job_id, "w")
    with session_factory() as session:
        assert jobs.release_job(session, job_id, "w") == "queued"
        assert jobs.release_job(session, job_id, "w") is None  # no longer the holder
    job = _job(session_factory, job_id)
    assert (job.status, job.attempts, job.finished_at, job.resends) == ("queued", 0, None, 0)


def test_a_queued_job_with_a_cancel_pending_ends_canceled_at_its_claim(session_factory, job_id):
    """A row left queued with its cancel flag set (as the races above left them
    before): the next delivery of its task ends it canceled instead of skipping it."""
    with session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.commit()
    assert not _claim(session_factory, job_id, "w")
    job = _job(session_factory, job_id)
    assert (job.status, job.lease_owner) == ("canceled", None) and job.finished_at
    assert log_lines(session_factory, job_id)[-1].startswith(
        "canceled: the cancel was asked before the job went back to the queue"
    )


def test_the_sweep_ends_a_queued_job_with_a_cancel_pending(settings, session_factory, job_id):
    """Its task may be lost too: the sweep does not wait for a delivery."""
    from celery import Celery

    from worker.sweep import sweep_once

    with session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        session.commit()
    app = Celery("test-sweep", broker=settings.broker_url, set_as_current=False)
    try:
        with session_factory() as session:
            sweep_once(session, app, settings)
    finally:
        app.close()
    assert _job(session_factory, job_id).status == "canceled"


def test_a_cancel_landing_during_the_sweeps_requeue_is_not_lost(session_factory, job_id):
    """The sweep read the stale job without a cancel; the user cancels before its
    UPDATE: the job is not queued with the flag set, and the next sweep cancels it."""
    start = utcnow()
    assert _claim(session_factory, job_id, "w", now=start)
    evaluation = add_own_evaluation(session_factory, job_id)
    later = start + timedelta(seconds=61)
    with before_first_job_update(session_factory, lambda: _cancel(session_factory, job_id)):
        with session_factory() as session:
            requeued = jobs.requeue_stale_jobs(session, later, 60)
    job = _job(session_factory, job_id)
    assert (job.status, job.cancel_requested) != ("queued", True) and requeued == []
    with session_factory() as session:
        assert jobs.requeue_stale_jobs(session, later, 60) == []
    assert _job(session_factory, job_id).status == "canceled"
    assert _evaluation(session_factory, evaluation) == (
        "canceled",
        "worker lost while canceling: canceled",
    )
