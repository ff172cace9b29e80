"""Engines and sessions from settings, and the programmatic ``alembic upgrade head``.

SQLite (the embedded mode) is shared by the API, the worker and its heartbeat
thread, so every connection turns on WAL (readers never block the writer),
foreign keys, and a busy timeout instead of failing at once on a held lock.
Postgres connections are checked before use (``pool_pre_ping``) so a restarted
database costs one retry, not an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
SQLITE_BUSY_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def engine_for_url(url: str) -> Engine:
    """An engine for ``url`` with the per-backend settings above."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def make_engine(settings: Any) -> Engine:
    """The engine of ``settings.database_url``."""
    return engine_for_url(settings.database_url)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine`` (objects expire on commit: reads stay fresh)."""
    return sessionmaker(bind=engine)


def alembic_config(url: str) -> Any:
    """The Alembic config of this repository, pointed at ``url``."""
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Run ``alembic upgrade <revision>`` on ``url`` (the serve command and tests)."""
    from alembic import command

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str = "base") -> None:
    """Run ``alembic downgrade <revision>`` on ``url``."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)
