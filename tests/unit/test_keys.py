"""The deterministic message ID of an occurrence, and API tokens."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.planning.keys import (
    TOKEN_PREFIX,
    hash_token,
    legacy_message_id,
    message_id,
    new_token,
    snooze_message_id,
)

TASK_ID = uuid.UUID("0b7c3f3e-6a55-4c1e-9a57-3c1f2e0d4a10")
DUE = datetime(2030, 3, 14, 15, 9, 26, tzinfo=UTC)


def test_message_id_matches_the_documented_formula() -> None:
    expected = uuid.uuid5(uuid.NAMESPACE_URL, f"reminders:{TASK_ID}:2030-03-14T15:09:26Z:86400")

    assert message_id(TASK_ID, DUE, 86400) == expected


def test_each_offset_of_an_occurrence_has_its_own_message_id() -> None:
    assert message_id(TASK_ID, DUE, 3600) != message_id(TASK_ID, DUE, 86400)


def test_a_snooze_id_matches_the_documented_formula_and_differs_per_until() -> None:
    until = datetime(2030, 3, 14, 16, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=1)))
    expected = uuid.uuid5(
        uuid.NAMESPACE_URL, f"reminders:{TASK_ID}:2030-03-14T15:09:26Z:snooze:2030-03-14T15:00:00Z"
    )

    assert snooze_message_id(TASK_ID, DUE, until) == expected
    assert snooze_message_id(TASK_ID, DUE, until + timedelta(minutes=5)) != expected


def test_rows_made_before_offsets_keep_the_formula_they_were_made_with() -> None:
    expected = uuid.uuid5(uuid.NAMESPACE_URL, f"reminders:{TASK_ID}:2030-03-14T15:09:26Z")

    assert legacy_message_id(TASK_ID, DUE) == expected


def test_message_id_is_the_same_on_every_call() -> None:
    assert message_id(TASK_ID, DUE, 86400) == message_id(
        uuid.UUID(str(TASK_ID)), DUE.replace(), 86400
    )


def test_same_instant_in_different_offsets_gets_the_same_message_id() -> None:
    in_tokyo = DUE.astimezone(timezone(timedelta(hours=9)))
    in_new_york = DUE.astimezone(timezone(timedelta(hours=-5)))

    assert message_id(TASK_ID, in_tokyo, 86400) == message_id(TASK_ID, DUE, 86400)
    assert message_id(TASK_ID, in_new_york, 86400) == message_id(TASK_ID, DUE, 86400)


def test_message_id_uses_whole_seconds() -> None:
    assert message_id(TASK_ID, DUE.replace(microsecond=700_000), 86400) == message_id(
        TASK_ID, DUE, 86400
    )


def test_different_occurrences_get_different_message_ids() -> None:
    other_task = uuid.UUID("5d1e6a0c-2b1f-4c8e-8f3a-1a2b3c4d5e6f")

    assert message_id(TASK_ID, DUE, 86400) != message_id(TASK_ID, DUE + timedelta(seconds=1), 86400)
    assert message_id(TASK_ID, DUE, 86400) != message_id(other_task, DUE, 86400)


def test_message_id_of_a_naive_due_date_is_refused() -> None:
    with pytest.raises(ValueError):
        message_id(TASK_ID, datetime(2030, 3, 14, 15, 9, 26), 86400)


def test_tokens_carry_at_least_32_random_bytes() -> None:
    token = new_token()

    assert token.startswith(TOKEN_PREFIX)
    secret = token[len(TOKEN_PREFIX) :]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", secret)
    # URL-safe base64 without padding: 4 characters per 3 bytes.
    assert len(secret) * 3 // 4 >= 32


def test_every_token_is_different() -> None:
    tokens = {new_token() for _ in range(200)}

    assert len(tokens) == 200


def test_stored_token_hash_is_sha256_hex_of_the_token() -> None:
    token = new_token()

    hashed = hash_token(token)

    assert hashed == hashlib.sha256(token.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", hashed)
    assert token not in hashed
    assert hash_token(token) != hash_token(new_token())
