"""build_jobs.rejected_by: the check that refused a job's wheel

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("build_jobs", sa.Column("rejected_by", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("build_jobs") as batch:
        batch.drop_column("rejected_by")
