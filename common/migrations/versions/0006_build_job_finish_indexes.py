"""indexes on build_jobs.finished_at for the dashboard

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 01:15:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_build_jobs_finished_at", "build_jobs", ["finished_at"])
    op.create_index("ix_build_jobs_state_finished_at", "build_jobs", ["state", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_build_jobs_state_finished_at", table_name="build_jobs")
    op.drop_index("ix_build_jobs_finished_at", table_name="build_jobs")
