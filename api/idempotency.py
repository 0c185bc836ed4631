"""``Idempotency-Key`` for ``POST /tasks`` (IETF draft "The Idempotency-Key HTTP Header Field").

- same key, same body: the stored response again (same status, same task), no second task;
- same key, another body: 422;
- same key while the first request is still in flight: 409;
- keys are per user and kept ``KEY_LIFETIME`` (24 h), then purged (``shared.housekeeping``).

A request first *claims* its key in a transaction of its own, so a concurrent duplicate
sees it in flight; the task and the stored response then commit together
(`store_response` runs inside the task's transaction), so a replay can never return a
task that does not exist, nor a crash leave a task without its stored response. A claim
whose request died (no response within ``IN_FLIGHT_TIMEOUT``) may be taken over.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.db import unit_of_work, utcnow
from shared.models import IdempotencyKey

KEY_LIFETIME = timedelta(hours=24)
IN_FLIGHT_TIMEOUT = timedelta(seconds=60)
# The draft makes the key a Structured Field string: printable ASCII, no quotes needed here.
KEY_SHAPE = re.compile(r"^[\x21-\x7e]{1,255}$")


class BadKey(ValueError):
    """The header is not 1-255 printable ASCII characters."""


@dataclass(frozen=True)
class Claimed:
    """This request owns the key: go ahead, then `store_response` in the same transaction."""

    owner_id: uuid.UUID
    key: str


@dataclass(frozen=True)
class Replay:
    status: int
    body: str
    location: str | None


@dataclass(frozen=True)
class Mismatch:
    """The key was used with another request body."""


@dataclass(frozen=True)
class InFlight:
    """The first request with this key has not finished."""


Claim = Claimed | Replay | Mismatch | InFlight


def fingerprint(method: str, path: str, body: Any) -> str:
    """What "the same request" means: method, path and the JSON body, key order ignored."""
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(
    sessions: sessionmaker[Session], owner_id: uuid.UUID, key: str, request_hash: str
) -> Claim:
    """Claim ``key`` for this request, or say what to answer instead.

    Raises:
        BadKey: the key is empty, too long or not printable ASCII.
    """
    if not KEY_SHAPE.match(key):
        raise BadKey("Idempotency-Key must be 1-255 printable ASCII characters")
    for _ in range(2):  # a second pass after clearing an expired or abandoned claim
        now = utcnow()
        try:
            with unit_of_work(sessions) as session:
                session.add(
                    IdempotencyKey(
                        owner_id=owner_id,
                        key=key,
                        request_hash=request_hash,
                        state="in_flight",
                        created_at=now,
                        expires_at=now + KEY_LIFETIME,
                    )
                )
            return Claimed(owner_id, key)
        except IntegrityError:
            pass
        with unit_of_work(sessions) as session:
            row = session.get(IdempotencyKey, (owner_id, key))
            if row is None:
                continue  # purged in between: claim again
            abandoned = row.state == "in_flight" and row.created_at < now - IN_FLIGHT_TIMEOUT
            if row.expires_at <= now or abandoned:
                session.delete(row)
                continue
            if row.request_hash != request_hash:
                return Mismatch()
            if row.state == "in_flight":
                return InFlight()
            return Replay(int(row.response_status or 200), row.response_body or "", row.location)
    return InFlight()


def store_response(
    session: Session, claimed: Claimed, status: int, body: str, location: str | None
) -> None:
    """Record the response inside the transaction that creates the task."""
    row = session.get(IdempotencyKey, (claimed.owner_id, claimed.key))
    if row is None:  # the claim was taken over after IN_FLIGHT_TIMEOUT: take it back
        now = utcnow()
        row = IdempotencyKey(
            owner_id=claimed.owner_id,
            key=claimed.key,
            request_hash="",
            created_at=now,
            expires_at=now + KEY_LIFETIME,
        )
        session.add(row)
    row.state = "done"
    row.response_status = status
    row.response_body = body
    row.location = location


def release(sessions: sessionmaker[Session], claimed: Claimed) -> None:
    """Give the key back when the request failed, so the client may retry with it."""
    with unit_of_work(sessions) as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.owner_id == claimed.owner_id,
                IdempotencyKey.key == claimed.key,
                IdempotencyKey.state == "in_flight",
            )
        )
