"""The write that ends a job or an evaluation, made while the database is away for a
moment: the worker waits for it and writes again, so a finished job is not left
running for the sweep (which would count an attempt, and on the last one fail it).

The outage is real. SQLite: the database's folder is moved away, so no connection
opens (the runner's factory here opens one per session, as after a restart).
Postgres: the test's database refuses connections and every open one is cut.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from db import evaluations, jobs
from db.models import Evaluation, Job, JobLog, utcnow
from db.session import make_session_factory
from tests.conftest import BACKEND
from tests.worker.conftest import TINY_JOB, log_lines, resolved
from worker import runner


@pytest.fixture
def job_id(session_factory, make_user):
    owner, _ = make_user("owner")
    with session_factory() as session:
        job = jobs.create_job(session, owner, resolved(TINY_JOB), name="t", max_attempts=1)
        session.commit()
        return job.id


@pytest.fixture
def outage(settings, session_factory) -> Iterator[tuple[sessionmaker[Session], Callable]]:
    """(a session factory for the runner, ``begin()``); ``begin()`` cuts the database
    off and returns the function that brings it back."""
    url = settings.database_url
    if BACKEND == "postgres":
        yield session_factory, lambda: _postgres_outage(url)
        return
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})
    yield make_session_factory(engine), lambda: _sqlite_outage(url)
    engine.dispose()


def _sqlite_outage(url: str) -> Callable[[], None]:
    folder = Path(make_url(url).database).parent
    away = folder.with_name(folder.name + "-away")
    folder.rename(away)
    return lambda: away.rename(folder)


def _postgres_outage(url: str) -> Callable[[], None]:
    import psycopg

    name = make_url(url).database
    admin = psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True)
    admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )

    def back() -> None:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.close()

    return back


@contextmanager
def database_away_for(begin: Callable, seconds: float) -> Iterator[None]:
    """The database is cut off on entry and comes back ``seconds`` later (at the
    latest on exit)."""
    back, lock, restored = begin(), threading.Lock(), []

    def restore() -> None:
        with lock:
            if not restored:
                restored.append(True)
                back()

    timer = threading.Timer(seconds, restore)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
        restore()


def _running_evaluation(session_factory, job_id) -> str:
    """A small evaluation of the job, claimed by worker "w"; its id."""
    with session_factory() as session:
        row = Evaluation(job_id=job_id, preset="fast", n=10, eps=[0.1])
        session.add(row)
        session.commit()
        assert evaluations.claim_evaluation(session, row.id, "w", 30, 3, now=utcnow())
        return row.id


def _claim(session_factory, job_id, worker):
    with session_factory() as session:
        assert jobs.claim_job(session, job_id, worker, 30)


def test_a_finished_job_is_written_succeeded_through_a_short_outage(
    settings, session_factory, job_id, outage, caplog
):
    factory, begin = outage
    _claim(session_factory, job_id, "w")
    with caplog.at_level(logging.INFO, logger="worker"):
        with database_away_for(begin, 1.5):
            result = runner._end(
                factory, job_id, "w", "succeeded", "succeeded", lease=settings.lease_seconds
            )
    assert result == {"job_id": job_id, "status": "succeeded"}
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.lease_owner, job.attempts) == ("succeeded", None, 1)
        lines = list(session.scalars(select(JobLog.message).where(JobLog.job_id == job_id)))
    assert lines[-1] == "succeeded"
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith(f"job {job_id}: ending succeeded: database unreachable (") for m in messages
    ), messages
    assert f"job {job_id}: ending succeeded: database answers again; writing it now" in messages


def test_an_evaluation_result_is_written_through_a_short_outage(
    settings, session_factory, job_id, outage
):
    factory, begin = outage
    evaluation_id = _running_evaluation(session_factory, job_id)
    values = {"status": "succeeded", "results": [{"eps": 0.1, "robust_acc": 0.5}]}
    with database_away_for(begin, 1.5):
        spec = {"job_id": job_id, "name": "evaluation e"}
        result = runner._end_evaluation(
            factory, evaluation_id, "w", values, settings.lease_seconds, spec
        )
    assert result == {"evaluation_id": evaluation_id, "status": "succeeded"}
    with session_factory() as session:
        row = session.get(Evaluation, evaluation_id)
        assert (row.status, row.results, row.lease_owner) == ("succeeded", values["results"], None)
    assert "evaluation e: succeeded: eps 0.1: clean -, robust 0.500" in log_lines(
        session_factory, job_id
    )


def test_an_outage_longer_than_the_lease_leaves_the_job_to_the_sweep(
    session_factory, job_id, outage, caplog
):
    factory, begin = outage
    _claim(session_factory, job_id, "w")
    with caplog.at_level(logging.WARNING, logger="worker"):
        with database_away_for(begin, 3.0):
            result = runner._end(factory, job_id, "w", "succeeded", "succeeded", lease=1.0)
    assert result == {"job_id": job_id, "status": "database_unreachable"}
    with session_factory() as session:
        assert session.get(Job, job_id).status == "running"  # the sweep's now
    assert (
        f"job {job_id}: ending succeeded: database still unreachable; "
        "the sweep takes over once it is back"
    ) in caplog.text


def test_a_warm_shutdown_hands_a_job_over_through_a_short_outage(
    settings, session_factory, job_id, outage
):
    """SIGTERM while the database is away for a moment: the hand-over waits for it and
    ends the job as it would have (here canceled: its cancel was asked, so no task is
    sent), instead of leaving it running for the sweep."""
    factory, begin = outage
    _claim(session_factory, job_id, "w")
    with session_factory() as session:
        jobs.request_cancel(session, session.get(Job, job_id))
        session.commit()
    with database_away_for(begin, 1.5):
        result = runner._hand_over(factory, job_id, "w", wait=settings.lease_seconds)
    assert result == {"job_id": job_id, "status": "canceled"}
    with session_factory() as session:
        job = session.get(Job, job_id)
        assert (job.status, job.lease_owner, job.attempts) == ("canceled", None, 0)
    assert log_lines(session_factory, job_id)[-1].startswith(
        "canceled: worker shutting down, with a cancel pending"
    )


def test_a_hand_over_past_its_wait_leaves_the_job_to_the_sweep(session_factory, job_id, outage):
    factory, begin = outage
    _claim(session_factory, job_id, "w")
    with database_away_for(begin, 3.0):
        result = runner._hand_over(factory, job_id, "w", wait=1.0)
    assert result == {"job_id": job_id, "status": "database_unreachable"}
    with session_factory() as session:
        assert session.get(Job, job_id).status == "running"  # the sweep's now


def test_an_evaluation_is_handed_over_through_a_short_outage(
    settings, session_factory, job_id, outage
):
    factory, begin = outage
    evaluation_id = _running_evaluation(session_factory, job_id)
    with session_factory() as session:
        assert evaluations.request_cancel(session, evaluation_id) == "requested"
        session.commit()
    spec = {"job_id": job_id, "name": "evaluation e"}
    with database_away_for(begin, 1.5):
        result = runner._hand_over_evaluation(
            factory, evaluation_id, "w", spec, wait=settings.lease_seconds
        )
    assert result == {"evaluation_id": evaluation_id, "status": "canceled"}
    with session_factory() as session:
        assert session.get(Evaluation, evaluation_id).status == "canceled"
    assert "evaluation e: canceled: canceled while running" in log_lines(session_factory, job_id)
