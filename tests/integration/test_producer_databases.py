"""The producer's claim statement on both databases (the embedded default runs SQLite)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from shared.broker.queue import QUEUE_NAME, make_broker
from shared.broker.redis_broker import pending_message_ids
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import Reminder, Task
from shared.store.occurrences import plan_reminders
from tests.conftest import REDIS_URL, create_account, make_settings
from workers.producer import ScanResult, scan_due_tasks

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def add_tasks(
    engine: Engine, planned_at: datetime, tasks: dict[str, tuple[datetime, int]]
) -> dict[str, uuid.UUID]:
    """Tasks by name, (due date, lead time in seconds), created at ``planned_at``."""
    owner = create_account(engine, f"owner-{uuid.uuid4().hex[:8]}")
    ids = {}
    with unit_of_work(make_session_factory(engine)) as session:
        for name, (due, remind_before) in tasks.items():
            task = Task(
                id=uuid.uuid4(),
                owner_id=owner.id,
                title=name,
                due_at=due,
                reminder_offsets=[remind_before],
                status="open",
                created_at=planned_at,
                updated_at=planned_at,
            )
            session.add(task)
            session.flush()
            plan_reminders(session, task, planned_at, 86400)
            ids[name] = task.id
    return ids


def scan_at(
    engine: Engine, redis_namespace: str, now: datetime, ids: dict[str, uuid.UUID]
) -> tuple[ScanResult, dict[str, tuple[str, bool]], set[str]]:
    """One scan at ``now``: its result, (state, late) by task name, and the messages enqueued."""
    sessions = make_session_factory(engine)
    settings = make_settings(
        redis_url=REDIS_URL, redis_namespace=redis_namespace, scan_batch_size=2
    )
    broker = make_broker(settings)
    try:
        result = scan_due_tasks(sessions, broker, settings, clock=lambda: now)
        enqueued = pending_message_ids(broker, QUEUE_NAME)
    finally:
        broker.close()
    with unit_of_work(sessions) as session:
        rows = {row.task_id: row for row in session.scalars(select(Reminder))}
    state = {name: (rows[task_id].state, rows[task_id].late) for name, task_id in ids.items()}
    queued = {str(rows[ids[name]].message_id) for name, (s, _) in state.items() if s == "queued"}
    assert enqueued == queued
    return result, state, enqueued


def test_claims_queues_and_misses_by_the_catch_up_rule(
    migrated: Engine, redis_namespace: str
) -> None:
    # Planned a day ago, then the system was down until NOW.
    ids = add_tasks(
        migrated,
        NOW - timedelta(days=1),
        {
            "future": (NOW + timedelta(minutes=30), 3600),  # remind time passed, due ahead
            "late": (NOW - timedelta(minutes=10), 3600),  # due 10 min ago: queued, late
            "missed": (NOW - timedelta(hours=2), 3600),  # past the 1 h catch-up window
            "not yet": (NOW + timedelta(hours=5), 3600),  # remind time ahead: stays waiting
        },
    )

    result, state, _ = scan_at(migrated, redis_namespace, NOW, ids)

    assert state == {
        "future": ("queued", False),
        "late": ("queued", True),
        "missed": ("missed", True),
        "not yet": ("waiting", False),
    }
    assert (result.enqueued, result.missed) == (2, 1)


def test_reminders_whose_remind_time_passed_before_creation_are_sent_at_once(
    migrated: Engine, redis_namespace: str
) -> None:
    """Created at NOW with remind times long past: the next scan sends them, none missed."""
    ids = add_tasks(
        migrated,
        NOW,
        {
            "two days ahead, a week's lead": (NOW + timedelta(days=2), 7 * 86400),
            "due ten minutes ago": (NOW - timedelta(minutes=10), 3600),
            "due three hours ago": (NOW - timedelta(hours=3), 3600),
            "due last month": (NOW - timedelta(days=30), 60),
        },
    )

    result, state, _ = scan_at(migrated, redis_namespace, NOW + timedelta(minutes=1), ids)

    assert set(state.values()) == {("queued", False)}
    assert (result.enqueued, result.missed) == (4, 0)


def test_catch_up_window_of_a_task_created_past_due_runs_from_its_creation(
    migrated: Engine, redis_namespace: str
) -> None:
    """Missed only when the system stayed down past the window after the task was created."""
    ids = add_tasks(migrated, NOW, {"due three hours ago": (NOW - timedelta(hours=3), 3600)})

    result, state, _ = scan_at(migrated, redis_namespace, NOW + timedelta(hours=1, seconds=1), ids)

    assert state == {"due three hours ago": ("missed", False)}
    assert result.missed == 1
