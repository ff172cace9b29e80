"""Alembic environment: the URL from ``-x url=``, the config, or the settings.

``render_as_batch`` lets SQLite alter tables (it copies them), so the same
migrations run on SQLite and Postgres.
"""

from __future__ import annotations

from alembic import context

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


def run_migrations_online() -> None:
    engine = engine_for_url(database_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
