"""Delivering one reminder: the body of the ``send_reminder`` actor, in one transaction.

Lock the task row, re-check that the reminder is still wanted (task open, the reminder row
named by the message ID still pending and its remind time come), deliver through the
channel, record ``sent`` — all or nothing. Two messages for the same reminder (two
schedulers, a redelivery after a crash, an operator's retry) serialize on the task's row
lock; the second finds ``sent`` and does nothing. A stale message (the task rescheduled,
its rule or offsets changed, finished or deleted: the API cancels the rows that no longer
match under the same lock) is acknowledged and does nothing.

The webhook body is built from the occurrence (``reminder_body``); a failed attempt keeps
the body it sent on the row, and every later attempt sends those bytes again (SPEC §4.8).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from dramatiq import Message
from sqlalchemy import ColumnElement, Connection, Engine, and_, bindparam, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import ReturningUpdate

from shared.logs import get_logger
from shared.planning.rules import DELIVERABLE_STATES, describe_error
from shared.store.db import (
    database_time,
    database_unreachable,
    hot_transaction,
    unit_of_work,
    utcnow,
)
from shared.store.models import Reminder, Task, User
from workers.admission import Deferred
from workers.channels import Channel, PermanentDeliveryError, ReminderPayload, reminder_body
from workers.endpoint_channel import EndpointChannel, Made

log = get_logger("delivery")


class Outcome(StrEnum):
    SENT = "sent"
    DUPLICATE = "duplicate"  # already sent: a second message for the same occurrence
    STALE = "stale"  # no longer wanted: cancelled, missed, failed, or the task changed
    EARLY = "early"  # wanted, but its remind time has not come: to be put back until then


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    state: str
    sent_at: datetime | None = None
    remind_at: datetime | None = None
    attempts: int = 0
    late: bool = False
    channel: str | None = None  # the channel that accepted it: the deployment's or "endpoint"
    wait: timedelta | None = None  # early: how long until its remind time


@dataclass(frozen=True)
class Named:
    """The reminder a message names: its task, occurrence and message ID."""

    task_id: uuid.UUID
    due_at: datetime
    message_id: uuid.UUID


def parse_occurrence(message_id: str, task_id: str, due_at: str) -> Named:
    """The reminder named by a message's ID and arguments.

    Raises:
        PermanentDeliveryError: the arguments are not a UUID and an aware ISO date-time, or
            the message ID is not a UUID.
    """
    try:
        parsed_due = datetime.fromisoformat(due_at)
        if parsed_due.tzinfo is None:
            raise ValueError("naive due_at")
        return Named(uuid.UUID(task_id), parsed_due, uuid.UUID(message_id))
    except (TypeError, ValueError, AttributeError) as exc:
        raise PermanentDeliveryError(f"malformed message: {exc}") from None


# Lock the task row (first, as the API does, so no deadlock), re-check it and the reminder,
# and mark the reminder sent, in one statement; delivery then happens before the commit.
_LOCKED_TASK = (
    select(Task.id.label("locked_task_id"))
    .where(
        Task.id == bindparam("b_task"),
        Task.status == "open",
        Task.deleted_at.is_(None),
    )
    .with_for_update(of=Task)
    .cte("locked_task")
)
_TITLE = select(Task.title).where(Task.id == Reminder.task_id).correlate(Reminder).scalar_subquery()
_ZONE = (
    select(Task.time_zone).where(Task.id == Reminder.task_id).correlate(Reminder).scalar_subquery()
)
_ENDPOINT = (
    select(Task.endpoint_id)
    .where(Task.id == Reminder.task_id)
    .correlate(Reminder)
    .scalar_subquery()
)
_OWNER = (
    select(User.name)
    .where(
        User.id
        == select(Task.owner_id)
        .where(Task.id == Reminder.task_id)
        .correlate(Reminder)
        .scalar_subquery()
    )
    .correlate(Reminder)
    .scalar_subquery()
)


def _mark_sent(now: ColumnElement[datetime]) -> ReturningUpdate[Any]:
    """Mark the reminder sent if it is deliverable and its remind time has come by ``now``."""
    return (
        update(Reminder)
        .where(
            Reminder.task_id == _LOCKED_TASK.c.locked_task_id,
            Reminder.message_id == bindparam("b_message"),
            or_(*(Reminder.state == state for state in sorted(DELIVERABLE_STATES))),
            Reminder.remind_at <= now,  # never before its remind time
        )
        .values(
            state="sent",
            sent_at=now,
            # Late: sent after its due date although planned before it (README), judged now,
            # at the send: a reminder claimed on time may still go out late (a backlog,
            # retries).
            late=or_(
                Reminder.late,
                and_(Reminder.due_at < now, Reminder.planned_at < Reminder.due_at),
            ),
            attempts=Reminder.attempts + 1 + bindparam("b_unrecorded"),
            updated_at=now,
        )
        # Scalar subqueries, not the CTE's columns: SQLite's RETURNING sees only the updated
        # table.
        .returning(
            Reminder.due_at,
            Reminder.remind_at,
            Reminder.late,
            Reminder.attempts,
            Reminder.body,
            Reminder.offset_seconds,
            _TITLE.label("title"),
            _OWNER.label("owner"),
            _ZONE.label("time_zone"),
            _ENDPOINT.label("endpoint_id"),
            Reminder.sent_at,
        )
    )


# "Now" is the database server's: every worker host then judges a remind time by one clock,
# however wrong its own is (one whose clock runs ahead releases delayed messages early; this
# check puts them back). The statement's start, before any wait for the task's lock: the
# send itself is later still.
_MARK_SENT = _mark_sent(func.statement_timestamp())
# "Now" given: a test's clock, or this host's on SQLite (the embedded default, whose processes
# share one host and so one clock).
_MARK_SENT_AT = _mark_sent(bindparam("b_now"))


# In a message's options: attempts the receiver accepted but whose commit a database outage
# cut off. The options travel with the message's retries; marking the reminder sent adds them.
UNRECORDED_ATTEMPTS = "unrecorded_attempts"


def deliver_occurrence(
    engine: Engine,
    channel: Channel,
    named: Named,
    clock: Callable[[], datetime] | None = None,
    carried: MutableMapping[str, Any] | None = None,
    endpoints: EndpointChannel | None = None,
    message: Message[Any] | None = None,
) -> Delivery:
    """Deliver the reminder ``named`` at most once; see the module docstring.

    The reminder is marked sent, the channel called, and the transaction committed only if
    the channel accepted: a failed delivery rolls the mark back. A task that names an
    endpoint is delivered there (``endpoints``), else through ``channel``; the endpoint's
    attempt is recorded once the transaction has ended. ``carried`` is the message's
    options: an attempt the channel accepted but the database outage kept from committing is
    counted there, so the row's ``attempts`` stays true. ``message`` is that message: a
    receiver's limits park or delay it (`workers.admission`). ``clock`` is the time the
    remind time is judged by and ``sent_at`` recorded with; by default the database server's
    (`database_time`), so a worker host's own clock, however wrong, never sends early.

    Raises:
        TransientDeliveryError, PermanentDeliveryError: from the channel; nothing is recorded
            (the caller records the attempt, see ``RecordFailedAttempts``).
        sqlalchemy.exc.SQLAlchemyError: the database failed; nothing was recorded.
        Deferred: the receiver's limits hold the reminder back; nothing was sent or recorded.
    """
    statement, now = _MARK_SENT, None
    if clock is not None or engine.dialect.name != "postgresql":
        statement, now = _MARK_SENT_AT, (clock or utcnow)()
    carried = {} if carried is None else carried
    unrecorded = carried.get(UNRECORDED_ATTEMPTS, 0)
    body: bytes | None = None  # set once built afresh: kept on the row if the attempt fails
    accepted = False
    used = channel.name
    made: list[Made] = []
    try:
        with hot_transaction(engine) as rows:
            params = {
                "b_task": named.task_id,
                "b_message": named.message_id,
                "b_unrecorded": unrecorded,
            }
            marked_rows = rows(statement, params if now is None else {**params, "b_now": now})
            marked = marked_rows[0] if marked_rows else None
            if marked is not None:
                (due_at, remind_at, late, attempts, kept_body, offset, title, owner, zone) = marked[
                    :9
                ]
                endpoint_id, sent_at = marked[9:11]
                # The driver's rows are in the session's zone.
                due_at, remind_at = due_at.astimezone(UTC), remind_at.astimezone(UTC)
                sent_at = sent_at.astimezone(UTC)
                message_id, task_id = named.message_id, named.task_id
                # A user's endpoint, or a channel that sends it, needs the body.
                if kept_body is None and (endpoint_id is not None or channel.sends_body):
                    body = reminder_body(
                        message_id=str(message_id),
                        task_id=str(task_id),
                        owner=owner,
                        title=title,
                        due_at=due_at,
                        remind_at=remind_at,
                        time_zone=zone,
                        offset_seconds=offset,
                    )
                payload = ReminderPayload(
                    message_id=str(message_id),
                    task_id=str(task_id),
                    due_at=due_at,
                    remind_at=remind_at,
                    sent_at=sent_at,
                    body=body if body is not None else (kept_body or "").encode(),
                    message=message,
                )
                if (
                    endpoints is not None
                    and endpoint_id is not None
                    and endpoints.deliver(payload, endpoint_id, made, rows)
                ):
                    used = endpoints.name
                else:
                    channel.deliver(payload)
                accepted = True
    except BaseException as exc:
        if accepted and database_unreachable(exc):
            carried[UNRECORDED_ATTEMPTS] = unrecorded + 1
        if body is not None and not database_unreachable(exc) and not isinstance(exc, Deferred):
            _keep_body(engine, named.message_id, body)
        raise
    finally:
        if made and endpoints is not None:
            endpoints.settle(made)
    if marked is None:
        with engine.begin() as db:
            return _not_deliverable(db, named, now)
    return Delivery(
        Outcome.SENT,
        state="sent",
        sent_at=sent_at,
        remind_at=remind_at,
        attempts=attempts,
        late=late,
        channel=used,
    )


def _keep_body(engine: Engine, message_id: uuid.UUID, body: bytes) -> None:
    """Keep the body a failed attempt sent, so the next attempt sends the same bytes.

    Best effort: when the database itself is what failed, the next attempt builds the body
    again from the same occurrence, which gives the same bytes unless the title was edited.
    """
    try:
        with engine.begin() as db:
            db.execute(
                update(Reminder)
                .where(Reminder.message_id == message_id, Reminder.body.is_(None))
                .values(body=body.decode())
            )
    except SQLAlchemyError as exc:
        log.warning(
            "reminder.body_not_kept", message_id=str(message_id), error_type=type(exc).__name__
        )


def _not_deliverable(db: Connection, named: Named, now: datetime | None) -> Delivery:
    """Why a reminder was not marked sent: already sent, not due yet, or stale. ``now``: the
    time it was judged by (None: the database server's)."""
    if now is None:
        now = database_time(db)
    task = db.execute(
        select(Task.status, Task.deleted_at).where(Task.id == named.task_id).with_for_update()
    ).one_or_none()
    reminder = db.execute(
        select(Reminder.message_id, Reminder.state, Reminder.sent_at, Reminder.remind_at)
        .where(Reminder.message_id == named.message_id, Reminder.task_id == named.task_id)
        .with_for_update()
    ).one_or_none()
    if reminder is None or task is None:
        return Delivery(Outcome.STALE, state="unknown")
    if reminder.state == "sent":
        return Delivery(Outcome.DUPLICATE, state="sent", sent_at=reminder.sent_at)
    wanted = task.status == "open" and task.deleted_at is None
    if reminder.state in DELIVERABLE_STATES and wanted:
        # Early: enqueued ahead and released early (a worker's clock ahead, a redelivery), or
        # sent by hand. How long to wait is told by the clock that judged it early.
        return Delivery(
            Outcome.EARLY,
            state=reminder.state,
            remind_at=reminder.remind_at,
            wait=reminder.remind_at - now,
        )
    if reminder.state in DELIVERABLE_STATES:
        # Pending, but the task was finished or deleted: the API cancels such rows as it
        # changes the task; this repairs any row left behind.
        db.execute(
            update(Reminder)
            .where(Reminder.message_id == reminder.message_id)
            .values(state="cancelled", cancelled_at=now, updated_at=now)
        )
        return Delivery(Outcome.STALE, state="cancelled")
    return Delivery(Outcome.STALE, state=reminder.state)


@dataclass(frozen=True)
class FailedAttempt:
    state: str  # "queued" (will be retried) or "failed" (dead-lettered)
    attempts: int


def record_failed_attempt(
    sessions: sessionmaker[Session],
    named: Named,
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
            select(Reminder).where(Reminder.message_id == named.message_id).with_for_update()
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
