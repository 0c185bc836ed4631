"""The producer's claim statement on both databases (the embedded default runs SQLite)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from shared.db import make_session_factory, unit_of_work
from shared.models import Reminder, Task
from shared.occurrences import open_occurrence
from shared.queue import QUEUE_NAME, make_broker
from shared.redis_broker import pending_message_ids
from tests.conftest import REDIS_URL, create_account, make_settings
from workers.producer import scan_due_tasks

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_claims_queues_and_misses_by_the_catch_up_rule(
    migrated: Engine, redis_namespace: str
) -> None:
    owner = create_account(migrated, "owner")
    sessions = make_session_factory(migrated)
    due_dates = {
        "future": NOW + timedelta(minutes=30),  # remind time passed, due ahead: queued
        "late": NOW - timedelta(minutes=10),  # due 10 min ago: queued, late
        "missed": NOW - timedelta(hours=2),  # past the 1 h catch-up window: missed
        "not yet": NOW + timedelta(hours=5),  # remind time ahead: stays waiting
    }
    ids = {}
    with unit_of_work(sessions) as session:
        for name, due in due_dates.items():
            task = Task(
                id=uuid.uuid4(),
                owner_id=owner.id,
                title=name,
                due_at=due,
                remind_before_seconds=3600,
                status="open",
                created_at=NOW,
                updated_at=NOW,
            )
            session.add(task)
            session.flush()
            open_occurrence(session, task, NOW)
            ids[name] = task.id
    settings = make_settings(
        redis_url=REDIS_URL, redis_namespace=redis_namespace, scan_batch_size=2
    )
    broker = make_broker(settings)

    result = scan_due_tasks(sessions, broker, settings, clock=lambda: NOW)

    with unit_of_work(sessions) as session:
        rows = {row.task_id: row for row in session.scalars(select(Reminder))}
    state = {name: (rows[task_id].state, rows[task_id].late) for name, task_id in ids.items()}
    assert state == {
        "future": ("queued", False),
        "late": ("queued", True),
        "missed": ("missed", True),
        "not yet": ("waiting", False),
    }
    assert (result.enqueued, result.missed) == (2, 1)
    queued = {str(rows[ids[name]].message_id) for name in ("future", "late")}
    assert pending_message_ids(broker, QUEUE_NAME) == queued
    broker.close()
