"""The tables (SQLAlchemy 2, typed). Alembic migrations are the only schema source
of truth in a database; ``tests/test_migrations.py`` checks these match head.

Ids of things people see (users, jobs, checkpoints, evaluations) are random
32-hex-digit strings; append-only rows (metrics, log lines, tokens) count up,
which lets the event stream resume "after row N". Every time is UTC.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
FINAL_STATUSES = ("succeeded", "failed", "canceled")
PENDING_STATUSES = ("queued", "running")  # a job or an evaluation not ended yet
STAGES = ("burn_in", "train", "evaluate")
CHECKPOINT_KINDS = ("latest", "best", "final", "burn_in")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC, hands back aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return as_utc(value)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime(), dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "user"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token: only its sha256 is stored, and a short prefix to name it."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # None: until revoked


class Job(Base):
    """One training request and its life (DESIGN.md §4); the lease makes it single-run."""

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_owner_id_created_at", "owner_id", "created_at"),
        Index("ix_job_status_created_at", "status", "created_at"),
        Index("uq_job_owner_id_idempotency_key", "owner_id", "idempotency_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(50), index=True)
    dataset: Mapped[str] = mapped_column(String(50), index=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    stage: Mapped[str | None] = mapped_column(String(20))
    epoch: Mapped[int | None]
    step: Mapped[int | None]
    total_epochs: Mapped[int] = mapped_column(default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    # times the sweep sent its task again since it was last queued (the wait doubles)
    resends: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    burn_in_source_job_id: Mapped[str | None] = mapped_column(
        ForeignKey("job.id", ondelete="SET NULL")
    )
    versions: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # the client's Idempotency-Key of POST /jobs: a retried submission finds this job
    idempotency_key: Mapped[str | None] = mapped_column(String(200))


MAX_SEQ = 2**31 - 1  # the largest ``seq`` (an INTEGER column: 32 bits in Postgres)


class JobMetric(Base):
    """One epoch's aggregated row; a re-run epoch replaces its row (unique key).

    ``seq`` numbers the job's metric writes 1, 2, 3, ...: a re-run epoch's row takes the
    next number, so a client following the job past ``seq`` is sent the new values.
    Clients see ``seq``, never ``id``, which counts every user's rows.
    """

    __tablename__ = "job_metric"
    __table_args__ = (
        UniqueConstraint("job_id", "stage", "epoch"),
        Index("uq_job_metric_job_id_seq", "job_id", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    seq: Mapped[int]
    stage: Mapped[str] = mapped_column(String(20))
    epoch: Mapped[int]
    lr: Mapped[float | None] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_clean_acc: Mapped[float | None] = mapped_column(Float)
    train_robust_acc: Mapped[float | None] = mapped_column(Float)
    val_clean_acc: Mapped[float | None] = mapped_column(Float)
    val_pgd_acc: Mapped[float | None] = mapped_column(Float)
    margin_q10: Mapped[float | None] = mapped_column(Float)
    margin_q50: Mapped[float | None] = mapped_column(Float)
    margin_q90: Mapped[float | None] = mapped_column(Float)
    frac_correct: Mapped[float | None] = mapped_column(Float)
    frac_found: Mapped[float | None] = mapped_column(Float)
    frac_kept: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


METRIC_COLUMNS = (
    "lr",
    "train_loss",
    "train_clean_acc",
    "train_robust_acc",
    "val_clean_acc",
    "val_pgd_acc",
    "margin_q10",
    "margin_q50",
    "margin_q90",
    "frac_correct",
    "frac_found",
    "frac_kept",
    "seconds",
)


class Checkpoint(Base):
    """A complete checkpoint file; ``path`` is relative to the artifacts folder.

    One row per (job, kind): a newer ``latest`` or ``best`` replaces the file and
    updates its row.
    """

    __tablename__ = "checkpoint"
    __table_args__ = (UniqueConstraint("job_id", "kind"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    stage: Mapped[str | None] = mapped_column(String(20))
    epoch: Mapped[int | None]
    path: Mapped[str] = mapped_column(String(500))
    card_path: Mapped[str | None] = mapped_column(String(500))
    robustbench_path: Mapped[str | None] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """An AutoAttack evaluation of a checkpoint (the job's own, or one asked later)."""

    __tablename__ = "evaluation"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("checkpoint.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(20), default="queued")
    preset: Mapped[str] = mapped_column(String(20))
    n: Mapped[int]
    norm: Mapped[str] = mapped_column(String(10), default="linf")
    eps: Mapped[list[float]] = mapped_column(JSON, default=list)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # what the model drew before the attacks (dyart.evaluate.check_model): signs that its
    # numbers may read higher than its robustness, shown beside them
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    leaderboard_grade: Mapped[bool] = mapped_column(Boolean, default=False)
    # the weights evaluated, pinned when it was asked for: a job's best and final
    # checkpoints are replaced while it trains, and a result names what it measured
    checkpoint_kind: Mapped[str | None] = mapped_column(String(20))
    checkpoint_epoch: Mapped[int | None]
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]  # when its task last went to the broker
    resends: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobLog(Base):
    """One log line of a job: ``seq`` is its number in the job's log (1, 2, 3, ...).

    Clients see ``seq``, never ``id``: ids count every user's lines, so the gaps
    between one job's ids would tell its owner how busy everyone else is.
    """

    __tablename__ = "job_log"
    __table_args__ = (Index("uq_job_log_job_id_seq", "job_id", "seq", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"))
    seq: Mapped[int]
    ts: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(10), default="INFO")
    message: Mapped[str] = mapped_column(Text)


class WorkerPresence(Base):
    """A worker process's sign of life, written by its sweep every ``beat_seconds``.

    The API counts the workers it can send jobs to (``GET /health``); the row is
    removed when the worker shuts down, and an old one is pruned by the next beat.
    """

    __tablename__ = "worker_presence"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    queue: Mapped[str] = mapped_column(String(100), index=True)
    device: Mapped[str] = mapped_column(String(50))
    beat_seconds: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
