"""Recurring tasks in their own time zone, several reminders per occurrence, snoozes.

Tasks gain ``time_zone`` (``UTC`` for existing ones), ``recurrence``, ``local_start``,
``reminder_offsets``
(an existing task's ``[remind_before_seconds]``, which it replaces) and the producer's
bookkeeping of a series (``series_filled_until``, ``refill_at``, ``series_cursor``,
``completed_through``, ``purged_through``). Reminder rows gain ``offset_seconds`` (an existing row's
``due_at - remind_at``, so it keeps matching its task's offset) and ``kind``; the
one-row-per-occurrence constraint becomes one row per (occurrence, offset). Existing rows
keep their message IDs.

Downgrading fails on a database holding several reminders for one occurrence (the old
constraint cannot hold them); a recurring task comes back as a one-off at its start.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _seconds_between(later: str, earlier: str) -> str:
    if op.get_bind().dialect.name == "sqlite":
        return f"CAST(ROUND((julianday({later}) - julianday({earlier})) * 86400) AS INTEGER)"
    return f"CAST(EXTRACT(EPOCH FROM ({later} - {earlier})) AS INTEGER)"


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC")
        )
        batch_op.add_column(sa.Column("recurrence", sa.String(500), nullable=True))
        batch_op.add_column(sa.Column("local_start", sa.String(19), nullable=True))
        batch_op.add_column(sa.Column("reminder_offsets", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("series_filled_until", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("refill_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("series_cursor", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("completed_through", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("purged_through", sa.DateTime(timezone=True), nullable=True))
    array = "json_array" if sqlite else "json_build_array"
    op.execute(f"UPDATE tasks SET reminder_offsets = {array}(remind_before_seconds)")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("reminder_offsets", existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column("remind_before_seconds")
        batch_op.create_index(
            "ix_tasks_refill_at",
            ["refill_at"],
            unique=False,
            postgresql_where=sa.text("refill_at IS NOT NULL"),
            sqlite_where=sa.text("refill_at IS NOT NULL"),
        )

    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("offset_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("kind", sa.String(8), nullable=False, server_default="reminder")
        )
    op.execute(f"UPDATE reminders SET offset_seconds = {_seconds_between('due_at', 'remind_at')}")
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.drop_constraint("uq_reminders_task_id_due_at", type_="unique")
        batch_op.create_unique_constraint(
            "uq_reminders_task_id_due_at_offset_seconds", ["task_id", "due_at", "offset_seconds"]
        )
        batch_op.create_check_constraint("kind", "kind IN ('reminder', 'snooze')")
        final = sa.text("state IN ('sent', 'cancelled', 'missed')")
        batch_op.create_index(
            "ix_reminders_final_updated_at",
            ["updated_at"],
            unique=False,
            postgresql_where=final,
            sqlite_where=final,
        )


def downgrade() -> None:
    with op.batch_alter_table("reminders", schema=None) as batch_op:
        batch_op.drop_index("ix_reminders_final_updated_at")
        batch_op.drop_constraint("ck_reminders_kind", type_="check")
        batch_op.drop_constraint("uq_reminders_task_id_due_at_offset_seconds", type_="unique")
        batch_op.create_unique_constraint("uq_reminders_task_id_due_at", ["task_id", "due_at"])
        batch_op.drop_column("kind")
        batch_op.drop_column("offset_seconds")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("remind_before_seconds", sa.Integer(), nullable=True))
    sqlite = op.get_bind().dialect.name == "sqlite"
    first = (
        "json_extract(reminder_offsets, '$[0]')"
        if sqlite
        else "CAST(reminder_offsets->>0 AS INTEGER)"
    )
    op.execute(f"UPDATE tasks SET remind_before_seconds = {first}")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("remind_before_seconds", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_index("ix_tasks_refill_at")
        batch_op.drop_column("purged_through")
        batch_op.drop_column("completed_through")
        batch_op.drop_column("series_cursor")
        batch_op.drop_column("refill_at")
        batch_op.drop_column("series_filled_until")
        batch_op.drop_column("reminder_offsets")
        batch_op.drop_column("local_start")
        batch_op.drop_column("recurrence")
        batch_op.drop_column("time_zone")
