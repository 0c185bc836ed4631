"""Operators inspect, retry and discard dead letters from the API and the CLI (SPEC §6, §7)."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters, queue_depth, remove_dead_letter
from shared.store.db import unit_of_work
from shared.store.models import OperatorAction, Reminder, User
from tests.conftest import create_account
from tests.pipeline.conftest import BIN, Receiver, Stack
from workers.producer import scan_due_tasks

ROOT = Path(__file__).resolve().parents[2]
POISON = {"webhook_secret": "s", "max_retries": 1, "min_backoff_ms": 50, "max_backoff_ms": 200}


def poison(stack: Stack, receiver: Receiver, count: int = 1) -> tuple[Any, list[str]]:
    """``count`` reminders dead-lettered for real: the webhook answers 500 to everything."""
    receiver.script = lambda n: 500
    owner = stack.account("owner")
    for n in range(count):
        stack.add_task(owner, datetime.now(UTC) + timedelta(minutes=10 + n), 3600)
    broker, _ = stack.broker(webhook_url=receiver.url, **POISON)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states().get("failed", 0) == count, 30)
    return broker, [str(row.message_id) for row in stack.reminders()]


def cli(
    stack: Stack, *args: str, receiver: Receiver | None = None
) -> subprocess.CompletedProcess[str]:
    env = stack.env(**({"webhook_url": receiver.url, **POISON} if receiver else {}))
    return subprocess.run(
        [str(BIN / "reminders"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def actions(stack: Stack) -> list[tuple[str, str, str | None]]:
    with unit_of_work(stack.sessions) as session:
        rows = session.scalars(select(OperatorAction).order_by(OperatorAction.at))
        return [
            (row.operator, row.action, str(row.message_id) if row.message_id else None)
            for row in rows
        ]


@pytest.mark.slow
def test_poisoned_reminder_is_listed_retried_once_after_the_fix(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    broker, [message_id] = poison(stack, receiver)
    ops = create_account(stack.engine, "olivia", operator=True)
    client = api_client_for(stack)

    listed = client.get("/ops/dead-letters", headers=ops.headers)
    assert listed.status_code == 200
    [item] = listed.json["items"]
    assert item["message_id"] == message_id
    assert item["error"] == "TransientDeliveryError: webhook answered 500"
    assert (item["attempts"], item["actor"], item["queue"], item["in_broker"]) == (
        2,
        "send_reminder",
        "reminders",
        True,
    )
    assert listed.json["error_types"] == {"TransientDeliveryError": 1}
    shown = client.get(f"/ops/dead-letters/{message_id}", headers=ops.headers).json
    assert "webhook answered 500" in shown["traceback"]

    from_cli = cli(stack, "dlq", "list", "--json")
    assert from_cli.returncode == 0, from_cli.stderr
    assert [x["message_id"] for x in json.loads(from_cli.stdout)["items"]] == [message_id]
    table = cli(stack, "dlq", "list")
    assert message_id in table.stdout and "webhook answered 500" in table.stdout

    receiver.script = lambda n: 200
    before = len(receiver.receipts)
    retried = client.post(f"/ops/dead-letters/{message_id}/retry", headers=ops.headers)
    assert retried.json == {"message_id": message_id, "outcome": "requeued"}
    assert dead_letters(broker, QUEUE_NAME) == []
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states() == {"sent": 1}, 20)
        again = client.post(f"/ops/dead-letters/{message_id}/retry", headers=ops.headers)
        assert again.json == {"message_id": message_id, "outcome": "already_sent"}
        stack.wait_for(lambda: queue_depth(broker, QUEUE_NAME).ready == 0, 5)

    assert receiver.keys()[before:] == [message_id]
    assert client.get("/ops/dead-letters", headers=ops.headers).json["items"] == []
    assert ("olivia", "retry", message_id) in actions(stack)


def test_retrying_an_occurrence_already_sent_sends_nothing_more(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    broker, _ = poison(stack, receiver)
    ops = create_account(stack.engine, "olivia", operator=True)
    with stack.sessions.begin() as session:  # delivered meanwhile, e.g. by a late redelivery
        row = session.get(Reminder, stack.reminders()[0].message_id)
        assert row is not None
        row.state, row.sent_at = "sent", datetime.now(UTC)
    client = api_client_for(stack)

    assert client.get("/ops/dead-letters", headers=ops.headers).json["items"] == []
    from shared.ops.dead_letters import DeadLetterDesk, RetryOutcome

    outcome = DeadLetterDesk(stack.sessions, broker).retry(
        stack.reminders()[0].message_id, "olivia"
    )

    assert outcome is RetryOutcome.ALREADY_SENT
    assert queue_depth(broker, QUEUE_NAME).ready == 0
    assert dead_letters(broker, QUEUE_NAME) == []
    before = len(receiver.receipts)
    with stack.run_workers(broker):
        stack.wait_for(lambda: False, 0.5)
    assert len(receiver.receipts) == before
    assert stack.states() == {"sent": 1}


@pytest.mark.slow
def test_discard_leaves_the_occurrence_failed_and_marked(stack: Stack, receiver: Receiver) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    broker, [message_id] = poison(stack, receiver)

    done = cli(stack, "dlq", "purge", message_id, "--as", "pat")

    assert done.returncode == 0, done.stderr
    [row] = stack.reminders()
    assert (row.state, row.discarded_by) == ("failed", "cli:pat")
    assert row.discarded_at is not None
    assert dead_letters(broker, QUEUE_NAME) == []
    assert json.loads(cli(stack, "dlq", "list", "--json").stdout)["items"] == []
    assert ("cli:pat", "discard", message_id) in actions(stack)
    assert cli(stack, "dlq", "retry", message_id).returncode != 0  # not a dead letter any more


@pytest.mark.slow
def test_purge_all_needs_confirmation(stack: Stack, receiver: Receiver) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    poison(stack, receiver, count=2)

    refused = cli(stack, "dlq", "purge", "--all")
    assert refused.returncode != 0 and "--yes" in refused.stderr
    assert stack.states() == {"failed": 2}

    done = cli(stack, "dlq", "purge", "--all", "--yes")
    assert done.returncode == 0 and "discarded 2" in done.stdout
    assert all(row.discarded_at for row in stack.reminders())


def test_bulk_retry_dry_run_changes_nothing_and_lists_what_it_would_do(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    broker, ids = poison(stack, receiver, count=3)
    ops = create_account(stack.engine, "olivia", operator=True)
    client = api_client_for(stack)

    dry = client.post("/ops/dead-letters/retry", json={"dry_run": True}, headers=ops.headers).json
    from_cli = json.loads(cli(stack, "dlq", "retry", "--all", "--dry-run", "--json").stdout)
    other_type = client.post(
        "/ops/dead-letters/retry",
        json={"dry_run": True, "error_type": "PermanentDeliveryError"},
        headers=ops.headers,
    ).json

    assert (
        dry["dry_run"] is True and dry["count"] == 3 and sorted(dry["message_ids"]) == sorted(ids)
    )
    assert from_cli["count"] == 3
    assert other_type["count"] == 0
    assert stack.states() == {"failed": 3}
    assert len(dead_letters(broker, QUEUE_NAME)) == 3

    real = client.post(
        "/ops/dead-letters/retry",
        json={"error_type": "TransientDeliveryError"},
        headers=ops.headers,
    ).json
    assert real["count"] == 3
    assert stack.states() == {"queued": 3}
    assert queue_depth(broker, QUEUE_NAME).ready == 3
    assert dead_letters(broker, QUEUE_NAME) == []


def test_listing_says_when_the_broker_entry_expired(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    broker, [message_id] = poison(stack, receiver)
    for letter in dead_letters(broker, QUEUE_NAME):
        remove_dead_letter(broker, QUEUE_NAME, letter.broker_id)  # as the TTL would
    ops = create_account(stack.engine, "olivia", operator=True)

    [item] = api_client_for(stack).get("/ops/dead-letters", headers=ops.headers).json["items"]

    assert item["message_id"] == message_id and item["in_broker"] is False
    assert item["error"] == "TransientDeliveryError: webhook answered 500"


def test_queue_depths_per_queue(stack: Stack, receiver: Receiver, api_client_for) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    poison(stack, receiver)
    ops = create_account(stack.engine, "olivia", operator=True)

    queues = api_client_for(stack).get("/ops/queues", headers=ops.headers).json["items"]
    from_cli = json.loads(cli(stack, "dlq", "queues", "--json").stdout)

    by_name = {q["queue"]: q for q in queues}
    assert by_name["reminders"] == {
        "queue": "reminders",
        "ready": 0,
        "delayed": 0,
        "in_flight": 0,
        "dead": 1,
    }
    assert "reminders.scan" in by_name
    assert from_cli == queues


OPS_ROUTES = [
    ("get", "/ops/dead-letters", None),
    ("get", "/ops/dead-letters/{id}", None),
    ("post", "/ops/dead-letters/{id}/retry", None),
    ("post", "/ops/dead-letters/retry", {"dry_run": True}),
    ("delete", "/ops/dead-letters/{id}", None),
    ("get", "/ops/queues", None),
    ("get", "/ops/receivers", None),
    ("get", "/ops", None),
    ("post", "/ops/page/dead-letters/{id}/retry", None),
    ("post", "/ops/page/dead-letters/{id}/discard", None),
    ("get", "/ops/page/dead-letters/{id}", None),
    ("get", "/ops/page/dead-letters/{id}/discard", None),
    ("post", "/ops/page/dead-letters/bulk", None),
    ("post", "/ops/page/endpoints/{id}/enable", None),
]


@pytest.mark.parametrize(("method", "path", "body"), OPS_ROUTES)
def test_a_non_operator_token_gets_403_on_every_ops_route(
    stack: Stack, receiver: Receiver, api_client_for, method: str, path: str, body: Any
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    broker, [message_id] = poison(stack, receiver)
    user = create_account(stack.engine, "ursula")
    client = api_client_for(stack)

    response = getattr(client, method)(path.format(id=message_id), json=body, headers=user.headers)

    assert response.status_code == 403
    assert stack.states() == {"failed": 1}
    assert len(dead_letters(broker, QUEUE_NAME)) == 1
    anonymous = getattr(client, method)(path.format(id=message_id), json=body)
    assert anonymous.status_code in {401, 303}


def test_page_lists_recent_failures_still_retrying(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    receiver.script = lambda n: 503
    owner = stack.account("owner")
    stack.add_task(owner, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = stack.broker(
        webhook_url=receiver.url,
        webhook_secret="s",
        max_retries=5,
        min_backoff_ms=60_000,
        max_backoff_ms=120_000,
    )
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.reminders()[0].attempts == 1, 20)
    [row] = stack.reminders()
    ops = create_account(stack.engine, "olivia", operator=True)
    client = api_client_for(stack)
    assert client.post("/ops/sign-in", data={"token": ops.token}).status_code == 303

    page = client.get("/ops").get_data(as_text=True)

    retrying = page.split('id="retrying"', 1)[1].split("</table>", 1)[0]
    assert str(row.message_id) in retrying
    assert "TransientDeliveryError: webhook answered 503" in retrying
    assert row.state == "queued"


def test_a_non_operator_can_sign_out_from_the_403_page(stack: Stack, api_client_for) -> None:
    user = create_account(stack.engine, "ursula", operator=True)
    client = api_client_for(stack)
    assert client.post("/ops/sign-in", data={"token": user.token}).status_code == 303
    with stack.sessions.begin() as session:  # no longer an operator, still signed in
        session.execute(update(User).where(User.id == user.id).values(is_operator=False))

    forbidden = client.get("/ops")
    signed_out = client.post("/ops/sign-out")

    assert forbidden.status_code == 403 and "Sign out" in forbidden.get_data(as_text=True)
    assert signed_out.status_code == 303
    assert client.get("/ops").headers["Location"].endswith("/ops/sign-in")


@pytest.mark.parametrize(
    "body",
    [
        {"dry_run": "off"},
        {"dry_run": 0},
        {"dry_run": None},
        {"older_than_seconds": "60"},
        {"older_than_seconds": 60.5},
        {"older_than_seconds": True},
        {"older_than_seconds": None},
        {"error_type": None},
    ],
)
def test_bulk_retry_refuses_what_is_not_the_documented_json_type(
    stack: Stack, receiver: Receiver, api_client_for, body: dict[str, Any]
) -> None:
    """``"dry_run": "off"`` once meant a real retry: now it is a 422 and nothing moves.

    Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    broker, _ = poison(stack, receiver)
    ops = create_account(stack.engine, "olivia", operator=True)

    response = api_client_for(stack).post("/ops/dead-letters/retry", json=body, headers=ops.headers)

    assert response.status_code == 422, response.get_data(as_text=True)
    assert [error["field"] for error in response.json["errors"]] == list(body)
    assert stack.states() == {"failed": 1}
    assert len(dead_letters(broker, QUEUE_NAME)) == 1


def test_operator_integers_are_json_integers_in_bodies_and_queries(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    poison(stack, receiver)
    ops = create_account(stack.engine, "olivia", operator=True)
    client = api_client_for(stack)

    integral = client.post(
        "/ops/dead-letters/retry",
        json={"dry_run": True, "older_than_seconds": 0.0},
        headers=ops.headers,
    )
    listed = client.get("/ops/dead-letters?limit=5&older_than_seconds=0", headers=ops.headers)
    refused = {
        query: client.get(f"/ops/dead-letters?{query}", headers=ops.headers).status_code
        for query in (
            "limit=%2B5",
            "limit=5_0",
            "limit=5.0",  # a query's integer is digits, as the document says
            "older_than_seconds=1.5",
            "newer_than_seconds=",
        )
    }

    assert integral.status_code == 200 and integral.json["count"] == 1
    assert listed.status_code == 200 and len(listed.json["items"]) == 1
    assert refused == dict.fromkeys(refused, 422)
    assert stack.states() == {"failed": 1}


def test_deleted_tasks_dead_letter_stays_with_operators_while_its_owner_gets_404(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Deleting a task hides it, history included, from its owner; the rows stay for ops.

    Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    receiver.script = lambda n: 500
    alice = stack.account("alice")
    ops = create_account(stack.engine, "olivia", operator=True)
    client = api_client_for(stack)
    due = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    task = client.post("/tasks", json={"title": "t", "due_at": due}, headers=alice.headers).json
    broker, _ = stack.broker(webhook_url=receiver.url, **POISON)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states().get("failed", 0) == 1, 30)
    message_id = task["reminder"]["message_id"]

    deleted = client.delete(f"/tasks/{task['id']}", headers=alice.headers)

    assert deleted.status_code == 204
    for path in (f"/tasks/{task['id']}", f"/tasks/{task['id']}/reminders"):
        assert client.get(path, headers=alice.headers).status_code == 404
    letter = client.get(f"/ops/dead-letters/{message_id}", headers=ops.headers)
    assert letter.status_code == 200 and letter.json["task_id"] == task["id"]
    assert [row.state for row in stack.reminders()] == ["failed"]
    discarded = client.delete(f"/ops/dead-letters/{message_id}", headers=ops.headers)
    assert discarded.status_code == 204


def test_page_shows_an_undecodable_dead_letter_by_broker_id_with_discard_only(
    stack: Stack, api_client_for
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver until the reminder is
    dead-lettered, retries waiting out their backoff."""
    broker, _ = stack.broker()
    broker_id = uuid.uuid4().hex  # as enqueue_batch spells broker ids
    ns = stack.namespace
    broker.client.hset(f"{ns}:{QUEUE_NAME}.msgs", broker_id, b"not JSON")
    broker.client.rpush(f"{ns}:{QUEUE_NAME}", broker_id)
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: len(dead_letters(broker, QUEUE_NAME)) == 1, 10)
    ops = create_account(stack.engine, "olivia", operator=True)
    client = api_client_for(stack)
    assert client.post("/ops/sign-in", data={"token": ops.token}).status_code == 303

    page = client.get("/ops").get_data(as_text=True)
    row = page.split('id="dead-letters"', 1)[1].split("</tr>", 2)[1]
    retried = client.post(f"/ops/page/dead-letters/{uuid.UUID(broker_id)}/retry")
    notice = client.get("/ops").get_data(as_text=True)
    unconfirmed = client.post(f"/ops/page/dead-letters/{uuid.UUID(broker_id)}/discard")
    still_there = len(dead_letters(broker, QUEUE_NAME))
    discarded = client.post(
        f"/ops/page/dead-letters/{uuid.UUID(broker_id)}/discard", data={"confirmed": "yes"}
    )

    assert broker_id in row and "UndecodableMessage" in row
    assert 'data-action="discard"' in row and 'name="retry"' not in row
    # Without the confirmation's field, a discard only leads to the confirmation.
    assert unconfirmed.status_code == 303 and still_there == 1
    assert unconfirmed.headers["Location"].endswith(f"/{uuid.UUID(broker_id)}/discard")
    assert retried.status_code == 303 and "cannot be retried" in notice
    assert discarded.status_code == 303
    assert dead_letters(broker, QUEUE_NAME) == []
    assert actions(stack)[-1][:2] == ("olivia", "discard")
