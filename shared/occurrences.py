"""Keeping a task's reminder rows in step with the task, inside the caller's transaction.

Every change of a task that affects its reminder goes through here: creating a task opens
its first occurrence (``waiting``), rescheduling cancels the pending one and opens another,
finishing or deleting cancels what is pending. Rows that already reached a final state
(``sent``, ``failed``, ``missed``) are never touched: they are the audit trail, and the
UNIQUE (task_id, due_at) constraint keeps a rescheduled-back task from being reminded twice.
A cancelled row that becomes current again is reopened in place (same row, same message ID)
and keeps its ``cancelled_at`` beside the new ``reopened_at``. Whenever a row's remind time
is set, ``planned_at`` records when: the producer's catch-up rule starts from it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.keys import message_id
from shared.models import Reminder, Task
from shared.rules import PENDING_STATES, remind_at


def current_occurrence(session: Session, task: Task) -> Reminder | None:
    """The reminder row of the task's current due date, if any."""
    return session.scalars(
        select(Reminder).where(Reminder.task_id == task.id, Reminder.due_at == task.due_at)
    ).one_or_none()


def first_occurrence(
    task_id: uuid.UUID, due_at: datetime, remind_before_seconds: int, now: datetime
) -> dict[str, Any]:
    """The column values of a task's first reminder row (state ``waiting``)."""
    return {
        "message_id": message_id(task_id, due_at),
        "task_id": task_id,
        "due_at": due_at,
        "remind_at": remind_at(due_at, remind_before_seconds),
        "state": "waiting",
        "attempts": 0,
        "late": False,
        "planned_at": now,
        "created_at": now,
        "updated_at": now,
    }


def open_occurrence(
    session: Session, task: Task, now: datetime, *, new_task: bool = False
) -> Reminder:
    """Make sure the task's current due date has a reminder row, pending if it can be.

    A cancelled row for the same due date (the task was finished or moved away and back)
    is made pending again, recording ``reopened_at``; a row in a final state is left as it is.
    """
    occurrence = current_occurrence(session, task)
    when = remind_at(task.due_at, task.remind_before_seconds)
    if occurrence is None:
        occurrence = Reminder(
            **first_occurrence(task.id, task.due_at, task.remind_before_seconds, now)
        )
        session.add(occurrence)
    elif occurrence.state == "cancelled":
        occurrence.state = "waiting"
        occurrence.remind_at = when
        occurrence.planned_at = now
        occurrence.reopened_at = now
        occurrence.updated_at = now
    elif occurrence.remind_at != when and (
        occurrence.state == "waiting"
        # Enqueued ahead and not due yet: planned again. The message already enqueued comes
        # early (and is put back until the new time) or late (and finds it sent).
        or (occurrence.state == "queued" and occurrence.remind_at > now)
    ):
        occurrence.state = "waiting"
        occurrence.remind_at = when
        occurrence.planned_at = now
        occurrence.updated_at = now
    return occurrence


def cancel_pending(session: Session, task: Task, now: datetime) -> int:
    """Cancel every pending reminder of the task; returns how many were cancelled.

    A message already in the queue for a cancelled row finds it cancelled and does nothing.
    """
    result = session.execute(
        update(Reminder)
        .where(Reminder.task_id == task.id, Reminder.state.in_(PENDING_STATES))
        .values(state="cancelled", cancelled_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
