"""Task operations behind the HTTP API, each one transaction, each scoped to one owner.

A task of another owner, or a deleted one, is simply not found: the caller answers 404
and never confirms that it exists.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dramatiq.brokers.redis import RedisBroker
from psycopg.types.json import Json
from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.pagination import keyset, next_cursor
from api.schemas import (
    HistoryQuery,
    OccurrenceOut,
    ReminderOut,
    ReminderPage,
    TaskCreate,
    TaskOut,
    TaskPage,
    TaskPatch,
    TaskQuery,
)
from shared.broker.queue import SoonDue, enqueue_if_due_soon
from shared.delivery import endpoints
from shared.planning.keys import snooze_message_id
from shared.planning.recurrence import (
    Occurrence,
    Series,
    next_occurrence,
    occurrences,
    parse_rule,
    validate,
)
from shared.planning.rules import PENDING_STATES, normalize_due_at, remind_at
from shared.store.db import UTCDateTime, hot_statement, unit_of_work, utcnow
from shared.store.models import Reminder, Task
from shared.store.occurrences import local_start, plan_reminders, reminder_values, series_of


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
    "time_zone",
    "local_start",
    "recurrence",
    "reminder_offsets",
    "endpoint_id",
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
    "offset_seconds",
    "kind",
    "remind_at",
    "state",
    "attempts",
    "late",
    "planned_at",
    "created_at",
    "updated_at",
)
# A one-off task with one reminder and its row in one statement: the API's busiest path, one
# round trip and no transaction to open and commit around it (a statement is atomic alone).
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


@dataclass(frozen=True)
class Planning:
    """The settings that shape a task's reminders (from `shared.config.Settings`)."""

    default_remind_before: int = 86400
    horizon_seconds: int = 86400
    min_recurrence_seconds: int = 3600
    lookahead_seconds: int = 0


class NoTask(Exception):
    """No such task for this owner (or deleted)."""


class TaskDone(Exception):
    """The task is done: it has no occurrence to complete or snooze."""


class NoEndpoint(Exception):
    """The task names an endpoint the owner does not have (missing, or another user's)."""


def _check_endpoint(session: Session, owner: Owner, endpoint_id: uuid.UUID | None) -> None:
    """Raises: NoEndpoint."""
    if endpoint_id is not None and endpoints.owned(session, owner.id, endpoint_id) is None:
        raise NoEndpoint("no such endpoint (or not yours)")


class TaskService:
    """The task use cases, each one transaction scoped to one owner."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        planning: Planning,
        broker: RedisBroker | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``broker``: where a reminder due before the next scan is enqueued at once.
        ``clock``: the time the use cases act at (tests move it)."""
        self.sessions = sessions
        self.planning = planning
        self.broker = broker
        self.clock = clock

    def _enqueue_soon_due(self, owner: Owner, opened: Iterable[Reminder]) -> None:
        if self.broker is None:
            return
        soon = [
            SoonDue(row.task_id, row.due_at, row.message_id, row.remind_at, owner.id)
            for row in opened
            if row.state == "waiting"
        ]
        if soon:
            enqueue_if_due_soon(
                self.sessions.kw["bind"], self.broker, soon, self.planning.lookahead_seconds
            )

    def _validate(self, series: Series) -> None:
        validate(series, self.planning.min_recurrence_seconds)

    def create(
        self,
        owner: Owner,
        data: TaskCreate,
        within: Callable[[Session, TaskOut], None] | None = None,
    ) -> TaskOut:
        """Create the task and its reminder rows; ``within`` runs in the same transaction.

        Raises:
            RecurrenceError: the rule fires more often than allowed, or never from due_at.
            NoEndpoint: ``endpoint_id`` is not one of the owner's endpoints.
        """
        now = self.clock()
        task_id = uuid.uuid4()
        due_at = normalize_due_at(data.due_at)
        offsets = self._offsets(data.reminders, data.remind_before_seconds)
        zone_name = data.time_zone or "UTC"
        series = Series(
            start=due_at,
            time_zone=zone_name,
            rule=parse_rule(data.recurrence) if data.recurrence else None,
        )
        self._validate(series)
        task = {
            "id": task_id,
            "owner_id": owner.id,
            "title": data.title,
            "notes": data.notes,
            "due_at": due_at,
            "time_zone": zone_name,
            "local_start": local_start(due_at, zone_name),
            "recurrence": series.rule.text if series.rule else None,
            "reminder_offsets": offsets,
            "endpoint_id": data.endpoint_id,
            "status": "open",
            "created_at": now,
            "updated_at": now,
        }
        engine = self.sessions.kw["bind"]
        hot = (
            within is None
            and engine.dialect.name == "postgresql"
            and series.rule is None
            and len(offsets) == 1
        )
        if data.endpoint_id is not None:
            with self.sessions() as session:
                _check_endpoint(session, owner, data.endpoint_id)
                session.rollback()
        if hot:
            reminder = reminder_values(task_id, due_at, offsets[0], now, now)
            params = {f"task_{name}": value for name, value in task.items()}
            params["task_reminder_offsets"] = Json(offsets)
            params.update({f"reminder_{name}": value for name, value in reminder.items()})
            try:
                hot_statement(engine, _CREATE_TASK, params)
            except IntegrityError:
                if data.endpoint_id is None:
                    raise
                raise NoEndpoint("no such endpoint (or not yours)") from None  # deleted since
            row = Reminder(**reminder)
            created = _task_out(Task(**task), _reminder_out(row), owner, now)
            self._enqueue_soon_due(owner, [row])
            return created
        with unit_of_work(self.sessions) as session:
            new_task = Task(**task)
            session.add(new_task)
            session.flush()
            planned = plan_reminders(session, new_task, now, self.planning.horizon_seconds)
            session.flush()
            shown = _current(planned.opened)
            shown_out = _reminder_out(shown) if shown is not None else None
            created = _task_out(new_task, shown_out, owner, now)
            if within is not None:
                within(session, created)
            opened = list(planned.opened)
        self._enqueue_soon_due(owner, opened)
        return created

    def _offsets(self, reminders: list[int] | None, remind_before: int | None) -> list[int]:
        if reminders:
            return sorted(set(reminders), reverse=True)
        return [remind_before or self.planning.default_remind_before]

    def get(self, owner: Owner, task_id: uuid.UUID) -> TaskOut | None:
        statement = _TASK_WITH_REMINDER.where(
            Task.id == task_id, Task.owner_id == owner.id, Task.deleted_at.is_(None)
        )
        with self.sessions() as session:
            row = session.connection().execute(statement).one_or_none()
            session.rollback()
        return _row_out(row, owner, self.clock()) if row else None

    def update(self, owner: Owner, task_id: uuid.UUID, patch: TaskPatch) -> TaskOut | None:
        """Apply ``patch``; a change of when or how the task reminds re-plans its reminders.

        Raises:
            RecurrenceError: the changed rule fires more often than allowed, or never.
            NoEndpoint: ``endpoint_id`` is not one of the owner's endpoints.
        """
        now = self.clock()
        with unit_of_work(self.sessions) as session:
            task = _owned(session, owner, task_id, lock=True)
            if task is None:
                return None
            changes = patch.model_dump(exclude_unset=True)
            if "endpoint_id" in changes:
                _check_endpoint(session, owner, changes["endpoint_id"])
            if "due_at" in changes:
                changes["due_at"] = normalize_due_at(changes["due_at"])
            if "reminders" in changes or "remind_before_seconds" in changes:
                changes["reminder_offsets"] = self._offsets(
                    changes.pop("reminders", None), changes.pop("remind_before_seconds", None)
                )
            replanned = [
                name
                for name in _PLANNING_FIELDS
                if name in changes and changes[name] != getattr(task, name)
            ]
            for name, value in changes.items():
                setattr(task, name, value)
            task.updated_at = now
            opened: list[Reminder] = []
            if set(replanned) & _SERIES_FIELDS:
                task.local_start = local_start(task.due_at, task.time_zone)
                self._validate(series_of(task))
                task.series_cursor = None  # a new series: expanded again from its start
            if replanned:
                session.flush()
                opened = plan_reminders(session, task, now, self.planning.horizon_seconds).opened
                session.flush()
        self._enqueue_soon_due(owner, opened)
        return self.get(owner, task_id)

    def complete(self, owner: Owner, task_id: uuid.UUID) -> TaskOut | None:
        """Finish the current occurrence: a one-off task is done; a recurring one cancels the
        pending reminders of its current occurrence (snoozes included) and moves on to the
        next. A series with no occurrence left is done.

        Raises:
            TaskDone: the task is already done.
        """
        now = self.clock()
        with unit_of_work(self.sessions) as session:
            task = _owned(session, owner, task_id, lock=True)
            if task is None:
                return None
            if task.status == "done":
                raise TaskDone("the task is done")
            task.updated_at = now
            current = _current_occurrence(session, task, now)
            if task.recurrence is None or current is None:
                task.status = "done"
                plan_reminders(session, task, now, self.planning.horizon_seconds)
            else:
                session.execute(
                    update(Reminder)
                    .where(
                        Reminder.task_id == task.id,
                        Reminder.due_at <= current,
                        Reminder.state.in_(sorted(PENDING_STATES)),
                    )
                    .values(state="cancelled", cancelled_at=now, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                task.completed_through = current
                session.flush()
                opened = plan_reminders(session, task, now, self.planning.horizon_seconds).opened
                session.flush()
                self._enqueue_soon_due(owner, opened)
        return self.get(owner, task_id)

    def snooze(
        self,
        owner: Owner,
        task_id: uuid.UUID,
        until: datetime,
        within: Callable[[Session, ReminderOut], None] | None = None,
    ) -> ReminderOut | None:
        """One more reminder at ``until`` for the task's latest occurrence: the one whose
        reminders have started (a remind time passed), else the next one. Its own row and
        message ID (`shared.planning.keys.snooze_message_id`): the same ``until`` is the same
        snooze.

        Raises:
            TaskDone: the task is done (nothing to snooze).
        """
        now = self.clock()
        until = normalize_due_at(until)
        with unit_of_work(self.sessions) as session:
            task = _owned(session, owner, task_id, lock=True)
            if task is None:
                return None
            if task.status == "done":
                raise TaskDone("the task is done")
            occurrence = _latest_occurrence(session, task, now)
            key = snooze_message_id(task.id, occurrence, until)
            row = session.get(Reminder, key)
            if row is None:
                row = Reminder(
                    message_id=key,
                    task_id=task.id,
                    due_at=occurrence,
                    offset_seconds=None,
                    kind="snooze",
                    remind_at=until,
                    state="waiting",
                    attempts=0,
                    late=False,
                    planned_at=now,
                    created_at=now,
                    updated_at=now,
                )
                session.add(row)
                session.flush()
            snoozed = _reminder_out(row)
            if within is not None:
                within(session, snoozed)
        self._enqueue_soon_due(owner, [row])
        return snoozed

    def occurrences(
        self, owner: Owner, task_id: uuid.UUID, after: datetime | None, limit: int
    ) -> list[OccurrenceOut] | None:
        """The task's next occurrences from ``after`` (default: now), with local times."""
        with self.sessions() as session:
            task = _owned(session, owner, task_id)
            if task is None:
                return None
            series = series_of(task)
            offsets = task.reminder_offsets
            session.rollback()
        if series.rule is None:
            found = list(occurrences(series))
        else:
            found = list(occurrences(series, after=after or self.clock(), limit=limit))
        return [_occurrence_out(o, offsets) for o in found]

    def delete(self, owner: Owner, task_id: uuid.UUID) -> bool:
        """Cancel what is pending and hide the task: from then on it is not found, like a task
        that never existed (its history too). The rows stay in the database (``deleted_at``)
        for operators: a dead letter of the task can still be shown and discarded."""
        now = self.clock()
        with unit_of_work(self.sessions) as session:
            task = _owned(session, owner, task_id, lock=True)
            if task is None:
                return False
            task.deleted_at = now
            task.updated_at = now
            plan_reminders(session, task, now, self.planning.horizon_seconds)
            return True

    def reminders(
        self, owner: Owner, task_id: uuid.UUID, query: HistoryQuery
    ) -> ReminderPage | None:
        """One page of the task's reminder history, newest remind time first.

        Raises:
            BadCursor: the cursor does not decode.
        """
        with self.sessions() as session:
            task = _owned(session, owner, task_id)
            if task is None:
                return None
            statement = keyset(
                select(Reminder).where(Reminder.task_id == task.id),
                Reminder.remind_at,
                Reminder.message_id,
                query.cursor,
                query.limit,
                newest_first=True,
            )
            rows = list(session.scalars(statement))
            items = [_reminder_out(row) for row in rows[: query.limit]]
            keys = [(row.remind_at, row.message_id) for row in rows]
            session.rollback()
        return ReminderPage(items=items, next_cursor=next_cursor(keys, query.limit))

    def list(self, owner: Owner, query: TaskQuery) -> TaskPage:
        """One page of the owner's tasks ordered by (when each is next due, id): a one-off
        task's due date, a recurring task's next occurrence (`_listed_due_at`); the
        ``due_after``/``due_before`` filters read the same date.

        Raises:
            BadCursor: the cursor does not decode.
        """
        now = self.clock()
        due = _listed_due_at(now)
        statement = _TASK_WITH_REMINDER.add_columns(due.label("listed_due_at")).where(
            Task.owner_id == owner.id, Task.deleted_at.is_(None)
        )
        if query.status:
            statement = statement.where(Task.status == query.status)
        if query.due_after:
            statement = statement.where(due >= query.due_after)
        if query.due_before:
            statement = statement.where(due < query.due_before)
        statement = keyset(statement, due, Task.id, query.cursor, query.limit)
        with self.sessions() as session:
            rows = session.connection().execute(statement).all()
            session.rollback()
        return TaskPage(
            items=[_row_out(row, owner, now) for row in rows[: query.limit]],
            next_cursor=next_cursor([(row.listed_due_at, row.id) for row in rows], query.limit),
        )


def _listed_due_at(now: datetime) -> ColumnElement[datetime]:
    """When a task is next due, as the listing sorts and filters it: a one-off task's due
    date; a recurring task's next occurrence after ``now`` (and after what it completed): its
    earliest reminder row still to come, else the first occurrence past its rows
    (``next_unplanned_at``); a series that ended or is done sorts by its latest occurrence."""
    at = literal(now, UTCDateTime())
    live = and_(
        Reminder.task_id == Task.id, Reminder.kind == "reminder", Reminder.state != "cancelled"
    )
    coming = (
        select(func.min(Reminder.due_at))
        .where(
            live,
            Reminder.due_at > at,
            or_(Task.completed_through.is_(None), Reminder.due_at > Task.completed_through),
        )
        .correlate(Task)
        .scalar_subquery()
    )
    latest = (
        select(func.max(Reminder.due_at))
        .where(live, Reminder.due_at <= at)
        .correlate(Task)
        .scalar_subquery()
    )
    return case(
        (Task.recurrence.is_(None), Task.due_at),
        else_=func.coalesce(coming, Task.next_unplanned_at, latest, Task.due_at),
    )


# Fields whose change re-plans the reminders; of them, those that make another series.
_PLANNING_FIELDS = ("due_at", "time_zone", "recurrence", "reminder_offsets", "status")
_SERIES_FIELDS = {"due_at", "time_zone", "recurrence"}


def _current(rows: Iterable[Reminder]) -> Reminder | None:
    """Of the given rows, the first pending one by remind time."""
    pending = [row for row in rows if row.state in PENDING_STATES]
    return min(pending, key=lambda row: row.remind_at, default=None)


def _current_occurrence(session: Session, task: Task, now: datetime) -> datetime | None:
    """The occurrence a recurring task is at: the earliest with a pending reminder, else the
    next one due (None once the series has ended)."""
    earliest = session.scalar(
        select(func.min(Reminder.due_at)).where(
            Reminder.task_id == task.id,
            Reminder.kind == "reminder",
            Reminder.state.in_(sorted(PENDING_STATES)),
        )
    )
    if earliest is not None:
        return earliest
    after = max(now, task.completed_through or now)
    upcoming = next_occurrence(series_of(task), after)
    return upcoming.due_at if upcoming else None


def _latest_occurrence(session: Session, task: Task, now: datetime) -> datetime:
    """The occurrence a snooze is for: the latest whose reminders have started, else the
    current one, else (a series that ended) the task's last one."""
    started = session.scalar(
        select(func.max(Reminder.due_at)).where(
            Reminder.task_id == task.id, Reminder.kind == "reminder", Reminder.remind_at <= now
        )
    )
    if started is not None:
        return started
    return _current_occurrence(session, task, now) or task.due_at


def _occurrence_out(occurrence: Occurrence, offsets: Iterable[int]) -> OccurrenceOut:
    return OccurrenceOut(
        due_at=occurrence.due_at,
        local_due_at=occurrence.local_due_at,
        remind_at=sorted(remind_at(occurrence.due_at, offset) for offset in offsets),
    )


def _next_occurrence_out(task: Any, now: datetime) -> OccurrenceOut | None:
    if task.recurrence is None:
        return None
    series = series_of(task)
    after = max(now, task.completed_through or now)
    upcoming = next_occurrence(series, after)
    return _occurrence_out(upcoming, task.reminder_offsets) if upcoming else None


def _first_remind_at(task: Any, upcoming: OccurrenceOut | None) -> datetime:
    """The task's top-level ``remind_at``: the earliest remind time of its next occurrence (a
    one-off task's only one); for a series that ended, of its last occurrence. Always the
    time of a reminder that exists, never one computed from a series start the rule skips."""
    offsets = list(task.reminder_offsets)
    if task.recurrence is None:
        return remind_at(task.due_at, offsets[0])
    if upcoming is not None:
        return upcoming.remind_at[0]
    # It ended: COUNT or UNTIL bounds it.
    last = deque(occurrences(series_of(task)), maxlen=1)
    return remind_at(last[0].due_at if last else task.due_at, offsets[0])


def _task_out(task: Any, reminder: ReminderOut | None, owner: Owner, now: datetime) -> TaskOut:
    """A task as the API shows it, from a `Task` or a row of `_TASK_WITH_REMINDER`."""
    offsets = list(task.reminder_offsets)
    upcoming = _next_occurrence_out(task, now)
    return TaskOut(
        id=task.id,
        owner=owner.name,
        title=task.title,
        notes=task.notes,
        due_at=task.due_at,
        time_zone=task.time_zone,
        recurrence=task.recurrence,
        reminders=offsets,
        remind_before_seconds=offsets[0],
        remind_at=_first_remind_at(task, upcoming),
        endpoint_id=task.endpoint_id,
        status=task.status,
        created_at=task.created_at,
        updated_at=task.updated_at,
        reminder=reminder,
        next_occurrence=upcoming,
    )


_PENDING = Reminder.state.in_(sorted(PENDING_STATES))
# Rows of the occurrences the task has now: a one-off task's due date; a recurring task's
# rows that were not cancelled (those were left behind by an edit, or ended by done or
# delete), from its series' start, and those of the occurrences it completed.
_CURRENT_OCCURRENCE = or_(
    and_(Task.recurrence.is_(None), Reminder.due_at == Task.due_at),
    and_(
        Task.recurrence.is_not(None),
        Reminder.due_at >= Task.due_at,
        or_(Reminder.state != "cancelled", Reminder.due_at <= Task.completed_through),
    ),
)
# The reminder a task shows: the next pending one by remind time, else the latest one of
# the occurrences it has now; never one of an occurrence it moved away from.
_SHOWN_REMINDER = (
    select(Reminder.message_id)
    .where(Reminder.task_id == Task.id, or_(_PENDING, _CURRENT_OCCURRENCE))
    .order_by(
        case((_PENDING, 0), else_=1),
        case((_PENDING, Reminder.remind_at), else_=None),
        Reminder.remind_at.desc(),
    )
    .limit(1)
    .correlate(Task)
    .scalar_subquery()
)
# A task with the reminder it shows, in one query (the listing's shape).
_TASK_WITH_REMINDER = select(
    Task.id,
    Task.title,
    Task.notes,
    Task.due_at,
    Task.time_zone,
    Task.local_start,
    Task.recurrence,
    Task.reminder_offsets,
    Task.completed_through,
    Task.next_unplanned_at,
    Task.endpoint_id,
    Task.status,
    Task.created_at,
    Task.updated_at,
    Reminder.state.label("r_state"),
    Reminder.kind.label("r_kind"),
    Reminder.due_at.label("r_due_at"),
    Reminder.offset_seconds.label("r_offset_seconds"),
    Reminder.remind_at.label("r_remind_at"),
    Reminder.message_id.label("r_message_id"),
    Reminder.sent_at.label("r_sent_at"),
    Reminder.attempts.label("r_attempts"),
    Reminder.late.label("r_late"),
    Reminder.last_error.label("r_last_error"),
    Reminder.cancelled_at.label("r_cancelled_at"),
    Reminder.reopened_at.label("r_reopened_at"),
).outerjoin(Reminder, Reminder.message_id == _SHOWN_REMINDER)


def _row_out(row: Row[*tuple[Any, ...]], owner: Owner, now: datetime) -> TaskOut:
    reminder = None
    if row.r_state is not None:
        reminder = ReminderOut(
            state=row.r_state,
            kind=row.r_kind,
            due_at=row.r_due_at,
            offset_seconds=row.r_offset_seconds,
            remind_at=row.r_remind_at,
            message_id=row.r_message_id,
            sent_at=row.r_sent_at,
            attempts=row.r_attempts,
            late=row.r_late,
            last_error=row.r_last_error,
            cancelled_at=row.r_cancelled_at,
            reopened_at=row.r_reopened_at,
        )
    return _task_out(row, reminder, owner, now)
