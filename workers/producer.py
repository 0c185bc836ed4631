"""The producer: find the occurrences whose reminder is due and enqueue one message each.

It works from the database, not from which scheduler tick fired, so it may run any number
of times, from any number of schedulers, in any time zone, with the same result:

0. Extend the rows of recurring series whose ``refill_at`` has come, in batches of tasks
   locked ``FOR UPDATE SKIP LOCKED`` (`shared.store.occurrences.plan_reminders`): every reminder
   whose remind time is less than ``REMINDERS_HORIZON`` away exists as a ``waiting`` row
   (never the whole series). An (occurrence, offset) has one row (UNIQUE), so two
   schedulers cannot open it twice. After downtime the rows of the occurrences that came
   due meanwhile are opened as planned at their remind times: step 1's catch-up rule then
   sends the recent ones (late) and records the older ones ``missed``.
1. Claim ``waiting`` rows whose remind time is due (on the database server's clock, not this
   host's) or falls within the lookahead
   (``REMINDERS_LOOKAHEAD``, a little more than one scan interval) in batches (``FOR UPDATE
   SKIP LOCKED``: two schedulers split the work instead of doubling it), mark each
   ``queued`` (or ``missed`` when its catch-up window, from its due date or from when it was
   planned if later, is over), commit, then enqueue: a reminder not yet due as a delayed
   message with its remind time as ``eta``, so a worker releases it on time rather than at
   the next scan. The next batch is claimed
   while the current one is enqueued, so the database and Redis work side by side. A crash
   between commit and enqueue leaves ``queued`` rows without a message; step 3 finds them.
2. Run the broker's dead-worker maintenance, so messages held by a SIGKILLed worker go
   back on the queue once its heartbeat is ``heartbeat_timeout`` old.
3. Check rows ``queued`` for longer than ``requeue_after``: if the broker no longer holds
   their message (Redis flushed or restarted), enqueue it again; if it sits in the
   dead-letter queue (the failure could not be recorded), mark the row ``failed``.
   ``failed`` rows are never re-enqueued here: only an operator retries them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import and_, bindparam, case, literal_column, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.broker.gate import parked_message_ids
from shared.broker.queue import QUEUE_NAME, SCAN_QUEUE_NAME, SoonDue, message_for
from shared.broker.redis_broker import (
    dead_message_ids,
    enqueue_batch,
    interleave_owners,
    pending_message_ids,
    run_maintenance,
)
from shared.config import Settings
from shared.logs import get_logger
from shared.planning.recurrence import RecurrenceError
from shared.planning.rules import missed_before
from shared.store.db import database_clock, hot_transaction, unit_of_work
from shared.store.models import Reminder, Task
from shared.store.occurrences import plan_reminders

log = get_logger("producer")

LOST_MESSAGE_ERROR = "DeadLettered: the final error was not recorded"


@dataclass
class ScanResult:
    extended: int = 0  # recurring tasks whose rows were extended
    opened: int = 0  # reminder rows they gained
    enqueued: int = 0
    missed: int = 0
    requeued: int = 0
    repaired_failed: int = 0
    seconds: float = 0.0
    message_ids: list[str] = field(default_factory=list)


def _enqueue(
    broker: RedisBroker, claimed: list[SoonDue], result: ScanResult, now: datetime
) -> None:
    """Enqueue the claimed rows: due ones at once, the others delayed to their remind time;
    interleaved by owner, so one owner's thousands do not queue another's behind them."""
    enqueue_batch(broker, interleave_owners([message_for(row, now) for row in claimed]))
    result.message_ids.extend(str(row.message_id) for row in claimed)


# Claim a batch of due waiting rows and admit them (``admit_due_occurrence``) in SQL: the
# batch is a range of the partial index on waiting rows' remind_at; the rule then reads only
# the claimed rows. max(due_at, planned_at) < cutoff is written as two comparisons.
_DUE = (
    select(Reminder.message_id)
    # 'waiting' as a literal: the prepared statement's generic plan can then use the index.
    .where(
        Reminder.state == literal_column("'waiting'"),
        Reminder.remind_at <= bindparam("b_horizon"),
    )
    .order_by(Reminder.remind_at)
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True)
    .cte("due")
)
# The task's owner, for `interleave_owners`: a subquery, as SQLite's RETURNING may not name
# another table.
_OWNER = select(Task.owner_id).where(Task.id == Reminder.task_id).scalar_subquery()
# Its endpoint, if it names one: the message's `ENDPOINT` hint, the same way.
_ENDPOINT = select(Task.endpoint_id).where(Task.id == Reminder.task_id).scalar_subquery()
_CLAIM_DUE = (
    update(Reminder)
    .where(Reminder.message_id == _DUE.c.message_id)
    .values(
        state=case(
            (
                and_(
                    Reminder.due_at < bindparam("b_cutoff"),
                    Reminder.planned_at < bindparam("b_cutoff"),
                ),
                "missed",
            ),
            else_="queued",
        ),
        late=and_(Reminder.due_at <= bindparam("b_now"), Reminder.planned_at < Reminder.due_at),
        updated_at=bindparam("b_now"),
    )
    .returning(
        Reminder.task_id,
        Reminder.due_at,
        Reminder.message_id,
        Reminder.state,
        Reminder.remind_at,
        _OWNER,
        _ENDPOINT,
    )
)


@dataclass(frozen=True)
class _Batch:
    queued: list[SoonDue]  # to enqueue
    missed: list[SoonDue]  # catch-up window over: marked missed, not sent

    def __len__(self) -> int:
        return len(self.queued) + len(self.missed)


def _claim_due(sessions: sessionmaker[Session], settings: Settings, now: datetime) -> _Batch:
    """Claim and commit one batch of due waiting rows."""
    params = {
        "b_now": now,
        "b_horizon": now + timedelta(seconds=settings.lookahead_seconds),
        "b_cutoff": missed_before(now, settings.catchup_seconds),
        "b_limit": settings.scan_batch_size,
    }
    with hot_transaction(sessions.kw["bind"]) as rows:
        claimed_rows = rows(_CLAIM_DUE, params)
    batch = _Batch(queued=[], missed=[])
    for task_id, due_at, message_id, state, remind_at, owner, endpoint in claimed_rows:
        # astimezone: the driver's rows are in the session's zone; messages carry UTC.
        claimed = SoonDue(
            task_id, due_at.astimezone(UTC), message_id, remind_at.astimezone(UTC), owner, endpoint
        )
        (batch.queued if state == "queued" else batch.missed).append(claimed)
    return batch


def _enqueue_due(
    sessions: sessionmaker[Session],
    broker: RedisBroker,
    settings: Settings,
    now: datetime,
    result: ScanResult,
) -> None:
    """Claim and enqueue batches until none is due, claiming the next while enqueueing."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="claim") as claimer:
        next_batch = claimer.submit(_claim_due, sessions, settings, now)
        while batch := next_batch.result():
            next_batch = claimer.submit(_claim_due, sessions, settings, now)
            _enqueue(broker, batch.queued, result, now)
            result.enqueued += len(batch.queued)
            result.missed += len(batch.missed)
            for row in batch.missed:
                log.warning(
                    "reminder.missed",
                    task_id=str(row.task_id),
                    message_id=str(row.message_id),
                    due_at=row.due_at.isoformat(),
                )


def _requeue_lost(
    sessions: sessionmaker[Session],
    broker: RedisBroker,
    settings: Settings,
    now: datetime,
    result: ScanResult,
) -> None:
    cutoff = now - timedelta(seconds=settings.requeue_after_seconds)
    held: set[str] | None = None
    dead: set[str] | None = None
    while True:
        with unit_of_work(sessions) as session:
            rows = session.execute(
                select(Reminder, Task.owner_id)
                .join(Task, Task.id == Reminder.task_id)
                .where(Reminder.state == "queued", Reminder.updated_at < cutoff)
                .order_by(Reminder.updated_at)
                .limit(settings.scan_batch_size)
                .with_for_update(skip_locked=True, of=Reminder)
            ).all()
            if not rows:
                return
            if held is None or dead is None:  # read the broker once, only when needed
                # Parked first: a message woken meanwhile is then found on its queue.
                held = parked_message_ids(broker.client, broker.namespace)
                held |= pending_message_ids(broker, QUEUE_NAME)
                dead = dead_message_ids(broker, QUEUE_NAME)
            lost = []
            for row, owner in rows:
                key = str(row.message_id)
                row.updated_at = now  # checked now; looked at again after requeue_after
                if key in held:
                    continue
                if key in dead:
                    row.state = "failed"
                    row.failed_at = now
                    row.last_error = row.last_error or LOST_MESSAGE_ERROR
                    result.repaired_failed += 1
                    continue
                lost.append(SoonDue(row.task_id, row.due_at, row.message_id, row.remind_at, owner))
        _enqueue(broker, lost, result, now)
        result.requeued += len(lost)
        for row_claim in lost:
            log.warning(
                "reminder.requeued",
                task_id=str(row_claim.task_id),
                message_id=str(row_claim.message_id),
            )


REFILL_BATCH = 200  # recurring tasks extended per transaction


def _extend_series(
    sessions: sessionmaker[Session], settings: Settings, now: datetime, result: ScanResult
) -> None:
    """Extend the rows of every recurring task whose ``refill_at`` has come (step 0)."""
    while True:
        with unit_of_work(sessions) as session:
            tasks = session.scalars(
                select(Task)
                .where(Task.refill_at <= now)
                .order_by(Task.refill_at)
                .limit(REFILL_BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            # One flush for the batch: its updates and inserts go out together at the end,
            # not before each task's queries.
            with session.no_autoflush:
                result.opened += _extend_tasks(session, tasks, settings, now)
            result.extended += len(tasks)
        if len(tasks) < REFILL_BATCH:
            return


def _extend_tasks(
    session: Session, tasks: Sequence[Task], settings: Settings, now: datetime
) -> int:
    """Extend each task's rows (`plan_reminders`); returns how many rows were opened."""
    opened = 0
    for task in tasks:
        try:
            planned = plan_reminders(session, task, now, settings.horizon_seconds, edited=False)
        except RecurrenceError as error:
            # Stored rules were validated; a zone this machine's tzdata lacks is not.
            # Left alone (its rows so far stay) rather than retried on every scan.
            log.error("series.unplannable", task_id=str(task.id), error=str(error))
            task.refill_at = None
            continue
        opened += len(planned.opened)
    return opened


def scan_due_tasks(
    sessions: sessionmaker[Session],
    broker: RedisBroker,
    settings: Settings,
    clock: Callable[[], datetime] | None = None,
) -> ScanResult:
    """One producer run; safe to run concurrently and repeatedly (see the module docstring).

    ``clock``: what is due is judged by its time; by default the database server's
    (`database_clock`), so the host it runs on, whatever its own clock says, enqueues at once
    only what is due and delays the rest to its remind time.
    """
    started = time.perf_counter()
    now = (clock or database_clock(sessions.kw["bind"]))()
    result = ScanResult()
    _extend_series(sessions, settings, now, result)
    _enqueue_due(sessions, broker, settings, now, result)
    run_maintenance(broker, QUEUE_NAME, SCAN_QUEUE_NAME)
    _requeue_lost(sessions, broker, settings, now, result)
    result.seconds = time.perf_counter() - started
    log.info(
        "scan.finished",
        extended=result.extended,
        opened=result.opened,
        enqueued=result.enqueued,
        requeued=result.requeued,
        missed=result.missed,
        repaired_failed=result.repaired_failed,
        duration_ms=round(result.seconds * 1000, 1),
    )
    return result
