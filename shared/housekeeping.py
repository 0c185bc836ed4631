"""Housekeeping the workers run on a schedule: expired idempotency keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from shared.db import unit_of_work
from shared.models import IdempotencyKey


def purge_expired_idempotency_keys(sessions: sessionmaker[Session], now: datetime) -> int:
    """Delete the idempotency keys whose lifetime is over; returns how many."""
    with unit_of_work(sessions) as session:
        result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
