"""index changes (the index's serial) and pushes to other indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 00:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("filename", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_index_changes_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_changes")),
    )
    op.create_index("ix_index_changes_project_id_id", "index_changes", ["project_id", "id"])
    # Projects already serving wheels get a first serial, so every page has one.
    op.execute(
        "INSERT INTO index_changes (project_id, action, created_at)"
        " SELECT DISTINCT releases.project_id, 'migrated', CURRENT_TIMESTAMP"
        " FROM output_files JOIN releases ON output_files.release_id = releases.id"
        " WHERE output_files.published"
    )
    op.create_table(
        "wheel_pushes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("output_file_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["output_file_id"],
            ["output_files.id"],
            name=op.f("fk_wheel_pushes_output_file_id_output_files"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wheel_pushes")),
        sa.UniqueConstraint(
            "output_file_id", "target", name=op.f("uq_wheel_pushes_output_file_id_target")
        ),
    )
    op.create_index(
        "ix_wheel_pushes_state_next_attempt_at", "wheel_pushes", ["state", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_wheel_pushes_state_next_attempt_at", table_name="wheel_pushes")
    op.drop_table("wheel_pushes")
    op.drop_index("ix_index_changes_project_id_id", table_name="index_changes")
    op.drop_table("index_changes")
