"""an evaluation records the checkpoint kind, epoch and sha256 it evaluates (a job's
best and final files are replaced while it trains), and can be canceled

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 04:05:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("evaluation") as batch:
        batch.add_column(sa.Column("checkpoint_kind", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("checkpoint_epoch", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("checkpoint_sha256", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("evaluation") as batch:
        for column in ("cancel_requested", "checkpoint_sha256", "checkpoint_epoch",
                       "checkpoint_kind"):  # fmt: skip
            batch.drop_column(column)
