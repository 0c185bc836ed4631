"""Housekeeping the workers run on a schedule: expired idempotency keys, old reminder history.

Recurring series multiply reminder rows; the history keeps them ``REMINDERS_HISTORY_DAYS``.
A row is purged only once it is final (``sent``, ``cancelled``, ``missed``; a ``failed``
one waits for an operator), was last changed and is for an occurrence due longer ago than
that — longer than a dead letter lives, so no message that could still arrive loses its
row. The task remembers the latest occurrence purged (``purged_through``): planning never
opens a reminder for it again, so a purged reminder cannot be sent twice.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.planning.rules import FINAL_STATES
from shared.store.db import unit_of_work
from shared.store.models import IdempotencyKey, Reminder, Task

HISTORY_BATCH = 500  # rows deleted per transaction: short locks, small WAL bursts
HISTORY_BATCHES_PER_RUN = 200  # at most 100,000 rows an hour; the rest next time


def purge_expired_idempotency_keys(sessions: sessionmaker[Session], now: datetime) -> int:
    """Delete the idempotency keys whose lifetime is over; returns how many."""
    with unit_of_work(sessions) as session:
        result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def purge_history(
    sessions: sessionmaker[Session],
    now: datetime,
    history_days: int,
    batch: int = HISTORY_BATCH,
    batches: int = HISTORY_BATCHES_PER_RUN,
) -> int:
    """Delete final reminder rows older than ``history_days``, ``batch`` rows per
    transaction, at most ``batches`` transactions; returns how many rows went."""
    cutoff = now - timedelta(days=history_days)
    purged = 0
    for _ in range(batches):
        with unit_of_work(sessions) as session:
            old = session.execute(
                select(Reminder.message_id, Reminder.task_id, Reminder.due_at)
                .where(
                    Reminder.state.in_(sorted(FINAL_STATES)),
                    Reminder.updated_at < cutoff,
                    Reminder.due_at < cutoff,
                )
                .order_by(Reminder.updated_at)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            if not old:
                return purged
            latest: dict[uuid.UUID, datetime] = {}
            for _, task_id, due_at in old:
                latest[task_id] = max(latest.get(task_id, due_at), due_at)
            for task_id, due_at in latest.items():
                session.execute(
                    update(Task)
                    .where(
                        Task.id == task_id,
                        (Task.purged_through.is_(None)) | (Task.purged_through < due_at),
                    )
                    .values(purged_through=due_at)
                )
            session.execute(
                delete(Reminder).where(Reminder.message_id.in_([row[0] for row in old]))
            )
            purged += len(old)
        if len(old) < batch:
            return purged
    return purged
