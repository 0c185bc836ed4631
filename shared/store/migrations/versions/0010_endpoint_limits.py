"""Each endpoint's delivery limits: requests in flight at once, and requests per second.

Existing endpoints get the default of 8 in flight and no rate limit. The database refuses a
limit that would stop deliveries for good (no request in flight allowed, a rate of zero or
less); the upper bounds are the API's.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-09
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("max_concurrency", sa.Integer(), server_default=sa.text("8"), nullable=False)
        )
        batch_op.add_column(sa.Column("max_per_second", sa.Float(), nullable=True))
        batch_op.create_check_constraint(
            op.f("ck_endpoints_max_concurrency"), sa.text("max_concurrency >= 1")
        )
        batch_op.create_check_constraint(
            op.f("ck_endpoints_max_per_second"),
            sa.text("max_per_second IS NULL OR max_per_second > 0"),
        )


def downgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_endpoints_max_per_second"), type_="check")
        batch_op.drop_constraint(op.f("ck_endpoints_max_concurrency"), type_="check")
        batch_op.drop_column("max_per_second")
        batch_op.drop_column("max_concurrency")
