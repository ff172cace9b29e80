"""Which workers are there: each worker's sweep writes a row of presence every pass.

A job can be queued for ever without anyone noticing that no worker is running
(none was started, each died at start, or they all listen on another queue).
Every worker process keeps one :class:`~db.models.WorkerPresence` row, written
by its sweep thread every ``beat_seconds`` whether it is training or not, and
removed when it shuts down. A worker counts as present while its row is younger
than :data:`MISSED_BEATS` of its own beats, so the API needs no knowledge of
the workers' settings. Rows a killed worker left are pruned by any worker's
next beat once they are :data:`PRUNE_AFTER` old.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import WorkerPresence, as_utc, utcnow

MISSED_BEATS = 3
PRUNE_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    """This worker process, as the presence table names it."""

    queue: str
    device: str
    beat_seconds: float
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:  # a restarted process with the same pid is another worker
            object.__setattr__(self, "id", f"{self.hostname}:{self.pid}:{uuid.uuid4().hex[:8]}")


def beat(session: Session, me: Identity, now: datetime | None = None) -> None:
    """Say this worker is here (insert or refresh its row), prune rows long dead; commits."""
    now = now or utcnow()
    row = session.get(WorkerPresence, me.id)
    if row is None:
        session.add(
            WorkerPresence(
                id=me.id, hostname=me.hostname[:200], pid=me.pid, queue=me.queue,
                device=me.device[:50], beat_seconds=me.beat_seconds,
                started_at=now, last_seen_at=now,
            )
        )  # fmt: skip
    else:
        row.last_seen_at = now
    session.execute(delete(WorkerPresence).where(WorkerPresence.last_seen_at < now - PRUNE_AFTER))
    session.commit()


def leave(session: Session, me: Identity) -> None:
    """Remove this worker's row (it is shutting down); commits."""
    session.execute(delete(WorkerPresence).where(WorkerPresence.id == me.id))
    session.commit()


def is_present(row: WorkerPresence, now: datetime) -> bool:
    seen = as_utc(row.last_seen_at)
    return seen is not None and (now - seen).total_seconds() <= MISSED_BEATS * row.beat_seconds


def present(
    session: Session, queue: str | None = None, now: datetime | None = None
) -> list[WorkerPresence]:
    """The workers seen within their last few beats (on ``queue``), oldest first."""
    now = now or utcnow()
    query = select(WorkerPresence).order_by(WorkerPresence.started_at)
    if queue is not None:
        query = query.where(WorkerPresence.queue == queue)
    return [row for row in session.scalars(query) if is_present(row, now)]


def every(session: Session) -> list[WorkerPresence]:
    """Every row, present or not (for the admin's list), oldest first."""
    return list(session.scalars(select(WorkerPresence).order_by(WorkerPresence.started_at)))
