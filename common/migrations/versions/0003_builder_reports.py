"""builder reports: free disk and the job it says it runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("builders", sa.Column("free_disk", sa.BigInteger(), nullable=True))
    op.add_column("builders", sa.Column("reported_job_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("builders") as batch_op:
        batch_op.drop_column("reported_job_id")
        batch_op.drop_column("free_disk")
