"""Alembic migrations on SQLite and Postgres: upgrade, downgrade, upgrade again, and
the models in db.models match the head schema exactly (autogenerate sees no diff)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from db.models import Base
from db.session import downgrade_database, engine_for_url, upgrade_database
from tests.conftest import create_postgres_database, drop_postgres_database

TABLES = {"user", "api_token", "job", "job_metric", "checkpoint", "evaluation", "job_log"}


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
