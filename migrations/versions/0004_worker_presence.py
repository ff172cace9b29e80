"""workers write a row of presence on every sweep, so the API can say whether any
worker is there to run a queued job

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 03:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_presence",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("device", sa.String(length=50), nullable=False),
        sa.Column("beat_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_presence")),
    )
    op.create_index(op.f("ix_worker_presence_queue"), "worker_presence", ["queue"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_worker_presence_queue"), table_name="worker_presence")
    op.drop_table("worker_presence")
