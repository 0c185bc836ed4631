"""The schema as Alembic builds it, on SQLite and on PostgreSQL: times, constraints, drift."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from shared.planning.keys import legacy_message_id, message_id
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import Base, Reminder, Task
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
        "reminder_offsets": [86400],
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
        "message_id": message_id(task_id, due_at, 86400),
        "task_id": task_id,
        "due_at": due_at,
        "offset_seconds": 86400,
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
        # A different message_id, so only UNIQUE (task_id, due_at, offset_seconds) can stop it.
        session.add(reminder_row(task_id, DUE, message_id=uuid.uuid4(), state="queued"))

    with unit_of_work(sessions) as session:
        rows = session.scalars(select(Reminder).where(Reminder.task_id == task_id)).all()
    assert [(row.state, row.due_at) for row in rows] == [("waiting", DUE)]


def test_another_offset_and_a_snooze_of_the_same_occurrence_coexist(migrated: Engine) -> None:
    task_id = add_task(migrated)
    sessions = make_session_factory(migrated)
    with unit_of_work(sessions) as session:
        session.add(reminder_row(task_id, DUE))
        session.add(
            reminder_row(
                task_id, DUE, message_id=message_id(task_id, DUE, 3600), offset_seconds=3600
            )
        )
        for minutes in (10, 20):  # snoozes have no offset: NULLs never collide
            session.add(
                reminder_row(
                    task_id,
                    DUE,
                    message_id=uuid.uuid4(),
                    offset_seconds=None,
                    kind="snooze",
                    remind_at=DUE + timedelta(minutes=minutes),
                )
            )

    with unit_of_work(sessions) as session:
        count = len(session.scalars(select(Reminder).where(Reminder.task_id == task_id)).all())
    assert count == 4


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


def _upgrade_to_before(engine: Engine, revision: str) -> None:
    from alembic.script import ScriptDirectory

    from shared.store.schema import alembic_config, upgrade

    before = ScriptDirectory.from_config(alembic_config(engine)).get_revision(revision)
    assert isinstance(before.down_revision, str)
    upgrade(engine, before.down_revision)


def _old_task(engine: Engine, remind_before_seconds: int = 86400) -> uuid.UUID:
    """A task as revisions 0001 to 0005 stored it (one lead time, no time zone)."""
    from sqlalchemy import Integer, String, Uuid, column, insert, table

    from shared.store.db import UTCDateTime

    owner = create_account(engine, f"user-{uuid.uuid4().hex[:8]}")
    old_tasks = table(
        "tasks",
        *(column(name, Uuid()) for name in ("id", "owner_id")),
        *(column(name, String()) for name in ("title", "status")),
        column("remind_before_seconds", Integer()),
        *(column(name, UTCDateTime()) for name in ("due_at", "created_at", "updated_at")),
    )
    task_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            insert(old_tasks),
            {
                "id": task_id,
                "owner_id": owner.id,
                "title": "Renew passport",
                "status": "open",
                "remind_before_seconds": remind_before_seconds,
                "due_at": DUE,
                "created_at": NOW,
                "updated_at": NOW,
            },
        )
    return task_id


def _old_reminder(
    engine: Engine, task_id: uuid.UUID, *, planned: bool = False, **values: object
) -> None:
    """A reminder row as revision 0004 stored it (``planned``: 0005, with ``planned_at``)."""
    from sqlalchemy import Boolean, Integer, String, Uuid, column, insert, table

    from shared.store.db import UTCDateTime

    old_reminders = table(
        "reminders",
        column("message_id", Uuid()),
        column("task_id", Uuid()),
        column("state", String()),
        column("attempts", Integer()),
        column("late", Boolean()),
        *(
            column(name, UTCDateTime())
            for name in ("due_at", "remind_at", "created_at", "updated_at", "planned_at")
        ),
    )
    due = values.get("due_at", DUE)
    assert isinstance(due, datetime)
    row = {
        "message_id": legacy_message_id(task_id, due),
        "task_id": task_id,
        "due_at": due,
        "remind_at": due - timedelta(days=1),
        "state": "waiting",
        "attempts": 0,
        "late": False,
        "created_at": NOW,
        "updated_at": NOW,
        **({"planned_at": NOW} if planned else {}),
        **values,
    }
    with engine.begin() as connection:
        connection.execute(insert(old_reminders), row)


def test_migration_0005_backfills_planned_and_cancelled_times(any_database_url: str) -> None:
    """Upgrading a database with reminders in it: each row gets when it was planned, and a
    cancelled one when it was cancelled; the partial indexes survive (SQLite rebuilds the
    table)."""
    from sqlalchemy import inspect

    from shared.store.db import make_engine
    from shared.store.schema import upgrade

    engine = make_engine(any_database_url)
    _upgrade_to_before(engine, "0005")
    task_id = _old_task(engine)
    changed = {
        state: NOW + timedelta(hours=n + 1)
        for n, state in enumerate(("waiting", "cancelled", "sent"))
    }
    for n, (state, updated_at) in enumerate(changed.items()):
        _old_reminder(
            engine, task_id, due_at=DUE + timedelta(days=n), state=state, updated_at=updated_at
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


def test_migration_0006_keeps_existing_tasks_rows_and_message_ids(any_database_url: str) -> None:
    """Upgrading a database with one-reminder tasks in it: each task gets its lead time as
    its one offset and the UTC zone, each row its offset (due_at - remind_at) and kind, and
    keeps its message ID; the task then re-plans without touching the rows that still match,
    and a second offset is a second row for the same occurrence."""
    from shared.store.db import make_engine
    from shared.store.occurrences import plan_reminders
    from shared.store.schema import upgrade

    engine = make_engine(any_database_url)
    _upgrade_to_before(engine, "0006")
    task_id = _old_task(engine, remind_before_seconds=7200)
    _old_reminder(
        engine, task_id, planned=True, remind_at=DUE - timedelta(seconds=7200), state="sent"
    )
    _old_reminder(engine, task_id, planned=True, due_at=DUE + timedelta(days=1), state="cancelled")

    upgrade(engine)

    sessions = make_session_factory(engine)
    with unit_of_work(sessions) as session:
        task = session.get_one(Task, task_id)
        assert (task.reminder_offsets, task.time_zone, task.recurrence) == ([7200], "UTC", None)
        rows = {row.due_at: row for row in session.scalars(select(Reminder))}
        assert {due: (row.offset_seconds, row.kind) for due, row in rows.items()} == {
            DUE: (7200, "reminder"),
            DUE + timedelta(days=1): (86400, "reminder"),
        }
        assert {row.message_id for row in rows.values()} == {
            legacy_message_id(task_id, DUE),
            legacy_message_id(task_id, DUE + timedelta(days=1)),
        }
        planned = plan_reminders(session, task, NOW, 86400)
        assert (planned.opened, planned.cancelled) == ([], 0)  # the sent row still matches
        task.reminder_offsets = [7200, 600]
        planned = plan_reminders(session, task, NOW, 86400)
        assert [(row.offset_seconds, row.message_id) for row in planned.opened] == [
            (600, message_id(task_id, DUE, 600))
        ]
    engine.dispose()


def test_migration_0010_gives_existing_endpoints_the_default_limits_and_goes_back(
    any_database_url: str,
) -> None:
    """Upgrading a database with an endpoint in it: the endpoint gets 8 requests in flight and
    no rate limit, keeps its attempt log, and the database refuses limits that would stop its
    deliveries for good. Going back to 0009 drops the two columns and keeps the endpoint and
    its attempts (SQLite rebuilds the table the attempts point at); upgrading again restores
    the defaults."""
    from sqlalchemy import Boolean, String, Uuid, column, insert, inspect, table

    from shared.store.db import UTCDateTime, make_engine
    from shared.store.models import EndpointAttempt
    from shared.store.schema import downgrade, upgrade

    engine = make_engine(any_database_url)
    _upgrade_to_before(engine, "0010")
    owner = create_account(engine, "alice")
    endpoint_id, attempt_id = uuid.uuid4(), uuid.uuid4()
    old_endpoints = table(  # as revision 0009 stored an endpoint
        "endpoints",
        *(column(name, Uuid()) for name in ("id", "owner_id")),
        *(column(name, String()) for name in ("url", "secret")),
        column("enabled", Boolean()),
        *(column(name, UTCDateTime()) for name in ("created_at", "updated_at")),
    )
    with engine.begin() as connection:
        connection.execute(
            insert(old_endpoints),
            {
                "id": endpoint_id,
                "owner_id": owner.id,
                "url": "https://hooks.example/r",
                "secret": "encrypted",
                "enabled": True,
                "created_at": NOW,
                "updated_at": NOW,
            },
        )
        connection.execute(
            insert(EndpointAttempt.__table__),
            {
                "id": attempt_id,
                "endpoint_id": endpoint_id,
                "at": NOW,
                "kind": "ping",
                "message_id": "ping_1",
                "ok": True,
                "duration_ms": 12,
            },
        )

    def limits() -> tuple[object, object]:
        with engine.connect() as connection:
            row = connection.execute(
                select(column("max_concurrency"), column("max_per_second"))
                .select_from(table("endpoints"))
                .where(column("id", Uuid()) == endpoint_id)
            ).one()
        return tuple(row)

    def attempts() -> list[uuid.UUID]:
        with engine.connect() as connection:
            return list(connection.scalars(select(EndpointAttempt.id)))

    upgrade(engine)
    assert limits() == (8, None)
    assert attempts() == [attempt_id]
    for change in ("max_concurrency = 0", "max_per_second = 0", "max_per_second = -1"):
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(text(f"UPDATE endpoints SET {change}"))
    with engine.begin() as connection:
        connection.execute(text("UPDATE endpoints SET max_concurrency = 2, max_per_second = 0.5"))
    assert limits() == (2, 0.5)

    downgrade(engine, "0009")
    columns = {column["name"] for column in inspect(engine).get_columns("endpoints")}
    assert {"max_concurrency", "max_per_second"}.isdisjoint(columns)
    assert "url" in columns
    assert attempts() == [attempt_id]
    indexes = {index["name"]: index for index in inspect(engine).get_indexes("endpoints")}
    where = "sqlite_where" if engine.dialect.name == "sqlite" else "postgresql_where"
    assert where in indexes["ix_endpoints_failing_since"]["dialect_options"]

    upgrade(engine)
    assert limits() == (8, None)
    assert attempts() == [attempt_id]
    engine.dispose()
