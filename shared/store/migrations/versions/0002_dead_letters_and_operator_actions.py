"""Failure and discard fields on reminders; the operator actions audit table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("operator", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_actions")),
    )
    with op.batch_alter_table("operator_actions", schema=None) as batch_op:
        batch_op.create_index("ix_operator_actions_at", ["at"], unique=False)

    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("discarded_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("discarded_by", sa.String(length=100), nullable=True))
        batch_op.create_index(
            "ix_reminders_failed_at",
            ["failed_at", "message_id"],
            unique=False,
            postgresql_where=sa.text("state = 'failed'"),
            sqlite_where=sa.text("state = 'failed'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_reminders_failed_at",
            postgresql_where=sa.text("state = 'failed'"),
            sqlite_where=sa.text("state = 'failed'"),
        )
        batch_op.drop_column("discarded_by")
        batch_op.drop_column("discarded_at")
        batch_op.drop_column("failed_at")

    with op.batch_alter_table("operator_actions", schema=None) as batch_op:
        batch_op.drop_index("ix_operator_actions_at")

    op.drop_table("operator_actions")
