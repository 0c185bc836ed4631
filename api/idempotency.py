"""``Idempotency-Key`` for ``POST /tasks`` (IETF draft "The Idempotency-Key HTTP Header Field").

- same key, same body: the stored response again (same status, same task), no second task,
  marked ``Idempotent-Replayed: true``. It is the answer as it was given: if the task was
  deleted since, its ``Location`` now answers 404 (the draft's rule: replay the stored
  response, do not re-run the request);
- same key, another body: 422;
- same key while the first request is still in flight: 409;
- keys are per user and kept ``KEY_LIFETIME`` (24 h), then purged (``shared.store.housekeeping``).

The draft makes the field a Structured Field string (RFC 9651), ``Idempotency-Key: "abc"``;
many clients send the key bare, ``Idempotency-Key: abc``. Both name the key ``abc``
(`parse_key`). Anything else is refused, notably several ``Idempotency-Key`` lines, which
the server joins into one value with commas.

A request first *claims* its key in a transaction of its own, so a concurrent duplicate
sees it in flight; the task and the stored response then commit together
(`store_response` runs inside the task's transaction), so a replay can never return a
task that does not exist, nor a crash leave a task without its stored response. A claim
whose request died (no response within ``IN_FLIGHT_TIMEOUT``) may be taken over. A request
that fails gives its claim back (`release`); when it failed because the database is
unreachable, that is done as soon as the database answers again, so a client retrying
after the 503 is not held off with 409s until the claim counts as abandoned.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import http_sf
from sqlalchemy import delete
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.schemas import IDEMPOTENCY_KEY, PATTERN_SENTENCES
from shared.logs import get_logger
from shared.store.db import database_unreachable, unit_of_work, utcnow
from shared.store.models import IdempotencyKey

log = get_logger("api.idempotency")

KEY_LIFETIME = timedelta(hours=24)
IN_FLIGHT_TIMEOUT = timedelta(seconds=60)
# How often a claim is given back while the database cannot be reached (see `release`).
RELEASE_RETRY_SECONDS = 0.5
HEADER = "Idempotency-Key"
# On a replayed response: it is the stored first answer, not a new one.
REPLAYED_HEADER = "Idempotent-Replayed"
# What the field may hold, bare key or string: the expression the document's pattern is.
KEY_FIELD = re.compile(IDEMPOTENCY_KEY)
KEY_FIELD_SENTENCE = PATTERN_SENTENCES[IDEMPOTENCY_KEY]


class BadKey(ValueError):
    """The ``Idempotency-Key`` field is not one key: the request is malformed (400)."""


def parse_key(field_value: str) -> str:
    """The key an ``Idempotency-Key`` field value names: ``"abc"`` and ``abc`` are one key.

    ``field_value`` is the field as the WSGI server hands it over: several header lines
    arrive joined with commas, and are refused like any list.

    Raises:
        BadKey: the value is neither one Structured Field string (parameters, which the
            draft defines none of, are ignored) nor one bare key, or the string is empty.
    """
    if not field_value.isascii():  # neither form may hold anything else
        raise BadKey(f"{HEADER} must hold ASCII characters only")
    if not KEY_FIELD.fullmatch(field_value):
        raise BadKey(f"{HEADER} {KEY_FIELD_SENTENCE}")
    value = field_value.strip(" \t")
    if not value.startswith('"'):
        return value
    # A string the expression admits is one RFC 9651 item: http-sf undoes its escapes.
    item = http_sf.parse(value.encode("ascii"), tltype="item")
    assert isinstance(item, tuple)  # (value, parameters)
    return str(item[0])


@dataclass(frozen=True)
class Claimed:
    """This request owns the key: go ahead, then `store_response` in the same transaction."""

    owner_id: uuid.UUID
    key: str
    claimed_at: datetime  # the row's created_at: this claim, not a later one of the same key


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
    sessions: sessionmaker[Session], owner_id: uuid.UUID, field_value: str, request_hash: str
) -> Claim:
    """Claim the key ``field_value`` names (see `parse_key`) for this request, or say what
    to answer instead.

    Raises:
        BadKey: ``field_value`` does not name one key (see `parse_key`).
    """
    key = parse_key(field_value)
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
            return Claimed(owner_id, key, now)
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
    """Give the key back when the request failed, so the client may retry with it.

    If the database cannot be reached (most likely what failed the request), the process's
    one releaser thread gives it back as soon as the database answers, trying every
    ``RELEASE_RETRY_SECONDS`` until the claim would count as abandoned anyway.

    Raises:
        DBAPIError: the database refused the deletion (not unreachable).
    """
    try:
        _delete_claim(sessions, claimed)
    except DBAPIError as exc:
        if not database_unreachable(exc):
            raise
        _releaser().put((sessions, claimed))


@cache
def _releaser() -> queue.SimpleQueue[tuple[sessionmaker[Session], Claimed]]:
    """The queue of claims to give back once the database answers, and its one thread.

    One thread per process, however many requests met the outage: it tries the oldest claim
    every ``RELEASE_RETRY_SECONDS`` and, once the database answers, gives back the rest.
    """
    pending: queue.SimpleQueue[tuple[sessionmaker[Session], Claimed]] = queue.SimpleQueue()
    threading.Thread(
        target=_release_when_reachable, args=(pending,), name="idempotency-release", daemon=True
    ).start()
    return pending


def _release_when_reachable(
    pending: queue.SimpleQueue[tuple[sessionmaker[Session], Claimed]],
) -> None:
    while True:
        sessions, claimed = pending.get()
        while utcnow() < claimed.claimed_at + IN_FLIGHT_TIMEOUT:
            try:
                _delete_claim(sessions, claimed)
                break
            except DBAPIError as exc:
                if not database_unreachable(exc):
                    log.warning("idempotency.release_failed", error_type=type(exc).__name__)
                    break  # the claim is taken over once abandoned
            time.sleep(RELEASE_RETRY_SECONDS)


def _delete_claim(sessions: sessionmaker[Session], claimed: Claimed) -> None:
    # Only this request's claim, still in flight: never a response stored since, nor the
    # claim of a later request that took over the key.
    with unit_of_work(sessions) as session:
        session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.owner_id == claimed.owner_id,
                IdempotencyKey.key == claimed.key,
                IdempotencyKey.state == "in_flight",
                IdempotencyKey.created_at == claimed.claimed_at,
            )
        )
