"""Task operations behind the HTTP API, each one transaction, each scoped to one owner.

A task of another owner, or a deleted one, is simply not found: the caller answers 404
and never confirms that it exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Row, and_, bindparam, insert, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from api.pagination import decode_cursor, encode_cursor
from api.schemas import ReminderOut, TaskCreate, TaskOut, TaskPage, TaskPatch, TaskQuery
from shared.db import hot_statement, unit_of_work, utcnow
from shared.models import Reminder, Task
from shared.occurrences import (
    cancel_pending,
    first_occurrence,
    open_occurrence,
)
from shared.queue import SoonDue, enqueue_if_due_soon
from shared.rules import normalize_due_at, remind_at


@dataclass(frozen=True)
class Owner:
    """The authenticated user on whose behalf a request runs."""

    id: uuid.UUID
    name: str
    is_operator: bool


_TASK_COLUMNS = (
    "id",
    "owner_id",
    "title",
    "notes",
    "due_at",
    "remind_before_seconds",
    "status",
    "created_at",
    "updated_at",
)
_NEW_TASK = (
    insert(Task)
    .values({name: bindparam(f"task_{name}") for name in _TASK_COLUMNS})
    .returning(Task.id)
    .cte("new_task")
)
_REMINDER_VALUES = (
    "due_at",
    "remind_at",
    "state",
    "attempts",
    "late",
    "planned_at",
    "created_at",
    "updated_at",
)
# The task and its first reminder in one statement: the API's busiest path, one round trip
# and no transaction to open and commit around it (a statement is atomic on its own).
_CREATE_TASK = insert(Reminder).from_select(
    ["message_id", "task_id", *_REMINDER_VALUES],
    select(
        bindparam("reminder_message_id", type_=Reminder.message_id.type),
        _NEW_TASK.c.id,
        *(
            bindparam(f"reminder_{name}", type_=Reminder.__table__.c[name].type)
            for name in _REMINDER_VALUES
        ),
    ),
)


def _reminder_out(reminder: Reminder) -> ReminderOut:
    return ReminderOut.model_validate(reminder, from_attributes=True)


def _owned(
    session: Session, owner: Owner, task_id: uuid.UUID, *, lock: bool = False
) -> Task | None:
    query = select(Task).where(
        Task.id == task_id, Task.owner_id == owner.id, Task.deleted_at.is_(None)
    )
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


class TaskService:
    """The task use cases; ``default_remind_before`` comes from configuration."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        default_remind_before: int,
        broker: RedisBroker | None = None,
        lookahead_seconds: int = 0,
    ) -> None:
        """``broker``: where a reminder due before the next scan is enqueued at once."""
        self.sessions = sessions
        self.default_remind_before = default_remind_before
        self.broker = broker
        self.lookahead_seconds = lookahead_seconds

    def _enqueue_if_due_soon(self, reminder: SoonDue | None) -> None:
        if self.broker is not None and reminder is not None:
            enqueue_if_due_soon(
                self.sessions.kw["bind"], self.broker, reminder, self.lookahead_seconds
            )

    def create(
        self,
        owner: Owner,
        data: TaskCreate,
        within: Callable[[Session, TaskOut], None] | None = None,
    ) -> TaskOut:
        """Create the task and its first occurrence; ``within`` runs in the same transaction."""
        now = utcnow()
        task_id = uuid.uuid4()
        due_at = normalize_due_at(data.due_at)
        remind_before = data.remind_before_seconds or self.default_remind_before
        task = {
            "id": task_id,
            "owner_id": owner.id,
            "title": data.title,
            "notes": data.notes,
            "due_at": due_at,
            "remind_before_seconds": remind_before,
            "status": "open",
            "created_at": now,
            "updated_at": now,
        }
        reminder = first_occurrence(task_id, due_at, remind_before, now)
        created = TaskOut(
            id=task_id,
            owner=owner.name,
            title=data.title,
            notes=data.notes,
            due_at=due_at,
            remind_before_seconds=remind_before,
            remind_at=reminder["remind_at"],
            status="open",
            created_at=now,
            updated_at=now,
            reminder=ReminderOut(
                **reminder, sent_at=None, last_error=None, cancelled_at=None, reopened_at=None
            ),
        )
        soon = SoonDue(task_id, due_at, reminder["message_id"], reminder["remind_at"])
        engine = self.sessions.kw["bind"]
        if within is None and engine.dialect.name == "postgresql":
            params = {f"task_{name}": value for name, value in task.items()}
            params.update({f"reminder_{name}": value for name, value in reminder.items()})
            hot_statement(engine, _CREATE_TASK, params)
        else:
            with unit_of_work(self.sessions) as session:
                connection = session.connection()
                connection.execute(insert(Task), task)
                connection.execute(insert(Reminder), reminder)
                if within is not None:
                    within(session, created)
        self._enqueue_if_due_soon(soon)
        return created

    def get(self, owner: Owner, task_id: uuid.UUID) -> TaskOut | None:
        statement = _TASK_WITH_REMINDER.where(
            Task.id == task_id, Task.owner_id == owner.id, Task.deleted_at.is_(None)
        )
        with self.sessions() as session:
            row = session.connection().execute(statement).one_or_none()
            session.rollback()
        return _row_out(row, owner) if row else None

    def update(self, owner: Owner, task_id: uuid.UUID, patch: TaskPatch) -> TaskOut | None:
        """Apply ``patch``; a new due date or lead time re-plans the reminder."""
        now = utcnow()
        with unit_of_work(self.sessions) as session:
            task = _owned(session, owner, task_id, lock=True)
            if task is None:
                return None
            changes = patch.model_dump(exclude_unset=True)
            if "due_at" in changes:
                changes["due_at"] = normalize_due_at(changes["due_at"])
            replanned = (
                changes.get("due_at", task.due_at) != task.due_at
                or changes.get("status", task.status) != task.status
            )
            if replanned:
                cancel_pending(session, task, now)
            for name, value in changes.items():
                setattr(task, name, value)
            task.updated_at = now
            soon = None
            if task.status == "open":
                session.flush()
                occurrence = open_occurrence(session, task, now)
                if occurrence.state == "waiting":
                    soon = SoonDue(
                        task.id, occurrence.due_at, occurrence.message_id, occurrence.remind_at
                    )
        self._enqueue_if_due_soon(soon)
        return self.get(owner, task_id)

    def delete(self, owner: Owner, task_id: uuid.UUID) -> bool:
        """Cancel what is pending and hide the task: from then on it is not found, like a task
        that never existed (its history too). The rows stay in the database (``deleted_at``)
        for operators: a dead letter of the task can still be shown and discarded."""
        now = utcnow()
        with unit_of_work(self.sessions) as session:
            task = _owned(session, owner, task_id, lock=True)
            if task is None:
                return False
            cancel_pending(session, task, now)
            task.deleted_at = now
            task.updated_at = now
            return True

    def reminders(self, owner: Owner, task_id: uuid.UUID) -> list[ReminderOut] | None:
        with unit_of_work(self.sessions) as session:
            task = _owned(session, owner, task_id)
            if task is None:
                return None
            rows = session.scalars(
                select(Reminder).where(Reminder.task_id == task.id).order_by(Reminder.created_at)
            )
            return [_reminder_out(row) for row in rows]

    def list(self, owner: Owner, query: TaskQuery) -> TaskPage:
        """One page of the owner's tasks ordered by (due_at, id).

        Raises:
            BadCursor: the cursor does not decode.
        """
        statement = _TASK_WITH_REMINDER.where(Task.owner_id == owner.id, Task.deleted_at.is_(None))
        if query.status:
            statement = statement.where(Task.status == query.status)
        if query.due_after:
            statement = statement.where(Task.due_at >= query.due_after)
        if query.due_before:
            statement = statement.where(Task.due_at < query.due_before)
        if query.cursor:
            after_due, after_id = decode_cursor(query.cursor)
            statement = statement.where(tuple_(Task.due_at, Task.id) > tuple_(after_due, after_id))
        statement = statement.order_by(Task.due_at, Task.id).limit(query.limit + 1)
        with self.sessions() as session:
            rows = session.connection().execute(statement).all()
            session.rollback()
        more = len(rows) > query.limit
        items = [_row_out(row, owner) for row in rows[: query.limit]]
        last = items[-1] if more else None
        return TaskPage(
            items=items, next_cursor=encode_cursor(last.due_at, last.id) if last else None
        )


# A task with the reminder of its current due date, in one query (the listing's shape).
_TASK_WITH_REMINDER = select(
    Task.id,
    Task.title,
    Task.notes,
    Task.due_at,
    Task.remind_before_seconds,
    Task.status,
    Task.created_at,
    Task.updated_at,
    Reminder.state.label("r_state"),
    Reminder.remind_at.label("r_remind_at"),
    Reminder.message_id.label("r_message_id"),
    Reminder.sent_at.label("r_sent_at"),
    Reminder.attempts.label("r_attempts"),
    Reminder.late.label("r_late"),
    Reminder.last_error.label("r_last_error"),
    Reminder.cancelled_at.label("r_cancelled_at"),
    Reminder.reopened_at.label("r_reopened_at"),
).outerjoin(Reminder, and_(Reminder.task_id == Task.id, Reminder.due_at == Task.due_at))


def _row_out(row: Row[*tuple[Any, ...]], owner: Owner) -> TaskOut:
    reminder = None
    if row.r_state is not None:
        reminder = ReminderOut(
            state=row.r_state,
            due_at=row.due_at,
            remind_at=row.r_remind_at,
            message_id=row.r_message_id,
            sent_at=row.r_sent_at,
            attempts=row.r_attempts,
            late=row.r_late,
            last_error=row.r_last_error,
            cancelled_at=row.r_cancelled_at,
            reopened_at=row.r_reopened_at,
        )
    return TaskOut(
        id=row.id,
        owner=owner.name,
        title=row.title,
        notes=row.notes,
        due_at=row.due_at,
        remind_before_seconds=row.remind_before_seconds,
        remind_at=remind_at(row.due_at, row.remind_before_seconds),
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        reminder=reminder,
    )
