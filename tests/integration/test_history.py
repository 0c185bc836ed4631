"""History retention on both databases: final rows older than the history go, in small
batches; pending and failed rows stay; a purged occurrence is never opened again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from shared.planning.keys import message_id
from shared.store.db import make_session_factory, unit_of_work
from shared.store.housekeeping import purge_history
from shared.store.models import Reminder, Task
from shared.store.occurrences import plan_reminders
from tests.conftest import create_account

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=100)
OFFSET = 600


def add_task(engine: Engine, **fields: object) -> uuid.UUID:
    owner = create_account(engine, f"u{uuid.uuid4().hex[:6]}")
    task_id = uuid.uuid4()
    with unit_of_work(make_session_factory(engine)) as session:
        session.add(
            Task(
                id=task_id,
                owner_id=owner.id,
                title="t",
                due_at=fields.pop("due_at", OLD),
                time_zone="UTC",
                reminder_offsets=[OFFSET],
                status="open",
                created_at=OLD,
                updated_at=OLD,
                **fields,
            )
        )
    return task_id


def add_row(engine: Engine, task_id: uuid.UUID, due_at: datetime, state: str) -> None:
    with unit_of_work(make_session_factory(engine)) as session:
        session.add(
            Reminder(
                message_id=message_id(task_id, due_at, OFFSET),
                task_id=task_id,
                due_at=due_at,
                offset_seconds=OFFSET,
                kind="reminder",
                remind_at=due_at - timedelta(seconds=OFFSET),
                state=state,
                attempts=1,
                late=False,
                planned_at=due_at,
                created_at=due_at,
                updated_at=due_at,
            )
        )


def states(engine: Engine, task_id: uuid.UUID) -> dict[datetime, str]:
    with unit_of_work(make_session_factory(engine)) as session:
        rows = session.scalars(select(Reminder).where(Reminder.task_id == task_id))
        return {row.due_at: row.state for row in rows}


def test_final_rows_past_the_history_go_in_batches_and_the_rest_stay(migrated: Engine) -> None:
    task_id = add_task(migrated, recurrence="FREQ=DAILY")
    kept = {
        OLD + timedelta(days=3): "failed",  # waits for an operator
        OLD + timedelta(days=4): "waiting",  # pending: never purged
        NOW - timedelta(days=10): "sent",  # within the history
    }
    purged = {OLD + timedelta(days=n): state for n, state in enumerate(("sent", "cancelled"))}
    purged[OLD + timedelta(days=2)] = "missed"
    for due_at, state in {**kept, **purged}.items():
        add_row(migrated, task_id, due_at, state)

    count = purge_history(make_session_factory(migrated), NOW, history_days=90, batch=2)

    assert count == 3
    assert states(migrated, task_id) == kept
    with unit_of_work(make_session_factory(migrated)) as session:
        assert session.get_one(Task, task_id).purged_through == OLD + timedelta(days=2)


def test_a_purged_one_off_reminder_is_never_opened_again(migrated: Engine) -> None:
    task_id = add_task(migrated)
    add_row(migrated, task_id, OLD, "sent")
    sessions = make_session_factory(migrated)
    assert purge_history(sessions, NOW, history_days=90) == 1

    with unit_of_work(sessions) as session:
        task = session.get_one(Task, task_id)
        planned = plan_reminders(session, task, NOW, 86400)

    assert planned.opened == []
    assert states(migrated, task_id) == {}


def test_a_series_replanned_after_a_purge_opens_none_of_the_purged_occurrences(
    migrated: Engine,
) -> None:
    """The series' oldest pending row predates the purged ones: re-planning it (an edit)
    expands from there, and must skip what was purged."""
    task_id = add_task(migrated, recurrence="FREQ=DAILY")
    add_row(migrated, task_id, OLD, "waiting")  # stuck pending (kept)
    for n in (1, 2):
        add_row(migrated, task_id, OLD + timedelta(days=n), "sent")
    sessions = make_session_factory(migrated)
    assert purge_history(sessions, NOW, history_days=90) == 2

    with unit_of_work(sessions) as session:
        task = session.get_one(Task, task_id)
        planned = plan_reminders(session, task, NOW, 86400)

    opened = sorted(row.due_at for row in planned.opened)
    assert opened and min(opened) > NOW  # and none between the old pending row and now
    assert OLD + timedelta(days=1) not in states(migrated, task_id)
