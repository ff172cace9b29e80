"""A job's own evaluation (its evaluate stage: no lease owner of its own, so the
evaluation sweep never looks at it) ends with the job however the job ends, on the
real database: not left ``running`` for good under a failed or canceled job."""

from __future__ import annotations

from datetime import timedelta

from db import jobs
from db.models import Evaluation, Job, utcnow
from tests.worker.conftest import add_own_evaluation


def _claim(session_factory, job_id, worker, now):
    with session_factory() as session:
        return jobs.claim_job(session, job_id, worker, 30, now=now)


def _sweep(session_factory, now) -> list[str]:
    with session_factory() as session:
        return jobs.requeue_stale_jobs(session, now, 60)


def _cancel(session_factory, job_id) -> None:
    with session_factory() as session:
        jobs.request_cancel(session, session.get(Job, job_id))
        session.commit()


def _status(session_factory, job_id) -> str:
    with session_factory() as session:
        return session.get(Job, job_id).status


def _evaluation(session_factory, evaluation_id) -> tuple[str, str | None, bool]:
    with session_factory() as session:
        row = session.get(Evaluation, evaluation_id)
        return row.status, row.error, row.finished_at is not None


def test_the_sweep_ends_the_jobs_own_evaluation_when_it_gives_up(session_factory, job_id):
    start = utcnow()
    assert _claim(session_factory, job_id, "w1", start)
    evaluation = add_own_evaluation(session_factory, job_id)
    assert _sweep(session_factory, start + timedelta(seconds=61)) == [job_id]
    assert _evaluation(session_factory, evaluation)[0] == "running"  # resumes with the job
    later = start + timedelta(seconds=100)
    assert _claim(session_factory, job_id, "w2", later)  # max_attempts is 2: the last
    assert _sweep(session_factory, later + timedelta(seconds=61)) == []
    assert _status(session_factory, job_id) == "failed"
    error = "gave up after 2 attempts: worker lost"
    assert _evaluation(session_factory, evaluation) == ("failed", error, True)


def test_the_sweep_ends_the_jobs_own_evaluation_when_it_cancels(session_factory, job_id):
    start = utcnow()
    assert _claim(session_factory, job_id, "w", start)
    evaluation = add_own_evaluation(session_factory, job_id)
    _cancel(session_factory, job_id)
    assert _sweep(session_factory, start + timedelta(seconds=61)) == []
    assert _status(session_factory, job_id) == "canceled"
    error = "worker lost while canceling: canceled"
    assert _evaluation(session_factory, evaluation) == ("canceled", error, True)


def test_cancel_of_a_job_requeued_during_its_evaluation_ends_the_evaluation(
    session_factory, job_id
):
    start = utcnow()
    assert _claim(session_factory, job_id, "w", start)
    evaluation = add_own_evaluation(session_factory, job_id)
    assert _sweep(session_factory, start + timedelta(seconds=61)) == [job_id]
    _cancel(session_factory, job_id)  # queued: it ends at once
    assert _status(session_factory, job_id) == "canceled"
    assert _evaluation(session_factory, evaluation) == ("canceled", "canceled with its job", True)
