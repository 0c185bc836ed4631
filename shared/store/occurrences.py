"""Keeping a task's reminder rows in step with the task, inside the caller's transaction.

Every change of a task that affects its reminders goes through `plan_reminders`: it expands
the task's occurrences (`shared.planning.recurrence`: a one-off task has one, a recurring one every
instance of its rule within the horizon) and, for each (occurrence, offset), keeps the row
that exists, opens the one that is missing (``waiting``) and cancels the pending rows that
no longer match. Rows that reached a final state (``sent``, ``failed``, ``missed``) are
never touched: they are the audit trail, and the UNIQUE (task_id, due_at, offset_seconds)
constraint keeps an unchanged (occurrence, offset) from being reminded twice. A cancelled
row that becomes current again through an edit (the task moved away and back) is reopened
in place — same row, same message ID — keeping its ``cancelled_at`` beside ``reopened_at``.

``planned_at`` records when a row's remind time was set: the producer's catch-up rule starts
from it. A row opened by a user's change is planned now (a remind time already past is sent
at once); a row the producer opens while extending a series' horizon is planned at its remind
time if that has passed (the series owed it then: after downtime the catch-up rule decides
between late and missed, never a burst of stale reminders).

A recurring task's rows cover the occurrences due up to ``series_filled_until``: every
reminder whose remind time is less than the horizon away exists as a row. The producer calls
`extend_series` for tasks whose ``refill_at`` has come; it resumes the rule's expansion at
``series_cursor`` (the last occurrence already past), and re-derives the pending rows after
it, so a time zone whose rules changed (a tzdata update) moves them to their new instants.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.planning.keys import message_id
from shared.planning.recurrence import (
    Occurrence,
    Series,
    occurrences,
    parse_rule,
    resolve,
    time_zone,
)
from shared.planning.rules import PENDING_STATES, remind_at
from shared.store.models import Reminder, Task


def series_of(task: Any) -> Series:
    """The task's occurrences as a `Series` (its rule was validated when it was stored).

    A recurring task repeats the local wall time of its start (``local_start``), so its start
    instant is derived again with the zone's current rules: after a tzdata update that moves
    the zone's offset, "09:00 Europe/Paris" stays 09:00 local. A one-off task's due date is
    the instant the user gave.
    """
    start = task.due_at
    if task.recurrence and task.local_start:
        start = resolve(datetime.fromisoformat(task.local_start), time_zone(task.time_zone))
    return Series(
        start=start,
        time_zone=task.time_zone,
        rule=parse_rule(task.recurrence) if task.recurrence else None,
    )


def local_start(due_at: datetime, zone_name: str) -> str:
    """The local wall time of ``due_at`` in the zone, as stored in ``tasks.local_start``."""
    return due_at.astimezone(time_zone(zone_name)).replace(tzinfo=None).isoformat()


def reminder_values(
    task_id: uuid.UUID, due_at: datetime, offset_seconds: int, now: datetime, planned_at: datetime
) -> dict[str, Any]:
    """The column values of a new reminder row (state ``waiting``)."""
    return {
        "message_id": message_id(task_id, due_at, offset_seconds),
        "task_id": task_id,
        "due_at": due_at,
        "offset_seconds": offset_seconds,
        "kind": "reminder",
        "remind_at": remind_at(due_at, offset_seconds),
        "state": "waiting",
        "attempts": 0,
        "late": False,
        "planned_at": planned_at,
        "created_at": now,
        "updated_at": now,
    }


@dataclass(frozen=True)
class Planned:
    """What `plan_reminders` did: the rows it opened or reopened (``waiting``), and how many
    pending rows it cancelled."""

    opened: list[Reminder]
    cancelled: int


def _cursor(occurrence: Occurrence) -> dict[str, object]:
    return {
        "due_at": occurrence.due_at.isoformat(),
        "wall": occurrence.wall.isoformat(),
        "index": occurrence.index,
    }


def _resume_point(task: Task) -> Occurrence | None:
    cursor = task.series_cursor
    if not cursor:
        return None
    due_at = datetime.fromisoformat(str(cursor["due_at"])).astimezone(UTC)
    return Occurrence(
        due_at=due_at,
        local_due_at=due_at.astimezone(time_zone(task.time_zone)),
        wall=datetime.fromisoformat(str(cursor["wall"])),
        index=int(str(cursor["index"])),
    )


def plan_reminders(
    session: Session, task: Task, now: datetime, horizon_seconds: int, *, edited: bool = True
) -> Planned:
    """Bring the task's reminder rows in step with its occurrences and offsets (see the
    module docstring). The caller holds the task's row lock (or created it).

    ``edited``: a user's change (create, edit, reopen): cancelled rows that match again are
    reopened, and new rows are opened for the occurrences to come, planned now. Otherwise
    (the producer extending the horizon) every occurrence after the cursor gets its rows,
    planned at their remind time if it has passed. Either way the expansion resumes at the
    task's cursor when it has one (the service clears it when the series itself changes).
    """
    if task.status != "open" or task.deleted_at is not None:
        cancelled = cancel_pending(session, task, now)
        task.series_filled_until = task.refill_at = task.series_cursor = None
        task.next_unplanned_at = None
        return Planned(opened=[], cancelled=cancelled)
    series = series_of(task)
    offsets = sorted(set(task.reminder_offsets), reverse=True)
    # Occurrences up to the cursor are settled (past, their rows sent or on their way): only
    # what comes after it is planned again. A change of the series itself resets the cursor.
    resume = _resume_point(task)
    # With a cursor, every row that matters comes after it: one query serves both the
    # pending rows and the existing ones (the producer's steady extension).
    after_cursor = _rows_after(session, task, resume) if resume is not None else None
    pending = (
        [row for row in after_cursor if row.state in PENDING_STATES]
        if after_cursor is not None
        else _pending_rows(session, task)
    )
    purged = task.purged_through
    if series.rule is None:
        expected = [o for o in occurrences(series) if purged is None or o.due_at > purged]
        upper = None
    else:
        # Up to the horizon, and at least to the latest pending row: each is judged against
        # the rule (a shorter REMINDERS_HORIZON since it was planned must not cancel it). A
        # user's change also reaches the latest cancelled row to come: one the task wants again
        # (done, then open; moved away and back) is reopened now, however far ahead, since
        # the producer's extension never reopens a cancelled row.
        latest = max((row.due_at for row in pending), default=now)
        if edited:
            latest = max(latest, _latest_cancelled(session, task, now) or latest)
        upper = max(now + timedelta(seconds=horizon_seconds + max(offsets)), latest)
        after = None if resume is not None else _lower_bound(task, pending, now, edited)
        done = max((t for t in (task.completed_through, purged) if t is not None), default=None)
        if done is not None and (after is None or after <= done):
            after = done + timedelta(seconds=1)
        expected = list(occurrences(series, after=after, until=upper, resume=resume))
    wanted = {(o.due_at, offset) for o in expected for offset in offsets}
    existing = (
        {(row.due_at, row.offset_seconds): row for row in after_cursor}
        if after_cursor is not None
        else _rows(session, task, {due for due, _ in wanted})
    )
    opened: list[Reminder] = []
    # A user's change opens reminders for the occurrences to come only: an overdue pending
    # reminder the rule still has is kept, but the occurrences between it and now are not
    # made up (they would all be sent at once). The producer's extension opens every
    # occurrence after its cursor; the catch-up rule decides which are still worth sending.
    opens_past = series.rule is None or not edited
    for due_at, offset in sorted(wanted):
        row = existing.get((due_at, offset))
        if not (opens_past or due_at > now):
            continue
        if row is None:
            when = remind_at(due_at, offset)
            planned_at = now if edited else min(now, when)
            row = Reminder(**reminder_values(task.id, due_at, offset, now, planned_at))
            session.add(row)
            opened.append(row)
        elif row.state == "cancelled" and edited:
            row.state = "waiting"
            row.planned_at = now
            row.reopened_at = now
            row.updated_at = now
            opened.append(row)
    stale = [row for row in pending if (row.due_at, row.offset_seconds) not in wanted]
    if edited and resume is not None:
        # Occurrences up to the cursor are settled, but a user's change of offsets still
        # applies to their reminders not yet sent (the series is the same: it has a cursor).
        stale += [
            row
            for row in _pending_rows(session, task, through=resume.due_at)
            if row.offset_seconds not in offsets
        ]
    for row in stale:
        row.state = "cancelled"
        row.cancelled_at = now
        row.updated_at = now
    if upper is not None:
        _advance(task, series, expected, upper, now, horizon_seconds)
    return Planned(opened=opened, cancelled=len(stale))


def _lower_bound(task: Task, pending: list[Reminder], now: datetime, edited: bool) -> datetime:
    """Where a series with no cursor is planned from: its earliest pending occurrence (an
    overdue reminder still to send keeps its row if the rule still has it), or now; for the
    producer also right after the rows it last made, so occurrences that came due while it
    was down get rows (and the catch-up rule)."""
    earliest = min((row.due_at for row in pending), default=now)
    if not edited and task.series_filled_until is not None:
        earliest = min(earliest, task.series_filled_until + timedelta(seconds=1))
    return min(now, earliest)


def _advance(
    task: Task,
    series: Series,
    expected: list[Occurrence],
    upper: datetime,
    now: datetime,
    horizon_seconds: int,
) -> None:
    """Record how far the series' rows reach, where to resume, and when to extend them."""
    past = [o for o in expected if o.due_at < now]
    if past:
        task.series_cursor = _cursor(past[-1])
    last = expected[-1] if expected else _resume_point(task)
    after = max(upper, task.completed_through or upper) + timedelta(seconds=1)
    beyond = next(iter(occurrences(series, after=after, limit=1, resume=last)), None)
    task.next_unplanned_at = beyond.due_at if beyond is not None else None
    if beyond is None:  # COUNT or UNTIL reached: every row exists
        task.series_filled_until = task.refill_at = None
        return
    task.series_filled_until = upper
    # Extended when half the horizon has gone by: a scan that is late or fails a few times
    # still leaves every reminder materialised before its remind time.
    task.refill_at = now + timedelta(seconds=horizon_seconds // 2)


def _pending_rows(session: Session, task: Task, through: datetime | None = None) -> list[Reminder]:
    """The task's pending reminder rows (snoozes aside), due up to ``through`` if given."""
    query = select(Reminder).where(
        Reminder.task_id == task.id,
        Reminder.kind == "reminder",
        Reminder.state.in_(sorted(PENDING_STATES)),
    )
    if through is not None:
        query = query.where(Reminder.due_at <= through)
    return list(session.scalars(query))


def _latest_cancelled(session: Session, task: Task, now: datetime) -> datetime | None:
    """The due date of the task's latest cancelled reminder (snoozes aside) still to come."""
    return session.scalar(
        select(func.max(Reminder.due_at)).where(
            Reminder.task_id == task.id,
            Reminder.kind == "reminder",
            Reminder.state == "cancelled",
            Reminder.due_at > now,
        )
    )


def _rows_after(session: Session, task: Task, resume: Occurrence) -> list[Reminder]:
    """The task's reminder rows (snoozes aside) of the occurrences after ``resume``."""
    return list(
        session.scalars(
            select(Reminder).where(
                Reminder.task_id == task.id,
                Reminder.kind == "reminder",
                Reminder.due_at > resume.due_at,
            )
        )
    )


def _rows(
    session: Session, task: Task, due_dates: Iterable[datetime]
) -> dict[tuple[datetime, int | None], Reminder]:
    """The task's reminder rows for these occurrences, by (due_at, offset_seconds)."""
    wanted = sorted(set(due_dates))
    if not wanted:
        return {}
    rows = session.scalars(
        select(Reminder).where(
            Reminder.task_id == task.id,
            Reminder.kind == "reminder",
            Reminder.due_at >= wanted[0],
            Reminder.due_at <= wanted[-1],
        )
    )
    return {(row.due_at, row.offset_seconds): row for row in rows}


def cancel_pending(session: Session, task: Task, now: datetime) -> int:
    """Cancel every pending reminder of the task (snoozes too); returns how many.

    A message already in the queue for a cancelled row finds it cancelled and does nothing.
    """
    result = session.execute(
        update(Reminder)
        .where(Reminder.task_id == task.id, Reminder.state.in_(PENDING_STATES))
        .values(state="cancelled", cancelled_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
