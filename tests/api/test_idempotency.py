"""Idempotency-Key on POST /tasks: replay, conflicting body, in flight, expiry (SPEC §6).

The field is a Structured Field string (the IETF draft's ``Idempotency-Key: "abc"``); the
bare key many clients send (``abc``) names the same key. Several header lines, which the
server joins with commas, and values that are neither are a 400 problem.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import hypothesis
import psycopg
import pytest
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from api.idempotency import KEY_FIELD, BadKey, parse_key
from shared.store.db import make_session_factory, unit_of_work
from shared.store.housekeeping import purge_expired_idempotency_keys
from shared.store.models import IdempotencyKey, Task
from tests.conftest import ApiHarness

BODY = {"title": "file taxes", "due_at": "2031-04-15T09:00:00+02:00"}


def task_count(api: ApiHarness) -> int:
    with unit_of_work(make_session_factory(api.engine)) as session:
        return int(session.scalar(select(func.count()).select_from(Task)) or 0)


def post(api: ApiHarness, headers: dict[str, str], key: str, body: dict[str, object] = BODY):
    return api.client.post("/tasks", json=body, headers={**headers, "Idempotency-Key": key})


def stored_keys(api: ApiHarness) -> list[str]:
    with unit_of_work(make_session_factory(api.engine)) as session:
        return list(session.scalars(select(IdempotencyKey.key)))


def test_same_key_and_body_replay_the_first_response_without_a_second_task(api: ApiHarness) -> None:
    alice = api.account("alice")
    first = post(api, alice.headers, "k-1")
    reordered = {"due_at": BODY["due_at"], "title": BODY["title"]}  # same JSON, other key order
    second = post(api, alice.headers, "k-1", reordered)

    assert first.status_code == second.status_code == 201
    assert second.json == first.json
    assert second.headers["Location"] == first.headers["Location"]
    assert task_count(api) == 1


def test_same_key_with_another_body_is_422(api: ApiHarness) -> None:
    alice = api.account("alice")
    post(api, alice.headers, "k-1")

    other = post(api, alice.headers, "k-1", {**BODY, "title": "something else"})

    assert other.status_code == 422
    assert other.content_type == "application/problem+json"
    assert "Idempotency-Key" in other.json["detail"]
    assert task_count(api) == 1


def test_keys_are_per_user(api: ApiHarness) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    mine = post(api, alice.headers, "shared-key")
    theirs = post(api, bob.headers, "shared-key")

    assert theirs.status_code == 201
    assert theirs.json["id"] != mine.json["id"] and theirs.json["owner"] == "bob"
    assert task_count(api) == 2


def test_same_key_while_the_first_is_in_flight_is_409(api: ApiHarness) -> None:
    """Hold the first request inside its transaction with a table lock; send the second."""
    alice = api.account("alice")
    query = parse_qs(urlparse(api.settings.database_url).query)
    schema = query["options"][0].split("=", 1)[1]
    plain = api.settings.database_url.split("?")[0].replace("postgresql+psycopg", "postgresql")
    results: dict[str, int] = {}
    with psycopg.connect(plain) as blocker:
        blocker.execute(f'LOCK TABLE "{schema}".tasks IN ACCESS EXCLUSIVE MODE')
        first = threading.Thread(
            target=lambda: results.update(first=post(api, alice.headers, "k-1").status_code)
        )
        first.start()
        sessions = make_session_factory(api.engine)

        def claimed() -> bool:
            with unit_of_work(sessions) as session:
                return session.get(IdempotencyKey, (alice.id, "k-1")) is not None

        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not claimed() and datetime.now(UTC) < deadline:
            threading.Event().wait(0.05)
        second = post(api, alice.headers, "k-1")
        blocker.rollback()  # release the lock: the first request finishes
    first.join(timeout=10)

    assert second.status_code == 409
    assert second.headers["Retry-After"] == "1"
    assert results["first"] == 201
    assert post(api, alice.headers, "k-1").status_code == 201  # now a replay
    assert task_count(api) == 1


def test_keys_expire_after_their_lifetime_and_are_purged(api: ApiHarness) -> None:
    alice = api.account("alice")
    first = post(api, alice.headers, "k-1")
    sessions = make_session_factory(api.engine)
    with unit_of_work(sessions) as session:
        row = session.get(IdempotencyKey, (alice.id, "k-1"))
        assert row is not None
        assert row.expires_at - row.created_at >= timedelta(hours=24)
        session.execute(
            update(IdempotencyKey).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    again = post(api, alice.headers, "k-1")

    assert again.status_code == 201 and again.json["id"] != first.json["id"]
    with unit_of_work(sessions) as session:
        session.execute(
            update(IdempotencyKey).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert purge_expired_idempotency_keys(sessions, datetime.now(UTC)) == 1
    assert purge_expired_idempotency_keys(sessions, datetime.now(UTC)) == 0


def test_a_key_over_255_characters_is_400_as_any_malformed_key(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = post(api, alice.headers, "x" * 256)

    assert response.status_code == 400
    assert response.json["type"] == "urn:reminders:problem:bad-idempotency-key"
    assert "1-255 printable ASCII characters" in response.json["detail"]
    assert task_count(api) == 0


# --- the field's syntax --------------------------------------------------------------------


def test_the_draft_s_string_form_and_the_bare_key_are_the_same_key(api: ApiHarness) -> None:
    alice = api.account("alice")
    first = post(api, alice.headers, '"8e03978e-40d5-43e8-bc93-6894a57f9324"')
    bare = post(api, alice.headers, "8e03978e-40d5-43e8-bc93-6894a57f9324")

    assert first.status_code == bare.status_code == 201
    assert bare.json == first.json
    assert task_count(api) == 1
    assert stored_keys(api) == ["8e03978e-40d5-43e8-bc93-6894a57f9324"]


def test_a_string_with_an_escaped_quote_is_the_key_it_spells(api: ApiHarness) -> None:
    alice = api.account("alice")

    assert post(api, alice.headers, r'"say-\"hi\""').status_code == 201
    assert post(api, alice.headers, 'say-"hi"').status_code == 400  # a bare key has no quotes
    assert stored_keys(api) == ['say-"hi"']


@pytest.mark.parametrize("value", ["\u00e9t\u00e9", '"\u00e9t\u00e9"'], ids=["bare", "quoted"])
def test_a_key_that_is_not_ascii_is_400_saying_so_in_words(api: ApiHarness, value: str) -> None:
    alice = api.account("alice")

    response = post(api, alice.headers, value)

    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["detail"] == "Idempotency-Key must hold ASCII characters only"
    assert task_count(api) == 0


def test_two_idempotency_key_lines_are_400_and_create_nothing(api: ApiHarness) -> None:
    alice = api.account("alice")
    for lines in (["k-1", "k-2"], ["k-1", "k-1"], ['"k-1"', '"k-1"']):
        headers = [*alice.headers.items(), *(("Idempotency-Key", line) for line in lines)]

        response = api.client.post("/tasks", json=BODY, headers=headers)

        assert response.status_code == 400, (lines, response.get_data(as_text=True))
        assert response.content_type == "application/problem+json"
        assert response.json["status"] == 400 and "Idempotency-Key" in response.json["detail"]
    assert task_count(api) == 0
    assert stored_keys(api) == []


@pytest.mark.parametrize(
    "value",
    [
        '"unterminated',  # a string without its closing quote
        '"k-1" "k-2"',  # two items
        '"k-1",',  # a list's trailing comma
        '""',  # an empty string: no key
        '"tab\there"',  # an escape other than \" and \\
        "k-1,k-2",  # two keys, as gunicorn joins two lines
        "k-1;p=1",  # a bare key cannot carry parameters
        "back\\slash",
    ],
)
def test_a_value_that_is_not_one_key_is_400(api: ApiHarness, value: str) -> None:
    alice = api.account("alice")

    response = post(api, alice.headers, value)

    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    assert response.json["type"] == "urn:reminders:problem:bad-idempotency-key"
    assert task_count(api) == 0


def test_the_key_is_checked_after_the_token(api: ApiHarness) -> None:
    response = api.client.post("/tasks", json=BODY, headers={"Idempotency-Key": '"open'})

    assert response.status_code == 401


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ('"abc"', "abc"),
        ("abc", "abc"),
        ('"a b"', "a b"),  # a string may hold spaces
        ('"abc";version=2', "abc"),  # parameters, which the draft defines none of, are ignored
        (r'"a\\b"', "a\\b"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("YWJj+/=", "YWJj+/="),  # base64 keys, sent bare
        ("  abc\t", "abc"),  # optional whitespace around the value
    ],
)
def test_parse_key(value: str, key: str) -> None:
    assert parse_key(value) == key


@pytest.mark.parametrize("value", ["", " ", '"abc', "a b", "a,b", 'a"b', "a;b", "é", '"é"', '""'])
def test_parse_key_refuses(value: str) -> None:
    with pytest.raises(BadKey):
        parse_key(value)


@hypothesis.settings(max_examples=300, deadline=None, database=None, derandomize=True)
@hypothesis.given(value=st.from_regex(KEY_FIELD, fullmatch=True))
def test_every_value_the_document_s_pattern_admits_names_a_key(value: str) -> None:
    """The document's pattern is the server's rule: nothing it admits is refused."""
    key = parse_key(value)

    assert 1 <= len(key) <= 255
