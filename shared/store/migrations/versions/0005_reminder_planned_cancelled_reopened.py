"""When a reminder's remind time was planned, and when it was last cancelled and reopened.

``planned_at`` is backfilled from ``updated_at`` for waiting rows (the last write to a
waiting row is the one that set its remind time) and from ``created_at`` for the others;
``cancelled_at`` from ``updated_at`` for cancelled rows (their last write is the
cancellation). ``reopened_at`` starts empty: earlier reopenings were not recorded.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("planned_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reopened_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE reminders SET planned_at = "
        "CASE WHEN state = 'waiting' THEN updated_at ELSE created_at END"
    )
    op.execute("UPDATE reminders SET cancelled_at = updated_at WHERE state = 'cancelled'")
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.alter_column(
            "planned_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.drop_column("reopened_at")
        batch_op.drop_column("cancelled_at")
        batch_op.drop_column("planned_at")
