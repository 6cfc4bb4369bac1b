"""output_files.index_name and system_packages: wheels of distribution targets, served
only by their own index, with the Debian packages they link

Every wheel so far is a manylinux wheel of /simple/: index_name "", no packages.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 21:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("output_files") as batch:
        batch.add_column(
            sa.Column("index_name", sa.String(length=48), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("system_packages", sa.JSON(), nullable=True))
    op.execute("UPDATE output_files SET system_packages = '[]'")
    with op.batch_alter_table("output_files") as batch:
        batch.alter_column("system_packages", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    # A schema without distribution indexes would serve their wheels under /simple/:
    # they are unpublished first (their files and rows stay, for fsck and history).
    op.execute("UPDATE output_files SET published = false WHERE index_name <> ''")
    with op.batch_alter_table("output_files") as batch:
        batch.drop_column("system_packages")
        batch.drop_column("index_name")
