"""A cancel racing a claim or the stale sweep, on the real database: a job whose
cancel was asked ends canceled, and is never canceled under a worker that trains it.

The races are made to happen, not hoped for: a hook on the engine runs the other
party's statements (another session, committed) just before the first
``UPDATE job`` of the session under test reaches the database.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event

from db import jobs
from db.models import Job, utcnow
from tests.worker.conftest import TINY_JOB, resolved


@pytest.fixture
def job_id(session_factory, make_user):
    owner, _ = make_user("owner")
    with session_factory() as session:
        job = jobs.create_job(session, owner, resolved(TINY_JOB), name="t", max_attempts=2)
        session.commit()
        return job.id


def _claim(session_factory, job_id, worker, now=None):
    with session_factory() as session:
        return jobs.claim_job(session, job_id, worker, 30, now=now)


def _job(session_factory, job_id) -> Job:
    with session_factory(expire_on_commit=False) as session:
        return session.get(Job, job_id)


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
