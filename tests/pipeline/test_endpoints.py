"""Reminders delivered to users' own endpoints by real Dramatiq workers (SPEC §5).

Endpoints are registered over the API; receivers on 127.0.0.1 verify every request with
the ``standardwebhooks`` package and Stripe's SDK, as a user's receiver would. The stack
allows private addresses (the receivers are local) except where the address guard itself
is under test, and there host names are answered by a table, never by a DNS server.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import standardwebhooks
import stripe
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from api.app import create_app
from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters
from shared.store.db import unit_of_work, utcnow
from shared.store.models import Endpoint, Reminder
from tests.pipeline.conftest import Receipt, Receiver, Stack
from workers.producer import scan_due_tasks

DEPLOYMENT_SECRET = "deployment-secret"


def verifies(receipt: Receipt, secret: str) -> bool:
    """Whether both off-the-shelf libraries accept the request with ``secret``."""
    headers = {name.lower(): value for name, value in receipt.headers.items()}
    try:
        standardwebhooks.Webhook(secret).verify(receipt.body, headers)
        stripe.WebhookSignature.verify_header(
            receipt.body.decode(), headers["x-reminders-signature"], secret, tolerance=300
        )
    except (standardwebhooks.WebhookVerificationError, stripe.SignatureVerificationError):
        return False
    return True


class Api:
    """The HTTP API on the stack's database, as one user."""

    def __init__(self, stack: Stack, name: str = "alice", **runtime: Any) -> None:
        app = create_app(stack.settings(), engine=stack.engine, **runtime)
        app.testing = True
        self.client = app.test_client()
        self.account = stack.account(name)

    def call(self, method: str, path: str, status: int, **body: Any) -> Any:
        response = getattr(self.client, method)(
            path, json=body or None, headers=self.account.headers
        )
        assert response.status_code == status, response.json
        return response.json

    def endpoint(self, url: str) -> dict[str, Any]:
        return dict(self.call("post", "/endpoints", 201, url=url))

    def due_task(self, endpoint_id: str | None = None) -> str:
        """A task whose reminder is due now (due in 10 minutes, reminded an hour before)."""
        due = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        fields: dict[str, Any] = {"title": "t", "due_at": due, "remind_before_seconds": 3600}
        if endpoint_id is not None:
            fields["endpoint_id"] = endpoint_id
        return str(self.call("post", "/tasks", 201, **fields)["id"])

    def attempts(self, endpoint_id: str) -> list[dict[str, Any]]:
        return list(self.call("get", f"/endpoints/{endpoint_id}/attempts", 200)["items"])


def rows_of(stack: Stack, task_id: str) -> list[Reminder]:
    with unit_of_work(stack.sessions) as session:
        return list(session.scalars(select(Reminder).where(Reminder.task_id == uuid.UUID(task_id))))


def deliver(stack: Stack, broker: Any, settled: Callable[[], bool], timeout: float = 30) -> None:
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker):
        assert stack.wait_for(settled, timeout)


def final(stack: Stack, *task_ids: str) -> bool:
    return all(
        row.state in {"sent", "failed"} for task_id in task_ids for row in rows_of(stack, task_id)
    )


@pytest.fixture
def deployment() -> Iterator[Receiver]:
    """The deployment's own webhook (REMINDERS_WEBHOOK_URL), beside the user's endpoint."""
    server = Receiver().start()
    yield server
    server.stop()


def test_a_task_naming_an_endpoint_is_delivered_there_signed_with_its_own_secret(
    stack: Stack, receiver: Receiver, deployment: Receiver
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    stack.overrides["allow_private_endpoints"] = True
    alice = Api(stack)
    endpoint = alice.endpoint(receiver.url)
    routed = alice.due_task(endpoint["id"])
    plain = alice.due_task()
    broker, _ = stack.broker(webhook_url=deployment.url, webhook_secret=DEPLOYMENT_SECRET)
    deliver(stack, broker, lambda: final(stack, routed, plain))

    [mine] = receiver.receipts
    [row] = rows_of(stack, routed)
    assert row.state == "sent" and mine.headers["webhook-id"] == str(row.message_id)
    assert verifies(mine, endpoint["secret"])
    assert mine.payload["task_id"] == routed and mine.payload["type"] == "reminder"
    # The other task went to the deployment's channel, and nothing crossed over.
    [theirs] = deployment.receipts
    assert theirs.payload["task_id"] == plain
    assert not verifies(mine, "whsec_" + "A" * 43)
    [attempt] = alice.attempts(endpoint["id"])
    assert attempt["kind"] == "reminder" and attempt["message_id"] == str(row.message_id)
    assert attempt["ok"] is True and attempt["status_code"] == 200
    assert attempt["duration_ms"] >= 0


def test_retries_send_the_same_bytes_and_each_attempt_is_in_the_log(
    stack: Stack, receiver: Receiver
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    stack.overrides["allow_private_endpoints"] = True
    receiver.script = lambda n: [503, 429, 200][min(n, 2)]
    alice = Api(stack)
    endpoint = alice.endpoint(receiver.url)
    task = alice.due_task(endpoint["id"])
    broker, _ = stack.broker()
    deliver(stack, broker, lambda: final(stack, task))

    assert len(receiver.receipts) == 3
    assert len({receipt.body for receipt in receiver.receipts}) == 1
    assert all(verifies(receipt, endpoint["secret"]) for receipt in receiver.receipts)
    [row] = rows_of(stack, task)
    assert row.state == "sent" and row.attempts == 3
    log = alice.attempts(endpoint["id"])
    assert [(a["status_code"], a["ok"]) for a in log] == [(200, True), (429, False), (503, False)]
    assert [a["error"] for a in log] == [None, "answered 429", "answered 503"]
    assert {a["message_id"] for a in log} == {str(row.message_id)}
    shown = alice.call("get", f"/endpoints/{endpoint['id']}", 200)
    assert shown["failing_since"] is None and shown["last_error"] == "answered 429"


def disabled_count() -> float:
    return REGISTRY.get_sample_value("reminders_endpoints_disabled_total") or 0.0


def test_an_endpoint_failing_past_the_setting_is_disabled_and_enabled_again_by_patch(
    stack: Stack, receiver: Receiver
) -> None:
    """Failing for the default five days, not a second less, disables the endpoint. The
    attempts are stamped by the endpoint channel's clock, which the test moves on: how long
    an endpoint has been failing is arithmetic on those stamps, not on the wall clock.

    Real time: only for a real worker to deliver each reminder; how long the endpoint has failed is
    on the injected clock."""
    stack.overrides.update(allow_private_endpoints=True, max_retries=0)
    disable_after = timedelta(seconds=stack.settings().endpoint_disable_after_seconds)
    assert disable_after == timedelta(days=5)  # the default
    receiver.script = lambda n: 500
    alice = Api(stack)
    endpoint = alice.endpoint(receiver.url)
    start = utcnow()
    clock = [start]
    broker, _ = stack.broker(endpoint_clock=lambda: clock[0])
    before = disabled_count()

    first = alice.due_task(endpoint["id"])
    deliver(stack, broker, lambda: final(stack, first))
    assert alice.call("get", f"/endpoints/{endpoint['id']}", 200)["enabled"] is True
    clock[0] = start + disable_after - timedelta(seconds=1)  # failing, not yet long enough
    almost = alice.due_task(endpoint["id"])
    deliver(stack, broker, lambda: final(stack, almost))
    assert alice.call("get", f"/endpoints/{endpoint['id']}", 200)["enabled"] is True
    clock[0] = start + disable_after  # every attempt has now failed for the setting's time
    second = alice.due_task(endpoint["id"])
    deliver(stack, broker, lambda: final(stack, second))
    shown = alice.call("get", f"/endpoints/{endpoint['id']}", 200)
    assert shown["enabled"] is False
    assert shown["disabled_reason"].startswith(
        f"every delivery attempt failed since {start:%Y-%m-%dT%H:%M:%SZ}"
    )
    assert "answered 500" in shown["disabled_reason"]
    assert disabled_count() == before + 1
    # Operators see it from the command line, with its owner and why, never its secret.
    listed = subprocess.run(
        ["reminders", "endpoints", "list", "--failing"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    [header, line] = listed.stdout.splitlines()
    assert header.split()[:4] == ["ENDPOINT", "OWNER", "URL", "STATE"]
    assert line.split()[:4] == [endpoint["id"], "alice", receiver.url, "DISABLED"]
    assert "every delivery attempt failed since" in line
    assert endpoint["secret"] not in listed.stdout + listed.stderr

    # Disabled: the next reminder is a dead letter that says so, and no request is made.
    third = alice.due_task(endpoint["id"])
    deliver(stack, broker, lambda: final(stack, third))
    [row] = rows_of(stack, third)
    assert row.state == "failed" and "endpoint disabled" in (row.last_error or "")
    assert len(receiver.receipts) == 3

    # Enabled again by its owner, and answering: delivered.
    receiver.script = lambda n: 200
    enabled = alice.call("patch", f"/endpoints/{endpoint['id']}", 200, enabled=True)
    assert enabled["enabled"] is True and enabled["disabled_reason"] is None
    fourth = alice.due_task(endpoint["id"])
    deliver(stack, broker, lambda: final(stack, fourth))
    assert [row.state for row in rows_of(stack, fourth)] == ["sent"]
    assert receiver.receipts[-1].payload["task_id"] == fourth


def test_a_task_whose_endpoint_is_deleted_falls_back_to_the_deployment_channel(
    stack: Stack, receiver: Receiver, deployment: Receiver
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    stack.overrides["allow_private_endpoints"] = True
    alice = Api(stack)
    endpoint = alice.endpoint(receiver.url)
    task = alice.due_task(endpoint["id"])
    alice.call("delete", f"/endpoints/{endpoint['id']}", 204)
    broker, _ = stack.broker(webhook_url=deployment.url, webhook_secret=DEPLOYMENT_SECRET)
    deliver(stack, broker, lambda: final(stack, task))
    assert receiver.receipts == []
    [receipt] = deployment.receipts
    assert receipt.payload["task_id"] == task
    assert [row.state for row in rows_of(stack, task)] == ["sent"]


def test_a_host_that_resolves_to_loopback_after_it_was_saved_is_refused_at_delivery(
    stack: Stack, receiver: Receiver
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    assert receiver.server is not None
    port = receiver.server.server_address[1]
    public = {"hooks.example": ["93.184.215.14"]}
    rebound = {"hooks.example": ["127.0.0.1"]}
    alice = Api(stack, resolve=lambda host, _port: public[host])
    endpoint = alice.endpoint(f"https://hooks.example:{port}/hook")  # public when saved
    task = alice.due_task(endpoint["id"])
    broker, _ = stack.broker(resolve=lambda host, _port: rebound[host])
    deliver(stack, broker, lambda: final(stack, task))

    assert receiver.receipts == []
    [row] = rows_of(stack, task)
    assert row.state == "failed" and row.attempts == 1  # refused: not retried
    assert "address refused" in (row.last_error or "") and "loopback" in (row.last_error or "")
    [attempt] = alice.attempts(endpoint["id"])
    assert attempt["ok"] is False and attempt["status_code"] is None
    assert attempt["error"].startswith("address refused")


@pytest.mark.parametrize("url", ["http://\u00b6/hook", "http://-hooks.example/hook"])
def test_an_endpoint_url_stored_with_an_invalid_host_fails_for_good_without_retries(
    stack: Stack, receiver: Receiver, url: str
) -> None:
    """A URL saved before hosts were checked (here written into the database directly):
    its reminder fails permanently on the first attempt, dead-lettered with a clear error,
    and its test ping answers with the failed attempt rather than a server error."""
    stack.overrides["allow_private_endpoints"] = True
    alice = Api(stack)
    endpoint = alice.endpoint(receiver.url)
    with unit_of_work(stack.sessions) as session:
        session.execute(
            update(Endpoint).where(Endpoint.id == uuid.UUID(endpoint["id"])).values(url=url)
        )
    task = alice.due_task(endpoint["id"])
    broker, _ = stack.broker()
    deliver(stack, broker, lambda: final(stack, task))
    ping = alice.call("post", f"/endpoints/{endpoint['id']}/test", 200)

    error = "URL has an invalid host: not a host name or an IP address"
    [row] = rows_of(stack, task)
    assert (row.state, row.attempts) == ("failed", 1)  # permanent: not retried
    assert row.last_error == f"PermanentDeliveryError: endpoint {error}"
    [dead] = dead_letters(broker, QUEUE_NAME)
    assert dead.message_id == str(row.message_id)
    assert (ping["ok"], ping["status_code"], ping["error"]) == (False, None, error)
    assert [attempt["error"] for attempt in alice.attempts(endpoint["id"])] == [error, error]
    assert receiver.receipts == []
