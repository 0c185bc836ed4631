"""Fair bursts (SPEC §4.9): one owner's thousands of reminders due at one moment do not queue
another owner's reminder due then behind them all.

Real time: the second test waits for its reminders' remind time (about 5 s) and for 1,510
deliveries through the log channel.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import OWNER, decode_message
from shared.store.db import unit_of_work, utcnow
from shared.store.models import Reminder, Task
from shared.store.occurrences import plan_reminders
from tests.conftest import Account
from tests.pipeline.conftest import HORIZON_SECONDS, Stack
from workers.producer import scan_due_tasks


def test_the_producer_interleaves_reminders_due_now_by_owner(stack: Stack) -> None:
    """Alice's 300 due reminders were planned first; each of five other owners' single
    reminder is still among the first six messages on the queue, the order workers take."""
    alice = stack.account("alice")
    stack.add_due_tasks(alice, 300)
    others = [stack.account(f"other{index}") for index in range(5)]
    for other in others:
        stack.add_due_tasks(other, 1)
    broker, _ = stack.broker()

    result = scan_due_tasks(stack.sessions, broker, stack.settings(lookahead_seconds=0))

    assert result.enqueued == 305
    client, namespace = broker.client, stack.namespace
    ids = client.lrange(f"{namespace}:{QUEUE_NAME}", 0, -1)
    stored = client.hmget(f"{namespace}:{QUEUE_NAME}.msgs", ids)
    owners = [decode_message(blob).options[OWNER] for blob in stored]
    assert len(owners) == 305
    assert set(owners[:6]) == {str(account.id) for account in [alice, *others]}
    assert owners[6:] == [str(alice.id)] * 299


def add_tasks(stack: Stack, owner: Account, count: int, remind_at: datetime) -> list[uuid.UUID]:
    """``count`` tasks of ``owner`` whose one reminder is at ``remind_at``, in one transaction."""
    now = utcnow()
    tasks = [
        Task(
            id=uuid.uuid4(),
            owner_id=owner.id,
            title="burst",
            due_at=remind_at + timedelta(hours=1),
            reminder_offsets=[3600],
            status="open",
            created_at=now,
            updated_at=now,
        )
        for _ in range(count)
    ]
    with unit_of_work(stack.sessions) as session:
        session.add_all(tasks)
        session.flush()
        for task in tasks:
            plan_reminders(session, task, now, HORIZON_SECONDS)
    return [task.id for task in tasks]


def test_delayed_reminders_due_together_are_handed_over_in_turns_by_owner(stack: Stack) -> None:
    """1,500 reminders of Alice, planned first, and one each of ten other owners, all with
    one remind time and held as delayed messages until then: the others' go out among the
    first sent, not after Alice's."""
    planned_at = (datetime.now(UTC) + timedelta(minutes=30)).replace(microsecond=0)
    add_tasks(stack, stack.account("alice"), 1500, planned_at)
    theirs = [
        task_id
        for index in range(10)
        for task_id in add_tasks(stack, stack.account(f"other{index}"), 1, planned_at)
    ]
    # Planning 1,510 tasks can take longer than a few seconds on a loaded machine: the
    # remind time is brought near only now, so every message is still delayed when enqueued.
    remind_at = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    with unit_of_work(stack.sessions) as session:
        session.execute(update(Reminder).values(remind_at=remind_at))
    broker, _ = stack.broker()
    result = scan_due_tasks(stack.sessions, broker, stack.settings(lookahead_seconds=120))
    assert result.enqueued == 1510
    assert broker.client.llen(f"{stack.namespace}:{QUEUE_NAME}.DQ") == 1510  # all delayed

    with stack.run_workers(broker, threads=8):
        assert stack.wait_for(lambda: stack.states() == {"sent": 1510}, 120)

    with unit_of_work(stack.sessions) as session:
        order = list(session.scalars(select(Reminder.task_id).order_by(Reminder.sent_at)))
        assert min(session.scalars(select(Reminder.sent_at))) >= remind_at  # none early
    ranks = sorted(order.index(task_id) for task_id in theirs)
    # In turns: the ten among the first few dozen sent (the workers' threads take them
    # concurrently), not around the 1,500th.
    assert ranks[-1] < 60, ranks
