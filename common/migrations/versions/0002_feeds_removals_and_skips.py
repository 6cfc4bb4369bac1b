"""feeds, removals and skips

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 19:36:37.549727
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SKIP_REASON = sa.Enum(
    "skip-list",
    "no-sdist",
    "covered-upstream",
    "pure-python-upstream",
    "removed-upstream",
    "yanked-upstream",
    name="skip_reason",
    native_enum=False,
    create_constraint=False,
    length=32,
)


def upgrade() -> None:
    op.create_table(
        "feed_action_counts",
        sa.Column("feed", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("feed", "kind", name=op.f("pk_feed_action_counts")),
    )
    op.create_table(
        "skip_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_skip_rules")),
        sa.UniqueConstraint("project", "version", name=op.f("uq_skip_rules_project_version")),
    )
    op.create_index(op.f("ix_skip_rules_project"), "skip_rules", ["project"])
    # Plain ADD COLUMN (no batch copy), so SQLite keeps the partial unique index as it is.
    op.add_column("build_jobs", sa.Column("skip_reason", SKIP_REASON, nullable=True))
    op.add_column("projects", sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("releases", sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "releases",
        sa.Column("refresh_needed", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("releases", sa.Column("skip_reason", SKIP_REASON, nullable=True))
    op.create_index(op.f("ix_releases_refresh_needed"), "releases", ["refresh_needed"])


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch_op:
        batch_op.drop_index(batch_op.f("ix_releases_refresh_needed"))
        batch_op.drop_column("skip_reason")
        batch_op.drop_column("refresh_needed")
        batch_op.drop_column("removed_at")
    with op.batch_alter_table("projects") as batch_op:
        batch_op.drop_column("removed_at")
    with op.batch_alter_table("build_jobs") as batch_op:
        batch_op.drop_column("skip_reason")
    op.drop_index(op.f("ix_skip_rules_project"), table_name="skip_rules")
    op.drop_table("skip_rules")
    op.drop_table("feed_action_counts")
