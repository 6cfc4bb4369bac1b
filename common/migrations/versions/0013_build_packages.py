"""build_jobs.build_packages, auto_packages and package_manager; projects.learned_packages:
the system packages a build needed, and those the farm learned for a project's next builds

Nothing was recorded before: every column starts empty (NULL).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("build_jobs") as batch:
        batch.add_column(sa.Column("build_packages", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("auto_packages", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("package_manager", sa.String(length=16), nullable=True))
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("learned_packages", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("learned_packages")
    with op.batch_alter_table("build_jobs") as batch:
        batch.drop_column("package_manager")
        batch.drop_column("auto_packages")
        batch.drop_column("build_packages")
