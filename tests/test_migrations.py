"""Alembic migrations on SQLite and Postgres: upgrade, downgrade, upgrade again, and
the models in db.models match the head schema exactly (autogenerate sees no diff)."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, text

from db.models import Base
from db.session import downgrade_database, engine_for_url, upgrade_database
from tests.conftest import create_postgres_database, drop_postgres_database

TABLES = {
    "user",
    "api_token",
    "job",
    "job_metric",
    "checkpoint",
    "evaluation",
    "job_log",
    "worker_presence",
}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/migrations.db"
        return
    url = create_postgres_database("dyart_migrations")
    yield url
    drop_postgres_database(url)


def _tables(url: str) -> set[str]:
    engine = engine_for_url(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _diff(url: str) -> list:
    engine = engine_for_url(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "render_as_batch": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database):
    upgrade_database(empty_database)
    assert _tables(empty_database) == TABLES
    downgrade_database(empty_database, "base")
    assert _tables(empty_database) == set()
    upgrade_database(empty_database)
    assert _tables(empty_database) == TABLES


def test_models_match_head(empty_database):
    upgrade_database(empty_database)
    assert _diff(empty_database) == []


CHILD_TABLES = ("job_log", "job_metric", "checkpoint", "evaluation")


def _add_job_with_children(url: str) -> None:
    from db.models import Checkpoint, Evaluation, Job, JobLog, JobMetric, User
    from db.session import make_session_factory

    engine = engine_for_url(url)
    try:
        with make_session_factory(engine)() as session:
            user = User(name="ann")
            session.add(user)
            session.flush()
            job = Job(owner_id=user.id, method="dyart", dataset="digits", config={})
            session.add(job)
            session.flush()
            session.add_all(
                [
                    JobLog(job_id=job.id, seq=1, message="hello"),
                    JobMetric(job_id=job.id, seq=1, stage="train", epoch=1, train_loss=0.5),
                    Checkpoint(job_id=job.id, kind="latest", path="x/latest.pt", size=1, sha256=""),
                    Evaluation(job_id=job.id, preset="fast", n=10, eps=[0.1]),
                ]
            )
            session.commit()
    finally:
        engine.dispose()


def _row_counts(url: str) -> dict[str, int]:
    engine = engine_for_url(url)
    try:
        with engine.connect() as conn:
            return {
                t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one()
                for t in ("job", *CHILD_TABLES)
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("previous", ["0007", "0006", "0005", "0004", "0003", "0002", "0001"])
def test_downgrade_and_upgrade_keep_a_jobs_rows(empty_database, previous):
    # SQLite alters `job` by copying it to a new table and dropping the old one; with
    # foreign keys on, that drop cascades to every log line, metric and checkpoint.
    upgrade_database(empty_database)
    _add_job_with_children(empty_database)
    before = _row_counts(empty_database)
    assert before == dict.fromkeys(before, 1)

    downgrade_database(empty_database, previous)
    assert _row_counts(empty_database) == before
    upgrade_database(empty_database)
    assert _row_counts(empty_database) == before
    assert _diff(empty_database) == []


def test_a_migration_leaving_a_broken_reference_is_rolled_back_on_sqlite(tmp_path):
    # With foreign keys off during a migration, SQLite's foreign_key_check is what
    # notices a dangling row; the whole migration (DDL included) then rolls back.
    url = f"sqlite:///{tmp_path}/orphan.db"
    upgrade_database(url)
    with closing(sqlite3.connect(tmp_path / "orphan.db")) as conn, conn:
        conn.execute(
            "INSERT INTO job_log (job_id, seq, ts, level, message) VALUES ('x', 1, 0, 'I', '')"
        )

    with pytest.raises(Exception, match=r"1 row\(s\) referring to missing rows \(job_log row 1"):
        downgrade_database(url, "0001")

    engine = engine_for_url(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0008"
    finally:
        engine.dispose()
    assert _diff(url) == []


def test_upgrade_numbers_each_jobs_existing_rows_from_one_in_their_order(empty_database):
    """Rows written before per-job numbers get them: 1, 2, 3, ... within each job, in
    the order they were written, however the jobs' rows were interleaved."""
    from db.models import Job, User

    upgrade_database(empty_database, "0007")
    engine = engine_for_url(empty_database)
    try:
        with engine.begin() as conn:  # the job and user tables are the same at 0007
            conn.execute(insert(User).values(id="u", name="ann"))
            conn.execute(insert(Job), [{"id": job, "owner_id": "u", "method": "dyart",
                                        "dataset": "digits"} for job in "ab"])  # fmt: skip
            for n, job in enumerate("abbab"):
                conn.execute(
                    text("INSERT INTO job_log (job_id, ts, level, message) "
                         "VALUES (:job, CURRENT_TIMESTAMP, 'INFO', :message)"),
                    {"job": job, "message": f"{job}{n}"},
                )  # fmt: skip
            for epoch, job in enumerate("baa", start=1):
                conn.execute(
                    text("INSERT INTO job_metric (job_id, stage, epoch, created_at) "
                         "VALUES (:job, 'train', :epoch, CURRENT_TIMESTAMP)"),
                    {"job": job, "epoch": epoch},
                )  # fmt: skip
    finally:
        engine.dispose()

    upgrade_database(empty_database)
    engine = engine_for_url(empty_database)
    try:
        with engine.connect() as conn:
            logs = conn.execute(text("SELECT job_id, seq, message FROM job_log ORDER BY id"))
            metrics = conn.execute(text("SELECT job_id, seq, epoch FROM job_metric ORDER BY id"))
            assert [tuple(r) for r in logs] == [
                ("a", 1, "a0"), ("b", 1, "b1"), ("b", 2, "b2"), ("a", 2, "a3"), ("b", 3, "b4"),
            ]  # fmt: skip
            assert [tuple(r) for r in metrics] == [("b", 1, 1), ("a", 1, 2), ("a", 2, 3)]
    finally:
        engine.dispose()
    assert _diff(empty_database) == []
