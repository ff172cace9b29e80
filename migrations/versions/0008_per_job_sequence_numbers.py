"""log lines and metric rows are numbered per job (``seq``): clients follow a job by
these numbers instead of row ids, which count every user's rows

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 20:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("job_log", "job_metric")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        # The rows a job already has keep their order: numbered 1, 2, 3, ... by id.
        op.execute(
            f"UPDATE {table} SET seq = numbered.n FROM ("
            f"SELECT id, row_number() OVER (PARTITION BY job_id ORDER BY id) AS n FROM {table}"
            f") AS numbered WHERE {table}.id = numbered.id"
        )
        with op.batch_alter_table(table) as batch:
            batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
    op.drop_index("ix_job_log_job_id_id", table_name="job_log")
    for table in TABLES:
        op.create_index(f"uq_{table}_job_id_seq", table, ["job_id", "seq"], unique=True)


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"uq_{table}_job_id_seq", table_name=table)
    op.create_index("ix_job_log_job_id_id", "job_log", ["job_id", "id"])
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seq")
