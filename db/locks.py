"""Row locks that hold on every backend the service runs on."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from db.models import Job, User


def hold_row(session: Session, model: type[Job] | type[User], row_id: str) -> None:
    """Lock the row ``row_id`` of ``model`` until the session's commit.

    A no-op UPDATE of a column that is not a key: on Postgres it takes the row's
    lock without blocking the inserts of rows that refer to it (their key-share
    locks), and on SQLite it takes the database's write lock, where ``SELECT ...
    FOR UPDATE`` locks nothing. Two requests that check, then write, under it are
    counted one after the other.
    """
    session.execute(update(model).where(model.id == row_id).values(name=model.name))
