"""one whole-project skip rule per project

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

WHOLE_PROJECT = sa.text("version IS NULL")


def upgrade() -> None:
    # Duplicates that concurrent requests may have left: the oldest rule is kept.
    op.execute(
        "DELETE FROM skip_rules WHERE version IS NULL AND id NOT IN"
        " (SELECT min(id) FROM skip_rules WHERE version IS NULL GROUP BY project)"
    )
    op.create_index(
        "uq_skip_rules_whole_project",
        "skip_rules",
        ["project"],
        unique=True,
        sqlite_where=WHOLE_PROJECT,
        postgresql_where=WHOLE_PROJECT,
    )


def downgrade() -> None:
    op.drop_index(
        "uq_skip_rules_whole_project",
        table_name="skip_rules",
        sqlite_where=WHOLE_PROJECT,
        postgresql_where=WHOLE_PROJECT,
    )
