"""Delivering one occurrence: the body of the ``send_reminder`` actor, in one transaction.

Lock the task row, re-check that the occurrence is still wanted (task open, same due date,
reminder not already sent), deliver through the channel, record ``sent`` — all or nothing.
Two messages for the same occurrence (two schedulers, a redelivery after a crash, an
operator's retry) serialize on the task's row lock; the second finds ``sent`` and does
nothing. A stale message (task rescheduled, finished or deleted) is acknowledged and does
nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db import unit_of_work, utcnow
from shared.models import Reminder, Task, User
from shared.rules import DELIVERABLE_STATES, describe_error
from workers.channels import Channel, PermanentDeliveryError, ReminderPayload


class Outcome(StrEnum):
    SENT = "sent"
    DUPLICATE = "duplicate"  # already sent: a second message for the same occurrence
    STALE = "stale"  # no longer wanted: cancelled, missed, failed, or the task changed


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    state: str
    sent_at: datetime | None = None
    remind_at: datetime | None = None
    attempts: int = 0
    late: bool = False


def parse_occurrence(task_id: str, due_at: str) -> tuple[uuid.UUID, datetime]:
    """The occurrence named by a message's arguments.

    Raises:
        PermanentDeliveryError: the arguments are not a UUID and an aware ISO date-time.
    """
    try:
        parsed_due = datetime.fromisoformat(due_at)
        if parsed_due.tzinfo is None:
            raise ValueError("naive due_at")
        return uuid.UUID(task_id), parsed_due
    except (TypeError, ValueError) as exc:
        raise PermanentDeliveryError(f"malformed message: {exc}") from None


def deliver_occurrence(
    sessions: sessionmaker[Session],
    channel: Channel,
    task_id: uuid.UUID,
    due_at: datetime,
    clock: Callable[[], datetime] = utcnow,
) -> Delivery:
    """Deliver the occurrence (task_id, due_at) at most once; see the module docstring.

    Raises:
        TransientDeliveryError, PermanentDeliveryError: from the channel; nothing is recorded
            (the caller records the attempt, see ``workers.failures``).
        sqlalchemy.exc.SQLAlchemyError: the database failed; nothing was recorded.
    """
    with unit_of_work(sessions) as session:
        task = session.scalars(
            select(Task).where(Task.id == task_id).with_for_update()
        ).one_or_none()
        reminder = session.scalars(
            select(Reminder)
            .where(Reminder.task_id == task_id, Reminder.due_at == due_at)
            .with_for_update()
        ).one_or_none()
        if reminder is None or task is None:
            return Delivery(Outcome.STALE, state="unknown")
        if reminder.state == "sent":
            return Delivery(Outcome.DUPLICATE, state="sent", sent_at=reminder.sent_at)
        if reminder.state not in DELIVERABLE_STATES:
            return Delivery(Outcome.STALE, state=reminder.state)
        now = clock()
        if task.deleted_at is not None or task.status != "open" or task.due_at != due_at:
            # The API cancels pending rows when a task changes; this repairs any row left behind.
            reminder.state = "cancelled"
            reminder.updated_at = now
            return Delivery(Outcome.STALE, state="cancelled")

        owner = session.scalars(select(User.name).where(User.id == task.owner_id)).one()
        channel.deliver(
            ReminderPayload(
                message_id=str(reminder.message_id),
                task_id=str(task.id),
                owner=owner,
                title=task.title,
                due_at=reminder.due_at,
                remind_at=reminder.remind_at,
                sent_at=now,
            )
        )
        reminder.state = "sent"
        reminder.sent_at = now
        reminder.attempts += 1
        reminder.updated_at = now
        return Delivery(
            Outcome.SENT,
            state="sent",
            sent_at=now,
            remind_at=reminder.remind_at,
            attempts=reminder.attempts,
            late=reminder.late,
        )


@dataclass(frozen=True)
class FailedAttempt:
    state: str  # "queued" (will be retried) or "failed" (dead-lettered)
    attempts: int


def record_failed_attempt(
    sessions: sessionmaker[Session],
    task_id: uuid.UUID,
    due_at: datetime,
    error: BaseException,
    *,
    final: bool,
    clock: Callable[[], datetime] = utcnow,
) -> FailedAttempt | None:
    """Count a failed attempt and keep its error; ``final`` marks the occurrence ``failed``.

    Dramatiq's dead-letter entry keeps the traceback of the attempt *before* the last, so
    the row is where the final error is kept. Returns None when the row is no longer
    pending (sent or cancelled meanwhile): nothing to record.
    """
    with unit_of_work(sessions) as session:
        reminder = session.scalars(
            select(Reminder)
            .where(Reminder.task_id == task_id, Reminder.due_at == due_at)
            .with_for_update()
        ).one_or_none()
        if reminder is None or reminder.state not in DELIVERABLE_STATES:
            return None
        now = clock()
        reminder.attempts += 1
        reminder.last_error = describe_error(error)
        reminder.updated_at = now
        if final:
            reminder.state = "failed"
            reminder.failed_at = now
        return FailedAttempt(state=reminder.state, attempts=reminder.attempts)
