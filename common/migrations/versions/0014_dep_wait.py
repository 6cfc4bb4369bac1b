"""dep-wait: build_jobs.waiting_for, and dep-wait jobs count as active

A job waiting for a build dependency is still the one job of its release, target and
interpreter: the unique index over active jobs takes in the new state.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BEFORE = sa.text("state IN ('pending', 'queued', 'building')")
AFTER = sa.text("state IN ('pending', 'queued', 'building', 'dep-wait')")


def _active_index(where: sa.TextClause) -> None:
    with op.batch_alter_table("build_jobs") as batch:
        batch.drop_index("uq_build_jobs_active_target")
        batch.create_index(
            "uq_build_jobs_active_target",
            ["release_id", "target", "python_tag"],
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )


def upgrade() -> None:
    with op.batch_alter_table("build_jobs") as batch:
        batch.add_column(sa.Column("waiting_for", sa.String(length=200), nullable=True))
    _active_index(AFTER)


def downgrade() -> None:
    # A schema without dep-wait has no state to keep them in: they wait as pending jobs
    # (a builder meets the same missing dependency and reports it as a failure).
    op.execute("UPDATE build_jobs SET state = 'pending' WHERE state = 'dep-wait'")
    _active_index(BEFORE)
    with op.batch_alter_table("build_jobs") as batch:
        batch.drop_column("waiting_for")
