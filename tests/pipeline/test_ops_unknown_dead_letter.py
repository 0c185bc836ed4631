"""Retrying or discarding a dead letter that does not exist answers 404 at once, on SQLite
(the embedded default) as on PostgreSQL, and holds no other request.

The desk once looked for a broker-only entry of an unknown ID while its own transaction
was open; that lookup opened a second transaction, which on SQLite (every transaction
takes the write lock, ``BEGIN IMMEDIATE``) waited for the first until the busy timeout:
30 s, then a 500, and every request needing the database waited as long. Here the app
runs behind a real threaded HTTP server on 127.0.0.1, with a real dead letter in Redis
(a reminder that workers failed for real against a webhook answering 500).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine

from api.app import create_app
from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters
from tests.conftest import create_account, served
from tests.pipeline.conftest import FAST_RETRIES, Receiver, Stack, reminder_id
from workers.producer import scan_due_tasks

pytestmark = [pytest.mark.redis]

POISON = {"webhook_secret": "s", "max_retries": 1, "min_backoff_ms": 50, "max_backoff_ms": 200}
QUICK_SECONDS = 2.0  # far under the 30 s the nested transaction waited


@pytest.fixture
def any_stack(migrated: Engine, any_database_url: str, redis_namespace: str) -> Iterator[Stack]:
    """A `Stack` on SQLite or PostgreSQL."""
    harness = Stack(
        engine=migrated,
        database_url=any_database_url,
        namespace=redis_namespace,
        overrides=dict(FAST_RETRIES),
    )
    yield harness
    harness.close()


@pytest.fixture
def server(any_stack: Stack) -> Iterator[str]:
    app = create_app(any_stack.settings(rate_limit=""), engine=any_stack.engine)
    with served(app) as url:
        yield url


def dead_letter(stack: Stack, receiver: Receiver) -> str:
    """One reminder dead-lettered for real; its message ID."""
    receiver.script = lambda n: 500
    task = stack.add_task(stack.account("owen"), datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = stack.broker(webhook_url=receiver.url, **POISON)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states() == {"failed": 1}, 30), stack.states()
    assert len(dead_letters(broker, QUEUE_NAME)) == 1
    return str(reminder_id(task))


def timed(send: httpx.Request, client: httpx.Client) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.send(send)
    return response, time.monotonic() - started


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/ops/dead-letters/{id}/retry", 404),
        ("DELETE", "/ops/dead-letters/{id}", 404),
        ("POST", "/ops/page/dead-letters/{id}/retry", 303),
        ("POST", "/ops/page/dead-letters/{id}/discard", 303),
    ],
    ids=["api-retry", "api-discard", "page-retry", "page-discard"],
)
def test_an_unknown_dead_letter_answers_at_once_and_holds_no_other_request(
    any_stack: Stack, receiver: Receiver, server: str, method: str, path: str, expected: int
) -> None:
    known = dead_letter(any_stack, receiver)
    operator = create_account(any_stack.engine, "olivia", operator=True)
    user = create_account(any_stack.engine, "alice")
    unknown = uuid.uuid4()

    with httpx.Client(base_url=server, timeout=60) as client, ThreadPoolExecutor(2) as pool:
        request = client.build_request(
            method,
            path.format(id=unknown),
            headers={**operator.headers, "Origin": server},
            data={"confirmed": "yes"} if path.endswith("discard") else None,
        )
        acting = pool.submit(timed, request, client)
        time.sleep(0.05)  # the action is under way
        listing = pool.submit(
            timed, client.build_request("GET", "/tasks", headers=user.headers), client
        )
        (answer, took), (tasks, listing_took) = acting.result(60), listing.result(60)

    assert answer.status_code == expected, answer.text[:300]
    assert took < QUICK_SECONDS, took
    if expected == 303:
        notice = httpx.Cookies(answer.cookies).get("reminders_ops_notice", "")
        assert "is%20not%20a%20dead%20letter" in notice
    else:
        assert answer.json()["detail"] == "no such dead letter"
    assert tasks.status_code == 200
    assert listing_took < QUICK_SECONDS, listing_took
    # The real dead letter is untouched.
    [row] = any_stack.reminders()
    assert (str(row.message_id), row.state, row.discarded_at) == (known, "failed", None)
