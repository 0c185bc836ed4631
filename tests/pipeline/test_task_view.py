"""What the API shows of a task is what happens to its reminders: the ``late`` flag from the
actual send, the reminder block of the occurrences the task has, a top-level ``remind_at``
that is a real reminder, and a listing sorted and filtered by when each task is next due.

Real PostgreSQL and Redis, the task service, the producer and the delivery transaction, all
at an injected clock (`Clocked`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from api.schemas import TaskQuery
from shared.store.models import Reminder
from tests.pipeline.conftest import Stack
from tests.pipeline.test_recurring import Clocked

T0 = datetime(2030, 6, 5, 12, 0, tzinfo=UTC)  # a Wednesday


def shown(clocked: Clocked, task_id: uuid.UUID):  # type: ignore[no-untyped-def]
    task = clocked.tasks.get(clocked.owner, task_id)
    assert task is not None
    return task


def test_a_reminder_sent_after_its_due_date_is_late_and_one_sent_before_is_not(
    stack: Stack,
) -> None:
    """Claimed on time, but sent after the due date (a backlog, retries): ``late`` is set by
    the send itself, in the row and in the task's reminder block."""
    clocked = Clocked(stack, T0)
    due = T0 + timedelta(minutes=10)
    behind = clocked.create(due_at=due.isoformat(), reminders=[60])
    on_time = clocked.create(due_at=due.isoformat(), reminders=[120])

    # The scan just before the remind times claims both (they are within the lookahead) ...
    clocked.step(due - timedelta(seconds=150))
    states = {row.task_id: row.state for row in stack.reminders()}
    assert states == {behind: "queued", on_time: "queued"}
    # ... one is delivered at its remind time, the other only 20 s after its due date.
    assert len(clocked.step(due - timedelta(seconds=120))) == 1
    assert len(clocked.step(due + timedelta(seconds=20))) == 1

    rows = {row.task_id: row for row in stack.reminders()}
    assert (rows[behind].state, rows[behind].late) == ("sent", True)
    assert (rows[on_time].state, rows[on_time].late) == ("sent", False)
    assert shown(clocked, behind).reminder.late is True
    assert shown(clocked, on_time).reminder.late is False


def test_the_reminder_block_never_shows_an_occurrence_the_task_moved_away_from(
    stack: Stack,
) -> None:
    """Due in 2031, then moved to soon and sent: the block is the sent reminder of the new due
    date, not the cancelled one of 2031 (whose remind time is later)."""
    clocked = Clocked(stack, T0)
    task = clocked.create(due_at="2031-01-10T09:00:00+00:00", reminders=[60])
    soon = T0 + timedelta(minutes=30)
    clocked.update(task, due_at=soon.isoformat())
    assert shown(clocked, task).reminder.due_at == soon  # pending: the next one

    assert len(clocked.step(soon - timedelta(seconds=60))) == 1
    block = shown(clocked, task).reminder
    assert (block.state, block.due_at) == ("sent", soon)

    # Done: the block is the current occurrence's reminder (sent), still not 2031's.
    clocked.update(task, status="done")
    block = shown(clocked, task).reminder
    assert (block.state, block.due_at) == ("sent", soon)


def test_a_recurring_tasks_remind_at_is_the_first_reminder_of_its_next_occurrence(
    stack: Stack,
) -> None:
    """Due on a Friday, repeating on Mondays and Tuesdays: the Friday is not an occurrence,
    so the top-level ``remind_at`` is the Monday's reminder (a day before), never Thursday."""
    clocked = Clocked(stack, T0)
    friday = datetime(2030, 6, 7, 9, 0, tzinfo=UTC)
    task_id = clocked.create(
        due_at=friday.isoformat(), recurrence="FREQ=WEEKLY;BYDAY=MO,TU", reminders=[86400, 3600]
    )
    task = shown(clocked, task_id)
    monday = datetime(2030, 6, 10, 9, 0, tzinfo=UTC)
    assert task.next_occurrence is not None
    assert task.next_occurrence.due_at == monday
    assert task.remind_at == monday - timedelta(days=1)
    # The reminder it names is there once the horizon reaches it.
    clocked.step(monday - timedelta(days=1, hours=1))
    with stack.sessions() as session:
        remind_times = set(
            session.scalars(select(Reminder.remind_at).where(Reminder.task_id == task_id))
        )
    assert task.remind_at in remind_times

    # A series that ended shows its last occurrence's first reminder.
    ended = clocked.create(
        due_at=(T0 - timedelta(days=3)).isoformat(), recurrence="FREQ=DAILY;COUNT=2"
    )
    assert shown(clocked, ended).remind_at == T0 - timedelta(days=3)  # (T0 - 2 days) - 1 day


def test_the_listing_sorts_and_filters_recurring_tasks_by_their_next_occurrence(
    stack: Stack,
) -> None:
    clocked = Clocked(stack, T0)
    daily = clocked.create(
        due_at=(T0 - timedelta(days=10) + timedelta(hours=2)).isoformat(),
        recurrence="FREQ=DAILY",
    )
    first = clocked.create(due_at=(T0 + timedelta(hours=1)).isoformat())
    third = clocked.create(due_at=(T0 + timedelta(hours=3)).isoformat())
    # Weekly, next due in five days: further than the rows reach (a day's horizon).
    weekly = clocked.create(due_at=(T0 - timedelta(days=16)).isoformat(), recurrence="FREQ=WEEKLY")

    def listed(**query: object) -> list[uuid.UUID]:
        page = clocked.tasks.list(clocked.owner, TaskQuery.model_validate(query))
        return [task.id for task in page.items]

    assert listed() == [first, daily, third, weekly]
    assert listed(due_after=T0.isoformat()) == [first, daily, third, weekly]
    assert listed(due_before=(T0 + timedelta(minutes=150)).isoformat()) == [first, daily]
    assert listed(due_after=(T0 + timedelta(days=4)).isoformat()) == [weekly]

    # Page by page, the same order.
    seen: list[uuid.UUID] = []
    cursor = None
    for _ in range(6):
        page = clocked.tasks.list(
            clocked.owner,
            TaskQuery.model_validate({"limit": 1, **({"cursor": cursor} if cursor else {})}),
        )
        seen += [task.id for task in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [first, daily, third, weekly]

    # Once today's occurrence has passed, the daily task is next due tomorrow.
    clocked.step(T0 + timedelta(hours=4))
    assert listed() == [first, third, daily, weekly]


def test_a_task_made_recurring_then_done_then_open_again_sends_its_next_reminder(
    stack: Stack,
) -> None:
    """The sequence a user found losing a reminder: a one-off task two days out (past the
    horizon's rows), made daily, done, then open again. Its reminder is reopened at once and
    sent at its remind time, once."""
    clocked = Clocked(stack, T0)
    due = T0 + timedelta(days=2)
    task = clocked.create(due_at=due.isoformat(), reminders=[60])
    clocked.update(task, recurrence="FREQ=DAILY")
    clocked.update(task, status="done")
    clocked.update(task, status="open")

    block = shown(clocked, task).reminder
    assert (block.state, block.due_at) == ("waiting", due)
    sent: list[dict[str, object]] = []
    for hours in range(0, 49, 6):  # scans through the two days, the horizon extended on the way
        sent += clocked.step(T0 + timedelta(hours=hours))
    sent += clocked.step(due - timedelta(seconds=60))
    assert [(body["task_id"], body["due_at"]) for body in sent] == [
        (str(task), due.isoformat().replace("+00:00", "Z"))
    ]
