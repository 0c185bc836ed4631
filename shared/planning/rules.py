"""The reminder rules: which occurrence is due, how its state moves, what is worth a retry.

Plain functions over plain values, shared by the API, the producer, the actor and the
CLI, and tested without a database.

State machine of one occurrence (a task's reminder for one due date)::

    waiting --scan--> queued --deliver--> sent
       |                 |  \\--permanent error or retries exhausted--> failed
       |                 |                                   (operator retry: back to queued)
       |--scan, catch-up window over (below)--> missed
       \\--task done, deleted or rescheduled (from waiting or queued)--> cancelled
    cancelled --task moved back to that due date, or reopened--> waiting (same row)

A reminder planned (row created or reopened, lead time changed) when its remind time had
already passed is due at once. The catch-up window runs from the due date, or from when the
reminder was planned if that came later, so ``missed`` only ever means that the system was
not running for longer than the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

TASK_STATUSES = ("open", "done")
REMINDER_STATES = ("waiting", "queued", "sent", "failed", "missed", "cancelled")
REMINDER_KINDS = ("reminder", "snooze")
PENDING_STATES = frozenset({"waiting", "queued"})
# States a reminder never leaves on its own, purged from the history after a while
# (``failed`` waits for an operator and is kept).
FINAL_STATES = frozenset({"sent", "cancelled", "missed"})
DELIVERABLE_STATES = PENDING_STATES

# Webhook answers that mean "try again later" (RFC 9110: timeout, rate limit) besides 5xx.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429})


def normalize_due_at(value: datetime) -> datetime:
    """A due date as stored: UTC, whole seconds (the message ID is built from whole seconds).

    Raises:
        ValueError: for a naive datetime, whose instant is unknown.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("due date must carry a UTC offset")
    return value.astimezone(UTC).replace(microsecond=0)


def remind_at(due_at: datetime, remind_before_seconds: int) -> datetime:
    """When the reminder of an occurrence becomes due."""
    return due_at - timedelta(seconds=remind_before_seconds)


@dataclass(frozen=True)
class Admission:
    """What the producer does with a waiting occurrence whose remind time has passed."""

    state: str  # "queued" or "missed"
    late: bool


def admit_due_occurrence(
    due_at: datetime, planned_at: datetime, now: datetime, catchup_seconds: int
) -> Admission:
    """Decide whether a due occurrence is still worth sending.

    ``planned_at`` is when the reminder's remind time was set (row created, reopened, or its
    lead time changed). The catch-up window runs from max(due_at, planned_at): an occurrence
    whose window ended more than ``catchup_seconds`` ago (the system was down) is recorded
    as missed rather than sent hours too late. Otherwise it is sent, and marked late if its
    due date passed while it waited (planned before its due date, sent after). A task
    created or moved to a due date already past is therefore sent at once, neither missed
    nor late.
    """
    cutoff = missed_before(now, catchup_seconds)
    late = due_at <= now and planned_at < due_at
    if due_at < cutoff and planned_at < cutoff:
        return Admission(state="missed", late=late)
    return Admission(state="queued", late=late)


def missed_before(now: datetime, catchup_seconds: int) -> datetime:
    """Catch-up windows (see `admit_due_occurrence`) that began before this have ended.

    The producer applies the rule to a whole batch in one SQL statement with this cut-off.
    """
    return now - timedelta(seconds=catchup_seconds)


def webhook_status_is_transient(status: int) -> bool:
    """5xx, 408 and 429 are worth retrying; any other non-2xx answer will not change."""
    return status >= 500 or status in TRANSIENT_HTTP_STATUSES


def describe_error(exc: BaseException) -> str:
    """The error as recorded on a reminder: its type and message, never task content."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}"[:500] if message else type(exc).__name__


def error_type_of(recorded_error: str | None) -> str:
    """The error type of a recorded error (see `describe_error`): the part before the colon."""
    if not recorded_error:
        return "unknown"
    return recorded_error.split(":", 1)[0].strip() or "unknown"
