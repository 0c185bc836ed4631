"""Opaque cursors for keyset pagination: a (timestamp, id) key, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime


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
