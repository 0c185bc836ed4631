"""Task operations behind the HTTP API, each one transaction, each scoped to one owner.

A task of another owner, or a deleted one, is simply not found: the caller answers 404
and never confirms that it exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from api.pagination import decode_cursor, encode_cursor
from api.schemas import ReminderOut, TaskCreate, TaskOut, TaskPage, TaskPatch, TaskQuery
from shared.db import unit_of_work, utcnow
from shared.models import Reminder, Task
from shared.occurrences import cancel_pending, current_occurrence, open_occurrence
from shared.rules import normalize_due_at, remind_at


@dataclass(frozen=True)
class Owner:
    """The authenticated user on whose behalf a request runs."""

    id: uuid.UUID
    name: str
    is_operator: bool


def _reminder_out(reminder: Reminder) -> ReminderOut:
    return ReminderOut.model_validate(reminder, from_attributes=True)


def _task_out(task: Task, owner: Owner, reminder: Reminder | None) -> TaskOut:
    return TaskOut(
        id=task.id,
        owner=owner.name,
        title=task.title,
        notes=task.notes,
        due_at=task.due_at,
        remind_before_seconds=task.remind_before_seconds,
        remind_at=remind_at(task.due_at, task.remind_before_seconds),
        status=task.status,
        created_at=task.created_at,
        updated_at=task.updated_at,
        reminder=_reminder_out(reminder) if reminder else None,
    )


def _owned(
    session: Session, owner: Owner, task_id: uuid.UUID, *, lock: bool = False
) -> Task | None:
    query = select(Task).where(
        Task.id == task_id, Task.owner_id == owner.id, Task.deleted_at.is_(None)
    )
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


class TaskService:
    """The task use cases; ``default_remind_before`` comes from configuration."""

    def __init__(self, sessions: sessionmaker[Session], default_remind_before: int) -> None:
        self.sessions = sessions
        self.default_remind_before = default_remind_before

    def create(
        self,
        owner: Owner,
        data: TaskCreate,
        within: Callable[[Session, TaskOut], None] | None = None,
    ) -> TaskOut:
        """Create the task and its first occurrence; ``within`` runs in the same transaction."""
        now = utcnow()
        task = Task(
            id=uuid.uuid4(),
            owner_id=owner.id,
            title=data.title,
            notes=data.notes,
            due_at=normalize_due_at(data.due_at),
            remind_before_seconds=data.remind_before_seconds or self.default_remind_before,
            status="open",
            created_at=now,
            updated_at=now,
        )
        with unit_of_work(self.sessions) as session:
            session.add(task)
            session.flush()
            created = _task_out(task, owner, open_occurrence(session, task, now))
            if within is not None:
                within(session, created)
            return created

    def get(self, owner: Owner, task_id: uuid.UUID) -> TaskOut | None:
        with unit_of_work(self.sessions) as session:
            task = _owned(session, owner, task_id)
            if task is None:
                return None
            return _task_out(task, owner, current_occurrence(session, task))

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
            session.flush()
            reminder = (
                open_occurrence(session, task, now)
                if task.status == "open"
                else current_occurrence(session, task)
            )
            return _task_out(task, owner, reminder)

    def delete(self, owner: Owner, task_id: uuid.UUID) -> bool:
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
        statement: Select[Task] = select(Task).where(
            Task.owner_id == owner.id, Task.deleted_at.is_(None)
        )
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
        with unit_of_work(self.sessions) as session:
            tasks = list(session.scalars(statement))
            more = len(tasks) > query.limit
            tasks = tasks[: query.limit]
            current = _current_reminders(session, tasks)
            items = [_task_out(task, owner, current.get(task.id)) for task in tasks]
        next_cursor = encode_cursor(tasks[-1].due_at, tasks[-1].id) if more else None
        return TaskPage(items=items, next_cursor=next_cursor)


def _current_reminders(session: Session, tasks: list[Task]) -> dict[uuid.UUID, Reminder]:
    if not tasks:
        return {}
    keys = [(task.id, task.due_at) for task in tasks]
    rows = session.scalars(
        select(Reminder).where(tuple_(Reminder.task_id, Reminder.due_at).in_(keys))
    )
    return {row.task_id: row for row in rows}
