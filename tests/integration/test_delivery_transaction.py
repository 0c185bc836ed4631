"""The delivery transaction on both databases: sent once, duplicates and stale messages do nothing.

The pipeline tests prove this on PostgreSQL under concurrency; this proves the same
statement works on SQLite, which the embedded default runs.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import OperationalError

from shared.planning.keys import message_id
from shared.store.db import make_engine, make_session_factory, unit_of_work
from shared.store.models import Reminder, Task
from shared.store.occurrences import plan_reminders
from shared.store.schema import upgrade
from tests.conftest import create_account
from workers.channels import PermanentDeliveryError, ReminderPayload
from workers.delivery import Named, Outcome, deliver_occurrence

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Recorder:
    name = "recorder"
    announces_delivery = False
    sends_body = True

    def __init__(self, fail: bool = False) -> None:
        self.delivered: list[ReminderPayload] = []
        self.fail = fail

    def deliver(self, reminder: ReminderPayload) -> None:
        self.delivered.append(reminder)
        if self.fail:
            raise PermanentDeliveryError("receiver said no")


def add_task(engine: Engine, owner_name: str | None = None, **changes: object) -> Task:
    owner = create_account(engine, owner_name or f"u{uuid.uuid4().hex[:6]}")
    sessions = make_session_factory(engine)
    task = Task(
        id=uuid.uuid4(),
        owner_id=owner.id,
        title="water plants",
        due_at=NOW + timedelta(minutes=30),
        reminder_offsets=[3600],
        status="open",
        created_at=NOW,
        updated_at=NOW,
    )
    with unit_of_work(sessions) as session:
        session.add(task)
        session.flush()
        plan_reminders(session, task, NOW, 86400)
        for name, value in changes.items():
            setattr(task, name, value)
    return task


def named(task: Task) -> Named:
    """What the message of the task's one reminder names."""
    return Named(task.id, task.due_at, message_id(task.id, task.due_at, 3600))


def state(engine: Engine, task: Task) -> tuple[str, int]:
    with unit_of_work(make_session_factory(engine)) as session:
        row = session.scalars(select(Reminder).where(Reminder.task_id == task.id)).one()
        return row.state, row.attempts


def test_delivers_once_then_suppresses_duplicates(migrated: Engine) -> None:
    others = [add_task(migrated) for _ in range(3)]  # other owners' occurrences beside it
    task = add_task(migrated, owner_name="maria")
    channel = Recorder()

    first = deliver_occurrence(migrated, channel, named(task), clock=lambda: NOW)
    second = deliver_occurrence(migrated, channel, named(task), clock=lambda: NOW)

    assert (first.outcome, second.outcome) == (Outcome.SENT, Outcome.DUPLICATE)
    [sent] = channel.delivered
    assert sent.task_id == str(task.id)
    assert json.loads(sent.body) == {
        "type": "reminder",
        "message_id": sent.message_id,
        "task_id": str(task.id),
        "owner": "maria",
        "title": "water plants",
        "due_at": "2030-01-01T12:30:00Z",
        "local_due_at": "2030-01-01T12:30:00+00:00",
        "remind_at": "2030-01-01T11:30:00Z",
        "offset_seconds": 3600,
    }
    assert all(state(migrated, other) == ("waiting", 0) for other in others)
    assert state(migrated, task) == ("sent", 1)
    assert first.sent_at == NOW and first.remind_at == NOW - timedelta(minutes=30)


def test_a_failed_delivery_records_nothing(migrated: Engine) -> None:
    task = add_task(migrated)

    with pytest.raises(PermanentDeliveryError):
        deliver_occurrence(migrated, Recorder(fail=True), named(task), clock=lambda: NOW)

    assert state(migrated, task) == ("waiting", 0)


def test_the_next_attempt_sends_the_failed_attempts_bytes(migrated: Engine) -> None:
    task = add_task(migrated)
    failing, accepting = Recorder(fail=True), Recorder()

    with pytest.raises(PermanentDeliveryError):
        deliver_occurrence(migrated, failing, named(task), clock=lambda: NOW)
    with unit_of_work(make_session_factory(migrated)) as session:
        session.execute(update(Task).where(Task.id == task.id).values(title="renamed"))
    later = NOW + timedelta(minutes=5)
    delivery = deliver_occurrence(migrated, accepting, named(task), clock=lambda: later)

    assert delivery.outcome is Outcome.SENT
    [first], [second] = failing.delivered, accepting.delivered
    assert second.body == first.body
    assert json.loads(second.body)["title"] == "water plants"
    assert (first.sent_at, second.sent_at) == (NOW, later)


@pytest.mark.parametrize("change", [{"status": "done"}, {"deleted_at": NOW}])
def test_a_stale_message_delivers_nothing_and_cancels_the_row(
    migrated: Engine, change: dict
) -> None:
    task = add_task(migrated, **change)
    channel = Recorder()

    delivery = deliver_occurrence(migrated, channel, named(task))

    assert (delivery.outcome, delivery.state) == (Outcome.STALE, "cancelled")
    assert channel.delivered == []
    assert state(migrated, task)[0] == "cancelled"
    with unit_of_work(make_session_factory(migrated)) as session:
        row = session.scalars(select(Reminder).where(Reminder.task_id == task.id)).one()
        assert row.cancelled_at is not None  # the history says when


def test_an_occurrence_before_its_remind_time_is_early_and_delivers_nothing(
    migrated: Engine,
) -> None:
    task = add_task(migrated)  # remind time: NOW - 30 minutes
    channel = Recorder()
    before = NOW - timedelta(minutes=30, seconds=1)

    delivery = deliver_occurrence(migrated, channel, named(task), clock=lambda: before)

    assert (delivery.outcome, delivery.remind_at) == (Outcome.EARLY, NOW - timedelta(minutes=30))
    assert channel.delivered == []
    assert state(migrated, task) == ("waiting", 0)
    on_time = deliver_occurrence(migrated, channel, named(task), clock=lambda: NOW)
    assert on_time.outcome is Outcome.SENT


def test_a_message_for_an_unknown_occurrence_is_stale(migrated: Engine) -> None:
    delivery = deliver_occurrence(migrated, Recorder(), Named(uuid.uuid4(), NOW, uuid.uuid4()))

    assert delivery.outcome is Outcome.STALE


@pytest.mark.postgres
def test_a_connection_lost_between_deliveries_fails_one_attempt_and_is_replaced(
    pg_url: str,
) -> None:
    # As the workers' engine: no pre-ping, so the dead connection is found by the delivery.
    engine = make_engine(pg_url, pool_pre_ping=False, pool_size=0)
    killer = make_engine(pg_url)
    try:
        upgrade(engine)
        first, second = add_task(engine), add_task(engine)
        channel = Recorder()
        deliver_occurrence(engine, channel, named(first), clock=lambda: NOW)
        with engine.connect() as pooled:  # the pool's one connection, which delivered
            backend = pooled.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with killer.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend)})")

        with pytest.raises(OperationalError) as lost:
            deliver_occurrence(engine, channel, named(second), clock=lambda: NOW)
        assert lost.value.connection_invalidated
        assert state(engine, second) == ("waiting", 0)

        retried = deliver_occurrence(engine, channel, named(second), clock=lambda: NOW)
        assert retried.outcome is Outcome.SENT
        assert [r.task_id for r in channel.delivered] == [str(first.id), str(second.id)]
    finally:
        engine.dispose()
        killer.dispose()
