"""Identifiers: the deterministic message ID of a reminder, and API tokens.

The message ID is the idempotency key of a reminder everywhere (Dramatiq message, reminder
row, logs, the webhook's ``Idempotency-Key``, dead letters): any producer on any run derives
the same one from the task, the occurrence's due date and the offset (or the snooze time).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime

TOKEN_PREFIX = "rem_"
TOKEN_BYTES = 32


def _stamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("times in a message ID must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message_id(task_id: uuid.UUID, due_at: datetime, offset_seconds: int) -> uuid.UUID:
    """``uuid5(NAMESPACE_URL, "reminders:{task_id}:{due_at}:{offset_seconds}")``, the
    reminder of one occurrence (``due_at`` in UTC, whole seconds) at one offset.

    Rows made before the offset was part of the key keep the ID they were given
    (`legacy_message_id`): a row's ID is stored, never derived again.
    """
    return uuid.uuid5(uuid.NAMESPACE_URL, f"reminders:{task_id}:{_stamp(due_at)}:{offset_seconds}")


def snooze_message_id(task_id: uuid.UUID, due_at: datetime, until: datetime) -> uuid.UUID:
    """``uuid5(NAMESPACE_URL, "reminders:{task_id}:{due_at}:snooze:{until}")``: a snooze of
    the occurrence ``due_at`` until ``until`` (both UTC, whole seconds)."""
    key = f"reminders:{task_id}:{_stamp(due_at)}:snooze:{_stamp(until)}"
    return uuid.uuid5(uuid.NAMESPACE_URL, key)


def legacy_message_id(task_id: uuid.UUID, due_at: datetime) -> uuid.UUID:
    """The ID of a reminder made when a task had one reminder per due date:
    ``uuid5(NAMESPACE_URL, "reminders:{task_id}:{due_at}")``. Kept by those rows."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"reminders:{task_id}:{_stamp(due_at)}")


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, URL-safe, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """What the database keeps of a token. SHA-256 suffices for 256-bit random secrets."""
    return hashlib.sha256(token.encode()).hexdigest()
