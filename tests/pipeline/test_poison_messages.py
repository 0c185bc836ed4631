"""A poison message holds nothing up: it is set aside, logged once, and shown to operators.

Bodies no worker can decode (not JSON, ``args: null``, fields missing) are written straight
into the reminders queue's Redis keys, as a foreign producer or a hand edit would, next to
real reminders; real ``dramatiq workers.app`` processes then run on the test's namespace.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message
from prometheus_client import REGISTRY
from sqlalchemy import update

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters, pending_message_ids, queue_depth
from shared.store.db import unit_of_work
from shared.store.models import Reminder
from tests.conftest import create_account
from tests.pipeline.conftest import BIN, ROOT, Stack
from workers.producer import scan_due_tasks

NOT_JSON = b"\x80 this is not JSON {"
ARGS_NULL = json.dumps(
    {
        "queue_name": QUEUE_NAME,
        "actor_name": "send_reminder",
        "args": None,
        "kwargs": {},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": 0,
    }
).encode()
FIELDS_MISSING = json.dumps({"queue_name": QUEUE_NAME, "actor_name": "send_reminder"}).encode()


def put_raw(stack: Stack, broker: Any, bodies: dict[str, bytes]) -> None:
    """Store ``bodies`` under their broker ids and push the ids: Dramatiq's enqueue, by hand."""
    ns = stack.namespace
    broker.client.hset(f"{ns}:{QUEUE_NAME}.msgs", mapping=bodies)
    broker.client.rpush(f"{ns}:{QUEUE_NAME}", *bodies)


def log_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "reminders"), *args],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def unacked_ids(stack: Stack, broker: Any) -> int:
    keys = broker.client.scan_iter(match=f"{stack.namespace}:__acks__.*", count=1000)
    return sum(int(broker.client.scard(key)) for key in keys)


@pytest.mark.slow
def test_undecodable_messages_are_set_aside_and_hold_up_no_reminder(
    stack: Stack, tmp_path: Path, api_client_for
) -> None:
    """Real time: real `dramatiq workers.app` processes read the poison from Redis and log to a
    pipe."""
    owner = stack.account("owner")
    stack.add_due_tasks(owner, 7)
    lost = stack.reminders()[0].message_id
    with unit_of_work(stack.sessions) as session:  # queued an hour ago; its message is gone
        session.execute(
            update(Reminder)
            .where(Reminder.message_id == lost)
            .values(state="queued", updated_at=datetime.now(UTC) - timedelta(hours=1))
        )
    broker, _ = stack.broker()
    # Broker ids as Dramatiq spells them, and one as enqueue_batch does (32 hex digits).
    poison = {
        str(uuid.uuid4()): NOT_JSON,
        str(uuid.uuid4()): ARGS_NULL,
        uuid.uuid4().hex: FIELDS_MISSING,
    }
    put_raw(stack, broker, poison)  # first in line: fetched in the same batch as real ones

    scanned = scan_due_tasks(stack.sessions, broker, stack.settings())

    # The producer's recovery reads past them and still requeues the lost message.
    assert (scanned.enqueued, scanned.requeued) == (6, 1)
    assert str(lost) in pending_message_ids(broker, QUEUE_NAME)

    log = tmp_path / "workers.log"
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "2", "--threads", "2"]
    stack.spawn_logged(argv, stack.env(), log)

    assert stack.wait_for(lambda: stack.states() == {"sent": 7}, 30), stack.states()
    assert stack.wait_for(lambda: len(dead_letters(broker, QUEUE_NAME)) == 3, 10)
    letters = dead_letters(broker, QUEUE_NAME)
    assert {letter.broker_id for letter in letters} == set(poison)
    assert all(letter.undecodable for letter in letters)
    # The last acknowledgements go to Redis a few milliseconds after their messages are done.
    assert stack.wait_for(lambda: unacked_ids(stack, broker) == 0, 5)
    assert queue_depth(broker, QUEUE_NAME).__dict__ == {
        "queue": QUEUE_NAME,
        "ready": 0,
        "delayed": 0,
        "in_flight": 0,
        "dead": 3,
    }

    def set_aside() -> Counter[str]:  # the worker processes' lines reach the file via a pipe
        return Counter(
            line["broker_id"] for line in log_lines(log) if line["event"] == "message.undecodable"
        )

    assert stack.wait_for(lambda: set_aside().total() >= 3, 20), set_aside()
    assert set_aside() == dict.fromkeys(poison, 1)
    lines = log_lines(log)
    assert not [line for line in lines if "unexpected error" in line.get("message", "")]

    # Operators see the same three everywhere, named by broker id.
    listed = cli(stack, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)["items"]
    assert {item["message_id"]: item["error_type"] for item in items} == dict.fromkeys(
        poison, "UndecodableMessage"
    )
    assert json.loads(listed.stdout)["error_types"] == {"UndecodableMessage": 3}
    table = cli(stack, "dlq", "list").stdout
    assert all(broker_id in table for broker_id in poison)
    [reminders_queue] = [
        q
        for q in json.loads(cli(stack, "dlq", "queues", "--json").stdout)
        if q["queue"] == QUEUE_NAME
    ]
    assert reminders_queue["dead"] == len(items) == 3
    ops = create_account(stack.engine, "olivia", operator=True)
    client = api_client_for(stack)
    page = client.get("/ops/dead-letters", headers=ops.headers).json
    assert {item["broker_id"] for item in page["items"]} == set(poison)
    assert {(item["error_type"], item["retryable"], item["task_id"]) for item in page["items"]} == {
        ("UndecodableMessage", False, None)
    }

    # Retrying makes no sense, and says so; discarding removes the entry.
    dashed, _, hexed = poison
    refused = cli(stack, "dlq", "retry", hexed)
    assert refused.returncode != 0 and "cannot be retried" in refused.stderr
    refused_api = client.post(f"/ops/dead-letters/{dashed}/retry", headers=ops.headers)
    assert refused_api.status_code == 422
    assert refused_api.json["type"] == "urn:reminders:problem:not-retryable"
    assert cli(stack, "dlq", "purge", hexed, "--as", "pat").returncode == 0
    assert client.delete(f"/ops/dead-letters/{dashed}", headers=ops.headers).status_code == 204
    assert [letter.broker_id for letter in dead_letters(broker, QUEUE_NAME)] == [
        broker_id for broker_id in poison if broker_id not in (dashed, hexed)
    ]
    assert queue_depth(broker, QUEUE_NAME).dead == 1
    assert stack.states() == {"sent": 7}


def malformed(*args: Any) -> Message[Any]:
    return Message(
        queue_name=QUEUE_NAME,
        actor_name="send_reminder",
        args=args,
        kwargs={},
        options={},
        message_id=str(uuid.uuid4()),
    )


def dead_lettered_count() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "reminders_dead_lettered"
        for sample in metric.samples
        if sample.name == "reminders_dead_lettered_total"
    )


@pytest.mark.slow
def test_a_malformed_message_is_one_dead_letter_event_and_is_listed(
    stack: Stack, capfd, api_client_for
) -> None:
    """Real time: real `dramatiq workers.app` processes read the poison from Redis and log to a
    pipe."""
    from shared.logs import configure_logging

    configure_logging("INFO")
    broker, _ = stack.broker(max_retries=3, min_backoff_ms=20, max_backoff_ms=100)
    wrong_count = broker.enqueue(malformed("only-one-argument"))  # TypeError: retried
    not_a_uuid = broker.enqueue(malformed("not-a-uuid", "yesterday"))  # fails at once
    counted_before = dead_lettered_count()

    with stack.run_workers(broker):
        assert stack.wait_for(lambda: len(dead_letters(broker, QUEUE_NAME)) == 2, 20)

    events = [
        json.loads(line)
        for line in capfd.readouterr().err.splitlines()
        if line.startswith("{") and '"reminder.' in line
    ]
    dead = Counter(e["message_id"] for e in events if e["event"] == "reminder.dead_lettered")
    assert dead == {wrong_count.message_id: 1, not_a_uuid.message_id: 1}
    assert dead_lettered_count() - counted_before == 2
    retried = [e["message_id"] for e in events if e["event"] == "reminder.retrying"]
    assert retried == [wrong_count.message_id] * 3

    # No reminder row has these message IDs: still listed, consistently with the queue depth.
    ops = create_account(stack.engine, "olivia", operator=True)
    client = api_client_for(stack)
    page = client.get("/ops/dead-letters", headers=ops.headers).json
    expected = {wrong_count.message_id, not_a_uuid.message_id}
    assert {item["message_id"] for item in page["items"]} == expected
    assert page["error_types"] == {"UnmatchedMessage": 2}
    listed = json.loads(cli(stack, "dlq", "list", "--json").stdout)["items"]
    assert {item["message_id"] for item in listed} == expected
    queues = json.loads(cli(stack, "dlq", "queues", "--json").stdout)
    assert [q["dead"] for q in queues if q["queue"] == QUEUE_NAME] == [len(listed)]
