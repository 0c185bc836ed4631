"""The tables: users and their API tokens, tasks, and reminders (one row per occurrence
and offset, and one per snooze).

A reminder row exists for every (occurrence, offset) from the moment the task is created
or changed (state ``waiting``) — for a recurring task, for the occurrences within the
horizon, which the producer extends — so the producer's scan is an index range over
``remind_at`` of waiting rows and never an anti-join against the tasks table. The
database, not application code, enforces one reminder per (task, due date, offset).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.planning.rules import REMINDER_KINDS, REMINDER_STATES, TASK_STATUSES
from shared.store.db import UTCDateTime, utcnow

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token, kept only as its SHA-256 (tokens are 256-bit random, so no slow hash)."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class OpsSession(Base):
    """A signed-in ops page: the browser's cookie holds a random session ID, kept here only
    as its SHA-256 (like tokens). Signing out deletes the row; it ends by itself at
    ``expires_at``, and with the token it was opened with (revoked or deleted)."""

    __tablename__ = "ops_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_one_of("status", TASK_STATUSES), name="status"),
        CheckConstraint("length(title) BETWEEN 1 AND 200", name="title_length"),
        Index(
            "ix_tasks_owner_due",
            "owner_id",
            "due_at",
            "id",
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        # The producer's horizon fill: the recurring tasks whose rows run out soonest.
        Index(
            "ix_tasks_refill_at",
            "refill_at",
            postgresql_where=text("refill_at IS NOT NULL"),
            sqlite_where=text("refill_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(200))
    notes: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[datetime]  # a recurring task's first occurrence (DTSTART)
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    # due_at's local wall time in time_zone when it was set ("2027-03-22T09:00:00"): what a
    # recurring series repeats, whatever later tzdata says the zone's offset is.
    local_start: Mapped[str | None] = mapped_column(String(19))
    recurrence: Mapped[str | None] = mapped_column(String(500))  # an RRULE value, normalised
    reminder_offsets: Mapped[list[int]] = mapped_column(JSON)  # seconds before each occurrence
    status: Mapped[str] = mapped_column(String(8), default="open")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Deleted tasks are kept (hidden from the API) so their reminders stay an audit trail.
    deleted_at: Mapped[datetime | None]
    # A recurring series' rows (`shared.store.occurrences`): occurrences due up to
    # ``series_filled_until`` have theirs; the producer extends them from ``refill_at`` on,
    # resuming the rule's expansion at ``series_cursor`` (NULL: from the start). Both NULL
    # for a one-off task and for a series that ended or is done.
    series_filled_until: Mapped[datetime | None]
    refill_at: Mapped[datetime | None]
    series_cursor: Mapped[dict[str, object] | None] = mapped_column(JSON)
    # The series' first occurrence after its rows (not completed): where an open recurring
    # task is next due when no row of its is still to come. The listing sorts by it.
    next_unplanned_at: Mapped[datetime | None]
    # Occurrences due up to here were completed (POST /tasks/{id}/complete): never reopened.
    completed_through: Mapped[datetime | None]
    # The latest occurrence whose reminders history retention purged: never opened again.
    purged_through: Mapped[datetime | None]
    # Where its reminders go: one of the owner's endpoints, or (NULL, also when the endpoint
    # is deleted) the deployment's channel.
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("endpoints.id", ondelete="SET NULL")
    )


class Endpoint(Base):
    """A user's own webhook endpoint: a URL and a signing secret (`shared.delivery.signing`).

    Secrets are kept encrypted (`shared.delivery.secret_box`). After a rotation the previous secret
    keeps signing beside the new one until ``previous_secret_expires_at``. ``failing_since``
    is the first failed attempt since the last success; an endpoint failing for
    ``REMINDERS_ENDPOINT_DISABLE_AFTER`` is disabled (``enabled`` false, with a reason).
    ``max_concurrency`` and ``max_per_second`` are its delivery limits
    (`shared.broker.gate.Limits`); the database refuses limits that would stop
    deliveries for good, the API holds them to the ranges an owner may choose.
    """

    __tablename__ = "endpoints"
    __table_args__ = (
        CheckConstraint("max_concurrency >= 1", name="max_concurrency"),
        CheckConstraint("max_per_second IS NULL OR max_per_second > 0", name="max_per_second"),
        Index("ix_endpoints_owner_id_created_at", "owner_id", "created_at"),
        # The operators' view of unhealthy endpoints.
        Index(
            "ix_endpoints_failing_since",
            "failing_since",
            postgresql_where=text("failing_since IS NOT NULL"),
            sqlite_where=text("failing_since IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(500))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    disabled_at: Mapped[datetime | None]
    secret: Mapped[str] = mapped_column(Text)  # encrypted
    previous_secret: Mapped[str | None] = mapped_column(Text)  # encrypted
    previous_secret_expires_at: Mapped[datetime | None]
    failing_since: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_failure_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Requests in flight at once, across every worker process and host (the default is
    # shared.delivery.endpoints.DEFAULT_MAX_CONCURRENCY, which rows made before it got).
    max_concurrency: Mapped[int] = mapped_column(Integer, default=8, server_default=text("8"))
    max_per_second: Mapped[float | None] = mapped_column(Float)  # NULL: no rate limit


class EndpointAttempt(Base):
    """One delivery attempt to an endpoint (a reminder or a ``ping``), kept
    ``REMINDERS_ENDPOINT_ATTEMPTS_DAYS``: what the endpoint's owner sees."""

    __tablename__ = "endpoint_attempts"
    __table_args__ = (
        Index("ix_endpoint_attempts_endpoint_id_at", "endpoint_id", "at", "id"),
        Index("ix_endpoint_attempts_at", "at"),
        Index("ix_endpoint_attempts_message_id", "message_id"),  # a dead letter's requests
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(8))  # "reminder" or "ping"
    message_id: Mapped[str] = mapped_column(String(200))
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(500))


class Reminder(Base):
    """One reminder of one occurrence of a task, at one offset before it (``kind`` reminder),
    or a snooze of the occurrence (``kind`` snooze, no offset); ``message_id`` is derived
    from them (`shared.planning.keys`), and kept as given when the formula changed.

    The row is the occurrence's history as well as its state: a cancelled row made pending
    again (the task moved away and back, or was reopened) is the same row, so its message ID
    and the UNIQUE constraint still allow one reminder only, and it keeps when it was last
    cancelled and when it was reopened.
    """

    __tablename__ = "reminders"
    __table_args__ = (
        UniqueConstraint("task_id", "due_at", "offset_seconds"),
        CheckConstraint(_one_of("state", REMINDER_STATES), name="state"),
        CheckConstraint(_one_of("kind", REMINDER_KINDS), name="kind"),
        # The producer's two scans, each a range over a small partial index.
        Index(
            "ix_reminders_waiting_remind_at",
            "remind_at",
            postgresql_where=text("state = 'waiting'"),
            sqlite_where=text("state = 'waiting'"),
        ),
        Index(
            "ix_reminders_failed_at",
            "failed_at",
            "message_id",
            postgresql_where=text("state = 'failed'"),
            sqlite_where=text("state = 'failed'"),
        ),
        # History retention: final rows by when they were last changed.
        Index(
            "ix_reminders_final_updated_at",
            "updated_at",
            postgresql_where=text("state IN ('sent', 'cancelled', 'missed')"),
            sqlite_where=text("state IN ('sent', 'cancelled', 'missed')"),
        ),
        Index(
            "ix_reminders_queued_updated_at",
            "updated_at",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
    )

    message_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id"))
    due_at: Mapped[datetime]  # the occurrence
    offset_seconds: Mapped[int | None] = mapped_column(Integer)  # NULL for a snooze
    kind: Mapped[str] = mapped_column(String(8), default="reminder")
    remind_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10), default="waiting")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # The webhook body a failed attempt sent: later attempts send these bytes again (SPEC §4.8).
    body: Mapped[str | None] = mapped_column(Text)
    # Set when the occurrence becomes ``failed`` (dead-lettered); kept after the broker's
    # dead-letter entry expires. An operator's discard is recorded beside it.
    failed_at: Mapped[datetime | None]
    discarded_at: Mapped[datetime | None]
    discarded_by: Mapped[str | None] = mapped_column(String(100))
    # When ``remind_at`` was last set: the row created, reopened, or its lead time changed.
    # A reminder is owed from max(remind_at, planned_at), so one planned when its remind time
    # had already passed is due at once, not missed (see
    # `shared.planning.rules.admit_due_occurrence`).
    planned_at: Mapped[datetime] = mapped_column(default=utcnow)
    cancelled_at: Mapped[datetime | None]  # the last cancellation, kept when reopened
    reopened_at: Mapped[datetime | None]  # the last time a cancelled row became pending again
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OperatorAction(Base):
    """The audit trail of what operators did to dead letters: who, what, when."""

    __tablename__ = "operator_actions"
    __table_args__ = (
        Index("ix_operator_actions_at", "at"),
        # What became of a retried dead letter (the ops page): the actions on one message.
        Index("ix_operator_actions_message_id_at", "message_id", "at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    operator: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    detail: Mapped[str | None] = mapped_column(Text)


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` for ``POST /tasks``, per user, with the stored response.

    ``state`` is ``in_flight`` from the moment a request claims the key until its task and
    response commit together (``done``). Rows live until ``expires_at`` (24 h or more).
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class SecretKeyCanary(Base):
    """A known value encrypted with the deployment's ``REMINDERS_SECRET_KEY`` by the first
    process that started: every process decrypts it at start, so one whose key differs
    stops there (`shared.delivery.key_canary`). One row."""

    __tablename__ = "secret_key_canary"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    token: Mapped[str] = mapped_column(Text)  # encrypted
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
