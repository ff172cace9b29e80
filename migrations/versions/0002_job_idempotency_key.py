"""jobs remember the client's Idempotency-Key (a retried POST /jobs finds its job);
evaluations remember when their task was sent (the sweep sends a lost one again)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 13:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
    op.create_index(
        "uq_job_owner_id_idempotency_key", "job", ["owner_id", "idempotency_key"], unique=True
    )
    with op.batch_alter_table("evaluation") as batch:
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluation") as batch:
        batch.drop_column("sent_at")
    op.drop_index("uq_job_owner_id_idempotency_key", table_name="job")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("idempotency_key")
