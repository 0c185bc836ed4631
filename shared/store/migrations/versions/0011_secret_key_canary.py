"""The secret key's canary: one value encrypted with REMINDERS_SECRET_KEY, which every
process decrypts at start, so a process with another key stops before it reads (or writes)
an endpoint secret. Written by the first process that starts after this migration.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "secret_key_canary",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_secret_key_canary_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secret_key_canary")),
    )


def downgrade() -> None:
    op.drop_table("secret_key_canary")
