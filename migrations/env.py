"""Alembic environment: the URL from ``-x url=``, the config, or the settings.

``render_as_batch`` lets SQLite alter tables (it copies them), so the same
migrations run on SQLite and Postgres. The copy drops the old table: with foreign
keys on (every connection of ``db.session`` turns them on), that drop would delete
every row that refers to it by ``ON DELETE CASCADE`` (a job's logs, metrics,
checkpoints). So on SQLite the migration runs with foreign keys off, as SQLite's
own guide to altering tables says, and checks them all before it commits. On
SQLite a migration is one transaction, DDL included, so a failed check leaves the
schema and its rows as they were.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, Engine, event

from db.models import Base
from db.session import engine_for_url

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    """``-x url=...`` first, then ``sqlalchemy.url``, then DYART_DATABASE_URL/defaults."""
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from db.settings import get_settings

    return get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


class ForeignKeyCheckError(RuntimeError):
    """A migration left rows that refer to rows that do not exist (SQLite)."""


def _sqlite_migration_connection(dbapi_connection: Any, _record: Any) -> None:
    # Runs after db.session's pragmas. The driver's own transaction handling would
    # commit DDL as it goes (it begins only before DML); with it off, the BEGIN below
    # makes a migration all or nothing. foreign_keys must change outside a transaction.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


def _begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


def migration_engine(url: str) -> Engine:
    """The engine of a migration: on SQLite, foreign keys off and transactional DDL."""
    engine = engine_for_url(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_migration_connection)
        event.listen(engine, "begin", _begin)
    return engine


def check_sqlite_foreign_keys(connection: Connection) -> None:
    """Raise (and so roll the migration back) if any row refers to a missing row."""
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if rows:
        shown = ", ".join(f"{row[0]} row {row[1]} -> {row[2]}" for row in rows[:5])
        raise ForeignKeyCheckError(
            f"the migration would leave {len(rows)} row(s) referring to missing rows "
            f"({shown}); it was rolled back"
        )


def run_migrations_online() -> None:
    engine = migration_engine(database_url())
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
                compare_type=True,
                # Alembic would commit after each revision on SQLite: one transaction
                # instead, so the check below can still undo them all.
                transactional_ddl=True if sqlite else None,
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    check_sqlite_foreign_keys(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
