"""A user's test pings to a slow receiver of their own hold no other user's request.

A ping answers with its attempt (SPEC §6), so it waits for the receiver on a request
thread. Four concurrent pings to an 8-second receiver once held all four threads of an API
process for the ping's 5 s, and another user's ``GET /tasks`` waited as long. Now each user
has one ping in flight at a time (the others get 429 with ``Retry-After`` at once), and a
process at most two. Here the API runs as the Procfile runs it (gunicorn, four threads),
and the receivers are real HTTP servers on 127.0.0.1 that answer after 8 s.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.pings import PINGS_PER_PROCESS
from tests.api.test_body_limit import gunicorn_server
from tests.conftest import Account, create_account, served
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import Receiver, Stack

stack = pipeline_harness.stack  # own schema, Redis namespace and process cleanup

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

RECEIVER_DELAY_SECONDS = 8.0
QUICK_SECONDS = 1.0  # a request nobody else holds up; it took 4.5 s behind the pings


@pytest.fixture
def slow_receiver() -> Iterator[Receiver]:
    server = Receiver(delay_seconds=RECEIVER_DELAY_SECONDS).start()
    yield server
    server.stop()


@contextlib.contextmanager
def werkzeug_server(stack: Stack) -> Iterator[str]:
    app = create_app(stack.settings(), engine=stack.engine)
    with served(app) as url:
        yield url


def endpoint(client: httpx.Client, owner: Account, url: str) -> str:
    made = client.post("/endpoints", json={"url": url}, headers=owner.headers)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def ping(client: httpx.Client, owner: Account, endpoint_id: str) -> httpx.Response:
    return client.post(f"/endpoints/{endpoint_id}/test", headers=owner.headers)


def timed_listing(client: httpx.Client, owner: Account) -> float:
    started = time.monotonic()
    listed = client.get("/tasks", headers=owner.headers)
    took = time.monotonic() - started
    assert listed.status_code == 200, listed.text
    return took


def arrived(receiver: Receiver, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.receipts) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(receiver.receipts) >= count
    time.sleep(0.3)  # whatever else was sent is under way by now


def test_a_users_slow_pings_do_not_hold_another_users_requests(
    stack: Stack, slow_receiver: Receiver, tmp_path: Path
) -> None:
    stack.overrides.update(allow_private_endpoints=True, rate_limit="")
    alice, bob = (create_account(stack.engine, name) for name in ("alice", "bob"))

    with (
        gunicorn_server(stack, tmp_path / "web.log") as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        endpoint_id = endpoint(client, alice, slow_receiver.url)
        pings = [pool.submit(ping, client, alice, endpoint_id) for _ in range(4)]
        arrived(slow_receiver, 1)
        waits = [timed_listing(client, bob) for _ in range(3)]
        answers = [future.result(30) for future in pings]
        # Once the ping is answered, the next one goes out.
        slow_receiver.delay_seconds = 0
        after = ping(client, alice, endpoint_id)
        attempts = client.get(f"/endpoints/{endpoint_id}/attempts", headers=alice.headers)

    assert max(waits) < QUICK_SECONDS, waits
    assert sorted(answer.status_code for answer in answers) == [200, 429, 429, 429]
    [sent] = [answer.json() for answer in answers if answer.status_code == 200]
    assert (sent["ok"], sent["error"]) == (False, "timed out (no answer within 5 s)")
    for refused in (answer for answer in answers if answer.status_code == 429):
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert "one at a time" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 5  # when the ping times out
    assert after.status_code == 200 and after.json()["ok"] is True
    assert len(slow_receiver.receipts) == 2  # the refused pings sent nothing
    assert [item["error"] for item in attempts.json()["items"]] == [
        None,
        "timed out (no answer within 5 s)",
    ]


def test_a_process_makes_only_a_few_pings_at_once_whoever_sends_them(
    stack: Stack, slow_receiver: Receiver
) -> None:
    stack.overrides.update(allow_private_endpoints=True, rate_limit="")
    users = [create_account(stack.engine, f"user{n}") for n in range(PINGS_PER_PROCESS + 1)]

    with (
        werkzeug_server(stack) as base,
        httpx.Client(base_url=base, timeout=30) as client,
        ThreadPoolExecutor(len(users)) as pool,
    ):
        ids = [endpoint(client, user, slow_receiver.url) for user in users]
        pings = [
            pool.submit(ping, client, user, endpoint_id)
            for user, endpoint_id in zip(users, ids, strict=True)
        ]
        arrived(slow_receiver, PINGS_PER_PROCESS)
        answers = [future.result(30) for future in pings]

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * PINGS_PER_PROCESS + [429]
    [busy] = [answer for answer in answers if answer.status_code == 429]
    assert "too many test pings" in busy.json()["detail"]
    assert busy.headers["Retry-After"] == "5"
    assert len(slow_receiver.receipts) == PINGS_PER_PROCESS
