"""The schema as Alembic builds it, on SQLite and on PostgreSQL: times, constraints, drift."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from shared.db import make_session_factory, unit_of_work
from shared.keys import message_id
from shared.models import Base, Reminder, Task
from tests.conftest import create_account

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DUE = datetime(2030, 2, 1, 9, 0, tzinfo=UTC)


def add_task(engine: Engine, **overrides: object) -> uuid.UUID:
    owner = create_account(engine, f"user-{uuid.uuid4().hex[:8]}")
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "owner_id": owner.id,
        "title": "Renew passport",
        "due_at": DUE,
        "remind_before_seconds": 86400,
        "status": "open",
        "created_at": NOW,
        "updated_at": NOW,
        **overrides,
    }
    with unit_of_work(make_session_factory(engine)) as session:
        session.add(Task(**values))
    return values["id"]  # type: ignore[return-value]


def reminder_row(task_id: uuid.UUID, due_at: datetime, **overrides: object) -> Reminder:
    values: dict[str, object] = {
        "message_id": message_id(task_id, due_at),
        "task_id": task_id,
        "due_at": due_at,
        "remind_at": due_at - timedelta(days=1),
        "state": "waiting",
        "attempts": 0,
        "late": False,
        "created_at": NOW,
        "updated_at": NOW,
        **overrides,
    }
    return Reminder(**values)


def test_due_at_given_at_plus_five_comes_back_as_aware_utc(migrated: Engine) -> None:
    plus_five = datetime(2030, 2, 1, 14, 0, tzinfo=timezone(timedelta(hours=5)))
    task_id = add_task(migrated, due_at=plus_five)

    with unit_of_work(make_session_factory(migrated)) as session:
        stored = session.scalars(select(Task.due_at).where(Task.id == task_id)).one()

    assert stored == datetime(2030, 2, 1, 9, 0, tzinfo=UTC)
    assert stored.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused_by_the_column(migrated: Engine) -> None:
    with pytest.raises(StatementError, match="naive"):
        add_task(migrated, due_at=datetime(2030, 2, 1, 9, 0))


def test_second_reminder_for_the_same_occurrence_is_refused_by_the_database(
    migrated: Engine,
) -> None:
    task_id = add_task(migrated)
    sessions = make_session_factory(migrated)
    with unit_of_work(sessions) as session:
        session.add(reminder_row(task_id, DUE))

    with pytest.raises(IntegrityError), unit_of_work(sessions) as session:
        # A different message_id, so only UNIQUE (task_id, due_at) can stop it.
        session.add(reminder_row(task_id, DUE, message_id=uuid.uuid4(), state="queued"))

    with unit_of_work(sessions) as session:
        rows = session.scalars(select(Reminder).where(Reminder.task_id == task_id)).all()
    assert [(row.state, row.due_at) for row in rows] == [("waiting", DUE)]


def test_reminders_for_other_due_dates_of_the_same_task_coexist(migrated: Engine) -> None:
    task_id = add_task(migrated)
    sessions = make_session_factory(migrated)
    with unit_of_work(sessions) as session:
        session.add(reminder_row(task_id, DUE, state="cancelled"))
        session.add(reminder_row(task_id, DUE + timedelta(days=1)))

    with unit_of_work(sessions) as session:
        count = len(session.scalars(select(Reminder).where(Reminder.task_id == task_id)).all())
    assert count == 2


def test_unknown_reminder_state_is_refused_by_the_database(migrated: Engine) -> None:
    task_id = add_task(migrated)

    with pytest.raises(IntegrityError), unit_of_work(make_session_factory(migrated)) as session:
        session.add(reminder_row(task_id, DUE, state="delivered"))


def test_unknown_task_status_is_refused_by_the_database(migrated: Engine) -> None:
    with pytest.raises(IntegrityError):
        add_task(migrated, status="archived")


def test_empty_title_is_refused_by_the_database(migrated: Engine) -> None:
    with pytest.raises(IntegrityError):
        add_task(migrated, title="")


def test_raw_sql_cannot_bypass_the_state_check(migrated: Engine) -> None:
    task_id = add_task(migrated)
    with unit_of_work(make_session_factory(migrated)) as session:
        session.add(reminder_row(task_id, DUE))

    with pytest.raises(IntegrityError), migrated.begin() as connection:
        connection.execute(text("UPDATE reminders SET state = 'bogus'"))


def test_migrations_match_the_models(migrated: Engine) -> None:
    with migrated.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)

    assert differences == []


def test_migration_0005_backfills_planned_and_cancelled_times(any_database_url: str) -> None:
    """Upgrading a database with reminders in it: each row gets when it was planned, and a
    cancelled one when it was cancelled; the partial indexes survive (SQLite rebuilds the
    table)."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import Boolean, Integer, String, Uuid, column, insert, inspect, table

    from shared.db import UTCDateTime, make_engine
    from shared.schema import alembic_config, upgrade

    engine = make_engine(any_database_url)
    before = ScriptDirectory.from_config(alembic_config(engine)).get_revision("0005").down_revision
    assert isinstance(before, str)
    upgrade(engine, before)
    task_id = add_task(engine)
    old_reminders = table(
        "reminders",
        column("message_id", Uuid()),
        column("task_id", Uuid()),
        column("due_at", UTCDateTime()),
        column("remind_at", UTCDateTime()),
        column("state", String()),
        column("attempts", Integer()),
        column("late", Boolean()),
        column("created_at", UTCDateTime()),
        column("updated_at", UTCDateTime()),
    )
    changed = {
        state: NOW + timedelta(hours=n + 1)
        for n, state in enumerate(("waiting", "cancelled", "sent"))
    }
    with engine.begin() as connection:
        for n, (state, updated_at) in enumerate(changed.items()):
            due = DUE + timedelta(days=n)
            connection.execute(
                insert(old_reminders),
                {
                    "message_id": message_id(task_id, due),
                    "task_id": task_id,
                    "due_at": due,
                    "remind_at": due - timedelta(days=1),
                    "state": state,
                    "attempts": 0,
                    "late": False,
                    "created_at": NOW,
                    "updated_at": updated_at,
                },
            )

    upgrade(engine)

    with unit_of_work(make_session_factory(engine)) as session:
        rows = {row.state: row for row in session.scalars(select(Reminder))}
    assert {state: row.planned_at for state, row in rows.items()} == {
        "waiting": changed["waiting"],
        "cancelled": NOW,
        "sent": NOW,
    }
    assert {state: row.cancelled_at for state, row in rows.items()} == {
        "waiting": None,
        "cancelled": changed["cancelled"],
        "sent": None,
    }
    assert {row.reopened_at for row in rows.values()} == {None}
    planned = next(c for c in inspect(engine).get_columns("reminders") if c["name"] == "planned_at")
    assert planned["nullable"] is False
    indexes = {index["name"]: index for index in inspect(engine).get_indexes("reminders")}
    where = "sqlite_where" if engine.dialect.name == "sqlite" else "postgresql_where"
    for name in ("ix_reminders_waiting_remind_at", "ix_reminders_failed_at"):
        assert where in indexes[name]["dialect_options"], name
    engine.dispose()
