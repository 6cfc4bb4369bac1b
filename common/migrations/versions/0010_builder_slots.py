"""builders.slot: one row per build slot of a builder host, unique per token and slot

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("builders") as batch:
        batch.add_column(sa.Column("slot", sa.Integer(), server_default="0", nullable=False))
        batch.alter_column(
            "name",
            existing_type=sa.String(length=100),
            type_=sa.String(length=120),
            existing_nullable=False,
        )
        batch.drop_constraint("uq_builders_token_id", type_="unique")
        batch.create_unique_constraint("uq_builders_token_id_slot", ["token_id", "slot"])


def downgrade() -> None:
    # A token's slots past the first go with the column; the jobs they built are kept,
    # credited to the token's first slot (the host's builder as it was before slots).
    op.execute(
        "UPDATE build_jobs SET builder_id = (SELECT first.id FROM builders AS first"
        " JOIN builders AS slot ON slot.token_id = first.token_id AND first.slot = 0"
        " WHERE slot.id = build_jobs.builder_id)"
        " WHERE builder_id IN (SELECT id FROM builders WHERE slot <> 0)"
    )
    op.execute("DELETE FROM builders WHERE slot <> 0")
    with op.batch_alter_table("builders") as batch:
        batch.drop_constraint("uq_builders_token_id_slot", type_="unique")
        batch.create_unique_constraint("uq_builders_token_id", ["token_id"])
        batch.alter_column(
            "name",
            existing_type=sa.String(length=120),
            type_=sa.String(length=100),
            existing_nullable=False,
        )
        batch.drop_column("slot")
