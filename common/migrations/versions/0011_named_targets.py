"""build_jobs.target and builders.target: several targets per arch, each named

Until now a target was its arch; existing rows get their arch as their target's name,
which is the name the default targets keep.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ACTIVE = sa.text("state IN ('pending', 'queued', 'building')")


def upgrade() -> None:
    for table in ("build_jobs", "builders"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("target", sa.String(length=48), nullable=True))
        op.execute(f"UPDATE {table} SET target = arch")
        with op.batch_alter_table(table) as batch:
            batch.alter_column("target", existing_type=sa.String(length=48), nullable=False)
    with op.batch_alter_table("build_jobs") as batch:
        batch.create_index("ix_build_jobs_state_target", ["state", "target"], unique=False)
        batch.drop_index("uq_build_jobs_active_target")
        batch.create_index(
            "uq_build_jobs_active_target",
            ["release_id", "target", "python_tag"],
            unique=True,
            sqlite_where=ACTIVE,
            postgresql_where=ACTIVE,
        )


def downgrade() -> None:
    # Active jobs of targets not named after their arch could break the old constraint
    # (two active jobs of one arch): they are deleted, and a schema without targets
    # cannot build them anyway. Finished ones stay, as history.
    op.execute(
        "DELETE FROM build_jobs WHERE target <> arch AND state IN ('pending', 'queued', 'building')"
    )
    with op.batch_alter_table("build_jobs") as batch:
        batch.drop_index("ix_build_jobs_state_target")
        batch.drop_index("uq_build_jobs_active_target")
        batch.create_index(
            "uq_build_jobs_active_target",
            ["release_id", "arch", "python_tag"],
            unique=True,
            sqlite_where=ACTIVE,
            postgresql_where=ACTIVE,
        )
    for table in ("build_jobs", "builders"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("target")
