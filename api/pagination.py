"""Opaque cursors for keyset pagination: a (timestamp, id) key, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TypeVarTuple

from sqlalchemy import ColumnElement, Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute


class BadCursor(ValueError):
    """The ``cursor`` query parameter was not one this API handed out."""


def encode_cursor(due_at: datetime, task_id: uuid.UUID) -> str:
    raw = json.dumps([due_at.isoformat(), str(task_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises: BadCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        due_text, id_text = json.loads(raw)
        due_at = datetime.fromisoformat(due_text)
        if due_at.tzinfo is None:
            raise ValueError("naive")
        return due_at, uuid.UUID(id_text)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise BadCursor("cursor is not one this API returned") from None


Ts = TypeVarTuple("Ts")


def keyset(
    statement: Select[*Ts],
    at: InstrumentedAttribute[datetime] | ColumnElement[datetime],
    identity: InstrumentedAttribute[uuid.UUID],
    cursor: str | None,
    limit: int,
    *,
    newest_first: bool = False,
) -> Select[*Ts]:
    """``statement`` ordered by (``at``, ``identity``), after ``cursor``, with one row more
    than ``limit`` so the caller knows whether a next page exists (`next_cursor`).

    Raises:
        BadCursor: the cursor does not decode.
    """
    key = tuple_(at, identity)
    if cursor:
        bound = tuple_(*decode_cursor(cursor))
        statement = statement.where(key < bound if newest_first else key > bound)
    order = (at.desc(), identity.desc()) if newest_first else (at, identity)
    return statement.order_by(*order).limit(limit + 1)


def next_cursor(keys: Sequence[tuple[datetime, uuid.UUID]], limit: int) -> str | None:
    """The cursor of the page after ``limit`` items, given the (at, id) key of each row a
    `keyset` statement returned; None on the last page."""
    return encode_cursor(*keys[limit - 1]) if len(keys) > limit else None
