"""Identifiers: the deterministic message ID of an occurrence, and API tokens.

The message ID is the idempotency key of an occurrence everywhere (Dramatiq message,
reminder row, logs, the webhook's ``Idempotency-Key``, dead letters): any producer on any
run derives the same one from the task and its due date.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime

TOKEN_PREFIX = "rem_"
TOKEN_BYTES = 32


def message_id(task_id: uuid.UUID, due_at: datetime) -> uuid.UUID:
    """``uuid5(NAMESPACE_URL, "reminders:{task_id}:{due_at UTC, whole seconds}")``."""
    if due_at.tzinfo is None:
        raise ValueError("due_at must be timezone-aware")
    stamp = due_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return uuid.uuid5(uuid.NAMESPACE_URL, f"reminders:{task_id}:{stamp}")


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, URL-safe, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """What the database keeps of a token. SHA-256 suffices for 256-bit random secrets."""
    return hashlib.sha256(token.encode()).hexdigest()
