"""build_jobs.build_path and projects.emulate_because: the cross path's record

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("build_jobs", sa.Column("build_path", sa.String(length=24), nullable=True))
    op.add_column("projects", sa.Column("emulate_because", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("emulate_because")
    with op.batch_alter_table("build_jobs") as batch:
        batch.drop_column("build_path")
