"""A recurring task's first occurrence past its reminder rows (``next_unplanned_at``).

The task listing sorts and filters a recurring task by its next occurrence: a row still to
come when there is one, else this. Existing tasks get it at their next planning (an edit,
or the producer extending the series); until then they sort by their rows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("next_unplanned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("next_unplanned_at")
