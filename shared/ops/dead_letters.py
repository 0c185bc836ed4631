"""The operators' desk: inspect, retry and discard dead letters, and see queue depths.

The database is the record of every failed occurrence (its final error, when, how many
attempts); the broker's dead-letter entry adds the message as Dramatiq kept it, with the
traceback of the attempt before the last, until ``REMINDERS_DEAD_LETTER_TTL`` expires it.
A listing therefore comes from the database and says whether the broker still holds the
entry. Entries only the broker knows are listed too: a body no worker could decode
(``UndecodableMessage``, identified by its broker id) and a message no reminder row matches
(``UnmatchedMessage``). There is nothing to send for those: they can be discarded, not
retried. Every action is recorded in ``operator_actions`` (who, what, when) and logged.

Retrying stays exactly-once: the occurrence goes back to ``queued`` with a fresh message
(same message ID, retries reset); if it was meanwhile sent, nothing is enqueued, and a
message that races a delivery is suppressed by the delivery transaction's re-check.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Select, false, or_, select, tuple_
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from shared.broker.queue import QUEUE_NAME, SCAN_QUEUE_NAME, SEND_REMINDER, reminder_message
from shared.broker.redis_broker import (
    UNDECODABLE,
    DeadLetter,
    QueueDepth,
    dead_letters,
    queue_depth,
    remove_dead_letter,
)
from shared.logs import get_logger
from shared.planning.rules import error_type_of
from shared.store.accounts import USER_NAME
from shared.store.db import unit_of_work, utcnow
from shared.store.models import Endpoint, EndpointAttempt, OperatorAction, Reminder, Task, User

log = get_logger("ops")

UNMATCHED = "UnmatchedMessage"  # a decodable dead letter no reminder row has the ID of
_BROKER_IDS = uuid.UUID("6f1d7f1e-3c1b-4c9e-9a57-5c0a4b0e8d21")  # names non-UUID broker ids


@dataclass(frozen=True)
class DeadLetterSearch:
    """What an operator searched for: a task ID or message ID, or an owner's user name.

    The text is read both ways (a user may be named like a UUID). Text that can be neither
    matches nothing; it never falls back to matching everything, so an action taken on a
    search's matches can only touch what the search lists.
    """

    text: str

    @property
    def id(self) -> uuid.UUID | None:
        try:
            return uuid.UUID(self.text)
        except ValueError:
            return None

    @property
    def owner(self) -> str | None:
        return self.text if USER_NAME.match(self.text) else None

    @property
    def matches_nothing(self) -> bool:
        return self.id is None and self.owner is None

    @classmethod
    def of(cls, text: str | None) -> DeadLetterSearch | None:
        """The search for what was typed (surrounding spaces dropped); None for no text."""
        text = (text or "").strip()
        return cls(text) if text else None


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operator means: by final error type, by age, and a search."""

    error_type: str | None = None
    failed_before: datetime | None = None
    failed_after: datetime | None = None
    search: DeadLetterSearch | None = None

    def matches(self, view: DeadLetterView) -> bool:
        """Whether an entry the database does not know passes the filter. Such an entry
        has no owner on record: a search matches it by ID only."""
        failed_at = view.failed_at
        return (
            failed_at is not None
            and (not self.error_type or view.error_type == self.error_type)
            and (self.failed_before is None or failed_at < self.failed_before)
            and (self.failed_after is None or failed_at >= self.failed_after)
            and (
                self.search is None
                or (
                    self.search.id is not None and self.search.id in (view.message_id, view.task_id)
                )
            )
        )

    @classmethod
    def by_age(
        cls,
        error_type: str | None = None,
        older_than_seconds: int | None = None,
        newer_than_seconds: int | None = None,
        search: str | None = None,
    ) -> DeadLetterFilter:
        """A filter by error type, by how long ago the occurrence failed, and by what an
        operator searched for (`DeadLetterSearch`)."""
        now = utcnow()
        return cls(
            search=DeadLetterSearch.of(search),
            error_type=error_type,
            failed_before=None
            if older_than_seconds is None
            else now - timedelta(seconds=older_than_seconds),
            failed_after=None
            if newer_than_seconds is None
            else now - timedelta(seconds=newer_than_seconds),
        )


@dataclass(frozen=True)
class DeadLetterView:
    """One dead letter. ``broker_id`` is set for an entry only the broker knows (its
    ``message_id`` is then the message's ID, or for an undecodable body the broker id as a
    UUID); such an entry is not ``retryable``."""

    message_id: uuid.UUID
    task_id: uuid.UUID | None
    due_at: datetime | None
    actor: str
    queue: str
    failed_at: datetime | None
    attempts: int
    error_type: str
    error: str
    in_broker: bool
    traceback: str | None = None
    broker_id: str | None = None
    retryable: bool = True

    @property
    def identifier(self) -> str:
        """What operators type to name it: an undecodable message has only its broker id."""
        if self.broker_id is not None and self.message_id == as_uuid(self.broker_id):
            return self.broker_id
        return str(self.message_id)


@dataclass(frozen=True)
class RetryingView:
    message_id: uuid.UUID
    task_id: uuid.UUID
    last_attempt_at: datetime
    attempts: int
    error: str


@dataclass(frozen=True)
class ActionView:
    at: datetime
    operator: str
    action: str
    message_id: uuid.UUID | None
    detail: str | None


@dataclass(frozen=True)
class RetriedView:
    """An occurrence an operator retried, and what became of it since."""

    message_id: uuid.UUID
    task_id: uuid.UUID
    retried_at: datetime
    operator: str
    state: str  # "sent", "queued" (on its way), "failed" (failed again), ...
    sent_at: datetime | None
    error: str | None  # the new final error when it failed again


@dataclass(frozen=True)
class DeadLetterContext:
    """Who and what a dead letter is about, beside its own fields (no task content)."""

    owner: str
    due_at: datetime
    offset_seconds: int | None
    kind: str
    endpoint_id: uuid.UUID | None
    endpoint_url: str | None
    # (at, status code, duration ms, error) of each request made to the endpoint
    endpoint_attempts: list[tuple[datetime, int | None, int, str | None]]


class RetryOutcome(StrEnum):
    REQUEUED = "requeued"
    ALREADY_SENT = "already_sent"  # sent meanwhile: nothing enqueued, the entry is removed
    NOT_FOUND = "not_found"  # not a (live) dead letter
    NOT_RETRYABLE = "not_retryable"  # undecodable or unmatched: nothing to send, discard it


def as_uuid(identifier: str) -> uuid.UUID:
    """The UUID an identifier stands for: itself if it is one (any spelling), else a name."""
    try:
        return uuid.UUID(identifier)
    except ValueError:
        return uuid.uuid5(_BROKER_IDS, identifier)


def _first_uuid(args: Iterable[object]) -> uuid.UUID | None:
    for arg in args:
        try:
            return uuid.UUID(str(arg))
        except ValueError:
            return None
    return None


def _due_at(args: tuple[object, ...]) -> datetime | None:
    try:
        due_at = datetime.fromisoformat(str(args[1]))
    except (IndexError, ValueError):
        return None
    return due_at if due_at.tzinfo else None


def _identifier(entry: DeadLetter) -> uuid.UUID:
    """How operators name a broker entry: its message ID, or an undecodable one's broker id."""
    return as_uuid(entry.message_id if entry.message_id is not None else entry.broker_id)


def _broker_only_view(entry: DeadLetter) -> DeadLetterView:
    """The view of an entry no reminder row backs."""
    failed_at = datetime.fromtimestamp(entry.failed_at_ms / 1000, UTC)
    message = entry.message
    if message is None:
        return DeadLetterView(
            message_id=_identifier(entry),
            task_id=None,
            due_at=None,
            actor="",
            queue=QUEUE_NAME,
            failed_at=failed_at,
            attempts=0,
            error_type=UNDECODABLE,
            error=entry.decode_error or UNDECODABLE,
            in_broker=True,
            broker_id=entry.broker_id,
            retryable=False,
        )
    retries = message.options.get("retries", 0)
    return DeadLetterView(
        message_id=_identifier(entry),
        task_id=_first_uuid(message.args),
        due_at=_due_at(message.args),
        actor=message.actor_name,
        queue=QUEUE_NAME,
        failed_at=failed_at,
        attempts=retries + 1 if isinstance(retries, int) else 1,
        error_type=UNMATCHED,
        error=f"{UNMATCHED}: no reminder has this message ID",
        in_broker=True,
        traceback=entry.traceback,
        broker_id=entry.broker_id,
        retryable=False,
    )


def _key(view: DeadLetterView) -> tuple[datetime, uuid.UUID]:
    """Listing order (newest failure first) and cursor key."""
    return (view.failed_at or datetime.min.replace(tzinfo=UTC), view.message_id)


def _failed(query_filter: DeadLetterFilter) -> Select[Reminder]:
    statement = select(Reminder).where(Reminder.state == "failed", Reminder.discarded_at.is_(None))
    if query_filter.error_type:
        statement = statement.where(
            or_(
                Reminder.last_error == query_filter.error_type,
                Reminder.last_error.startswith(f"{query_filter.error_type}:", autoescape=True),
            )
        )
    if query_filter.failed_before:
        statement = statement.where(Reminder.failed_at < query_filter.failed_before)
    if query_filter.failed_after:
        statement = statement.where(Reminder.failed_at >= query_filter.failed_after)
    if query_filter.search is not None:
        statement = statement.where(_searched(query_filter.search))
    return statement


def _searched(search: DeadLetterSearch) -> ColumnElement[bool]:
    """The rows a search names: by message or task ID, or the tasks of the owner so named;
    none when the text can be neither."""
    named: list[ColumnElement[bool]] = []
    if search.id is not None:
        named += [Reminder.message_id == search.id, Reminder.task_id == search.id]
    if search.owner is not None:
        owned = select(Task.id).join(User, User.id == Task.owner_id)
        named.append(Reminder.task_id.in_(owned.where(User.name == search.owner)))
    return or_(*named) if named else false()


class DeadLetterDesk:
    """The operator use cases over one database and one broker."""

    def __init__(self, sessions: sessionmaker[Session], broker: RedisBroker) -> None:
        self.sessions = sessions
        self.broker = broker

    # -- reading -------------------------------------------------------------------------

    def _entries(self) -> dict[str, DeadLetter]:
        entries: dict[str, DeadLetter] = {}
        for entry in dead_letters(self.broker, QUEUE_NAME):  # newest first: keep the newest
            if entry.message_id is not None:
                entries.setdefault(entry.message_id, entry)
        return entries

    def _broker_only(self, entries: Iterable[DeadLetter] | None = None) -> list[DeadLetterView]:
        """Entries no reminder row backs (undecodable, or no row has their message ID),
        one per message ID, newest first."""
        if entries is None:
            entries = dead_letters(self.broker, QUEUE_NAME)
        views: dict[uuid.UUID, DeadLetterView] = {}
        for entry in entries:  # newest first: keep the newest
            view = _broker_only_view(entry)
            views.setdefault(view.message_id, view)
        claimed = [view.message_id for view in views.values() if view.error_type == UNMATCHED]
        if claimed:
            with unit_of_work(self.sessions) as session:
                known = set(
                    session.scalars(
                        select(Reminder.message_id).where(Reminder.message_id.in_(claimed))
                    )
                )
            for message_id in known:
                del views[message_id]
        return list(views.values())

    def _view(self, row: Reminder, entry: DeadLetter | None, *, traceback: bool) -> DeadLetterView:
        return DeadLetterView(
            message_id=row.message_id,
            task_id=row.task_id,
            due_at=row.due_at,
            actor=entry.message.actor_name if entry and entry.message else SEND_REMINDER,
            queue=QUEUE_NAME,
            failed_at=row.failed_at,
            attempts=row.attempts,
            error_type=error_type_of(row.last_error),
            error=row.last_error or "",
            in_broker=entry is not None,
            traceback=entry.traceback if (traceback and entry) else None,
        )

    def page(
        self,
        query_filter: DeadLetterFilter,
        *,
        limit: int = 50,
        after: tuple[datetime, uuid.UUID] | None = None,
    ) -> tuple[list[DeadLetterView], tuple[datetime, uuid.UUID] | None]:
        """One page, newest failure first; returns the items and the key after the last."""
        statement = _failed(query_filter)
        if after is not None:
            statement = statement.where(
                tuple_(Reminder.failed_at, Reminder.message_id) < tuple_(after[0], after[1])
            )
        statement = statement.order_by(Reminder.failed_at.desc(), Reminder.message_id.desc())
        with unit_of_work(self.sessions) as session:
            rows = list(session.scalars(statement.limit(limit + 1)))
        broker_entries = dead_letters(self.broker, QUEUE_NAME)
        entries: dict[str, DeadLetter] = {}
        for entry in broker_entries:  # newest first: keep the newest
            if entry.message_id is not None:
                entries.setdefault(entry.message_id, entry)
        items = [self._view(row, entries.get(str(row.message_id)), traceback=False) for row in rows]
        items += [
            view
            for view in self._broker_only(broker_entries)
            if query_filter.matches(view) and (after is None or _key(view) < after)
        ]
        items.sort(key=_key, reverse=True)
        more = len(items) > limit
        items = items[:limit]
        last = items[-1] if items else None
        next_key = (last.failed_at, last.message_id) if (more and last and last.failed_at) else None
        return items, next_key

    def owners(self, task_ids: Iterable[uuid.UUID | None]) -> dict[uuid.UUID, str]:
        """The user names owning these tasks (one query), so a listing can say whose each
        dead letter is; a task that no longer exists is left out."""
        wanted = {task_id for task_id in task_ids if task_id is not None}
        if not wanted:
            return {}
        with unit_of_work(self.sessions) as session:
            found = session.execute(
                select(Task.id, User.name)
                .join(User, User.id == Task.owner_id)
                .where(Task.id.in_(wanted))
            )
            return {task_id: name for task_id, name in found}

    def error_types(self) -> dict[str, int]:
        """Live dead letters grouped by final error type, with counts."""
        with unit_of_work(self.sessions) as session:
            errors = session.scalars(
                _failed(DeadLetterFilter()).with_only_columns(Reminder.last_error)
            )
            counts: dict[str, int] = {}
            for error in errors:
                name = error_type_of(error)
                counts[name] = counts.get(name, 0) + 1
        for view in self._broker_only():
            counts[view.error_type] = counts.get(view.error_type, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def show(self, message_id: uuid.UUID) -> DeadLetterView | None:
        """One dead letter, by message ID (for an undecodable body: its broker id as a UUID)."""
        with unit_of_work(self.sessions) as session:
            row = session.scalars(
                _failed(DeadLetterFilter()).where(Reminder.message_id == message_id)
            ).one_or_none()
        if row is None:
            return self._broker_only_entry(message_id)
        return self._view(row, self._entries().get(str(message_id)), traceback=True)

    def starting_with(self, digits: str, limit: int = 10) -> list[DeadLetterView]:
        """Live dead letters whose identifier (`DeadLetterView.identifier`) starts with the
        hex ``digits`` (dashes ignored), at most ``limit``, in identifier order: how an
        operator names one by a prefix, as git names a commit.

        Reminder rows are found through their primary key: a prefix of a UUID's hex digits
        is the range of UUIDs from the prefix padded with ``0`` to it padded with ``f``.
        """
        digits = digits.replace("-", "").lower()
        low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
        with unit_of_work(self.sessions) as session:
            rows = list(
                session.scalars(
                    _failed(DeadLetterFilter())
                    .where(Reminder.message_id.between(low, high))
                    .order_by(Reminder.message_id)
                    .limit(limit)
                )
            )
        broker_entries = dead_letters(self.broker, QUEUE_NAME)
        entries = {e.message_id: e for e in reversed(broker_entries) if e.message_id}
        found = [self._view(row, entries.get(str(row.message_id)), traceback=False) for row in rows]
        found += [
            view
            for view in self._broker_only(broker_entries)
            if view.identifier.replace("-", "").lower().startswith(digits)
        ]
        return sorted(found, key=lambda view: view.identifier)[:limit]

    def _broker_only_entry(self, message_id: uuid.UUID) -> DeadLetterView | None:
        return next((v for v in self._broker_only() if v.message_id == message_id), None)

    def retrying(self, limit: int = 20) -> list[RetryingView]:
        """Recent failures still being retried: queued occurrences with a failed attempt.

        An occurrence an operator has just retried is not one, until an attempt fails
        again: its error is the old one (`recently_retried` shows it instead).
        """
        just_retried = (
            select(OperatorAction.id)
            .where(
                OperatorAction.message_id == Reminder.message_id,
                OperatorAction.action == "retry",
                OperatorAction.at >= Reminder.updated_at,
            )
            .exists()
        )
        with unit_of_work(self.sessions) as session:
            rows = session.scalars(
                select(Reminder)
                .where(Reminder.state == "queued", Reminder.attempts > 0, ~just_retried)
                .order_by(Reminder.updated_at.desc())
                .limit(limit)
            )
            return [
                RetryingView(
                    row.message_id, row.task_id, row.updated_at, row.attempts, row.last_error or ""
                )
                for row in rows
            ]

    def recently_retried(self, limit: int = 20) -> list[RetriedView]:
        """What became of the occurrences operators retried in the last hour, newest first:
        sent, still on their way, or failed again (with the new error)."""
        since = utcnow() - timedelta(hours=1)
        with unit_of_work(self.sessions) as session:
            rows = session.execute(
                select(
                    OperatorAction.message_id,
                    Reminder.task_id,
                    OperatorAction.at,
                    OperatorAction.operator,
                    Reminder.state,
                    Reminder.sent_at,
                    Reminder.last_error,
                )
                .join(Reminder, Reminder.message_id == OperatorAction.message_id)
                .where(
                    OperatorAction.action == "retry",
                    OperatorAction.detail == RetryOutcome.REQUEUED.value,
                    OperatorAction.at >= since,
                )
                .order_by(OperatorAction.at.desc())
                .limit(limit)
            ).all()
        return [
            RetriedView(
                message_id=row.message_id,
                task_id=row.task_id,
                retried_at=row.at,
                operator=row.operator,
                state=row.state,
                sent_at=row.sent_at,
                error=row.last_error if row.state == "failed" else None,
            )
            for row in rows
        ]

    def context(self, message_id: uuid.UUID) -> DeadLetterContext | None:
        """What an operator needs around one occurrence: whose, which occurrence and
        offset, where it was going and each endpoint attempt. Never the task's content."""
        with unit_of_work(self.sessions) as session:
            found = session.execute(
                select(
                    User.name,
                    Reminder.due_at,
                    Reminder.offset_seconds,
                    Reminder.kind,
                    Task.endpoint_id,
                    Endpoint.url,
                )
                .join(Task, Task.id == Reminder.task_id)
                .join(User, User.id == Task.owner_id)
                .outerjoin(Endpoint, Endpoint.id == Task.endpoint_id)
                .where(Reminder.message_id == message_id)
            ).one_or_none()
            if found is None:
                return None
            attempts = session.execute(
                select(
                    EndpointAttempt.at,
                    EndpointAttempt.status_code,
                    EndpointAttempt.duration_ms,
                    EndpointAttempt.error,
                )
                .where(EndpointAttempt.message_id == str(message_id))
                .order_by(EndpointAttempt.at)
            ).all()
        return DeadLetterContext(
            owner=found.name,
            due_at=found.due_at,
            offset_seconds=found.offset_seconds,
            kind=found.kind,
            endpoint_id=found.endpoint_id,
            endpoint_url=found.url,
            endpoint_attempts=[
                (row.at, row.status_code, row.duration_ms, row.error) for row in attempts
            ],
        )

    def queues(self) -> list[QueueDepth]:
        return [queue_depth(self.broker, name) for name in (QUEUE_NAME, SCAN_QUEUE_NAME)]

    def recent_actions(self, limit: int = 20) -> list[ActionView]:
        with unit_of_work(self.sessions) as session:
            rows = session.scalars(
                select(OperatorAction).order_by(OperatorAction.at.desc()).limit(limit)
            )
            return [
                ActionView(row.at, row.operator, row.action, row.message_id, row.detail)
                for row in rows
            ]

    # -- acting --------------------------------------------------------------------------

    def _remove_entries(self, message_id: uuid.UUID) -> None:
        for entry in dead_letters(self.broker, QUEUE_NAME):
            if _identifier(entry) == message_id:
                remove_dead_letter(self.broker, QUEUE_NAME, entry.broker_id)

    def _record(
        self,
        session: Session,
        operator: str,
        action: str,
        message_id: uuid.UUID | None,
        detail: str,
    ) -> None:
        session.add(
            OperatorAction(
                id=uuid.uuid4(),
                at=utcnow(),
                operator=operator,
                action=action,
                message_id=message_id,
                detail=detail,
            )
        )
        log.info(
            f"ops.{action}",
            operator=operator,
            message_id=str(message_id) if message_id else None,
            detail=detail,
        )

    def retry(self, message_id: uuid.UUID, operator: str) -> RetryOutcome:
        """Send a dead-lettered occurrence again, with its retries reset."""
        now = utcnow()
        outcome: RetryOutcome | None
        with unit_of_work(self.sessions) as session:
            row = session.scalars(
                select(Reminder).where(Reminder.message_id == message_id).with_for_update()
            ).one_or_none()
            if row is None:
                outcome = None  # looked for in the broker once this transaction is over
            else:
                if row.state == "sent":
                    outcome = RetryOutcome.ALREADY_SENT
                elif row.state == "failed" and row.discarded_at is None:
                    outcome = RetryOutcome.REQUEUED
                    row.state = "queued"
                    row.failed_at = None
                    row.updated_at = now
                else:
                    return RetryOutcome.NOT_FOUND
                self._record(session, operator, "retry", message_id, outcome.value)
                task_id, due_at = row.task_id, row.due_at
        if outcome is None:
            # Never inside the transaction above: `_broker_only` opens one of its own, which
            # on SQLite would wait for that one's write lock until the busy timeout.
            if self._broker_only_entry(message_id) is not None:
                return RetryOutcome.NOT_RETRYABLE
            return RetryOutcome.NOT_FOUND
        if outcome is RetryOutcome.REQUEUED:
            # After the commit: a crash here leaves a queued row the producer re-enqueues.
            self.broker.enqueue(reminder_message(task_id, due_at, message_id))
        self._remove_entries(message_id)
        return outcome

    def retry_matching(
        self, query_filter: DeadLetterFilter, operator: str, *, dry_run: bool
    ) -> list[uuid.UUID]:
        """Retry every live dead letter matching the filter; ``dry_run`` only lists them."""
        with unit_of_work(self.sessions) as session:
            ids = list(
                session.scalars(
                    _failed(query_filter)
                    .with_only_columns(Reminder.message_id)
                    .order_by(Reminder.failed_at, Reminder.message_id)
                )
            )
        if dry_run:
            return ids
        retried = [mid for mid in ids if self.retry(mid, operator) is RetryOutcome.REQUEUED]
        with unit_of_work(self.sessions) as session:
            self._record(session, operator, "bulk_retry", None, f"{len(retried)} requeued")
        return retried

    def matching_ids(self, query_filter: DeadLetterFilter) -> list[uuid.UUID]:
        """Every live dead letter the filter matches, oldest failure first: what a bulk
        action by filter would touch (its dry run)."""
        with unit_of_work(self.sessions) as session:
            ids = list(
                session.scalars(
                    _failed(query_filter)
                    .with_only_columns(Reminder.message_id)
                    .order_by(Reminder.failed_at, Reminder.message_id)
                )
            )
        return ids + [view.message_id for view in self._broker_only() if query_filter.matches(view)]

    def discard(self, message_id: uuid.UUID, operator: str) -> bool:
        """Drop a dead letter: the occurrence stays ``failed``, marked discarded (who, when).

        An entry only the broker knows is deleted from the broker.
        """
        with unit_of_work(self.sessions) as session:
            row = session.scalars(
                _failed(DeadLetterFilter())
                .where(Reminder.message_id == message_id)
                .with_for_update()
            ).one_or_none()
            if row is not None:
                row.discarded_at = utcnow()
                row.discarded_by = operator
                row.updated_at = row.discarded_at
                self._record(session, operator, "discard", message_id, row.last_error or "")
        if row is None:  # after the transaction, as in `retry`
            return self._discard_broker_only(message_id, operator)
        self._remove_entries(message_id)
        return True

    def _discard_broker_only(self, message_id: uuid.UUID, operator: str) -> bool:
        view = self._broker_only_entry(message_id)
        if view is None:
            return False
        self._remove_entries(message_id)
        with unit_of_work(self.sessions) as session:
            detail = f"{view.error} (broker id {view.broker_id})"
            self._record(session, operator, "discard", message_id, detail)
        return True

    def discard_all(self, operator: str) -> int:
        with unit_of_work(self.sessions) as session:
            ids = list(
                session.scalars(_failed(DeadLetterFilter()).with_only_columns(Reminder.message_id))
            )
        ids += [view.message_id for view in self._broker_only()]
        return sum(1 for message_id in ids if self.discard(message_id, operator))
