"""Users' own webhook endpoints, their delivery attempts, and a task's endpoint.

Existing tasks name no endpoint: their reminders keep going to the deployment's channel.
Operator actions get an index by message, for the ops page's "what became of a retry".

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(500), nullable=True),
        sa.Column("disabled_at", _AT, nullable=True),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_secret_expires_at", _AT, nullable=True),
        sa.Column("failing_since", _AT, nullable=True),
        sa.Column("last_success_at", _AT, nullable=True),
        sa.Column("last_failure_at", _AT, nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_endpoints_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoints")),
    )
    op.create_index(
        "ix_endpoints_owner_id_created_at", "endpoints", ["owner_id", "created_at"], unique=False
    )
    op.create_index(
        "ix_endpoints_failing_since",
        "endpoints",
        ["failing_since"],
        unique=False,
        postgresql_where=sa.text("failing_since IS NOT NULL"),
        sqlite_where=sa.text("failing_since IS NOT NULL"),
    )
    op.create_table(
        "endpoint_attempts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("at", _AT, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("message_id", sa.String(200), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(500), nullable=True),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoints.id"],
            name=op.f("fk_endpoint_attempts_endpoint_id_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoint_attempts")),
    )
    op.create_index(
        "ix_endpoint_attempts_endpoint_id_at",
        "endpoint_attempts",
        ["endpoint_id", "at", "id"],
        unique=False,
    )
    op.create_index("ix_endpoint_attempts_at", "endpoint_attempts", ["at"], unique=False)
    op.create_index(
        "ix_endpoint_attempts_message_id", "endpoint_attempts", ["message_id"], unique=False
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("endpoint_id", sa.Uuid(), nullable=True))
        batch_op.create_foreign_key(
            "fk_tasks_endpoint_id_endpoints",
            "endpoints",
            ["endpoint_id"],
            ["id"],
            ondelete="SET NULL",
        )

    op.create_index(
        "ix_operator_actions_message_id_at",
        "operator_actions",
        ["message_id", "at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_operator_actions_message_id_at", table_name="operator_actions")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_constraint("fk_tasks_endpoint_id_endpoints", type_="foreignkey")
        batch_op.drop_column("endpoint_id")
    op.drop_table("endpoint_attempts")
    op.drop_table("endpoints")
