"""On time, never early (SPEC §4.2): reminders are enqueued ahead, delayed to their time.

A scan enqueues what falls due within the lookahead as delayed messages; the API enqueues
a reminder planned inside that window at once. Workers hold a delayed message until its
remind time; one that arrives early anyway is put back until then.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.broker.queue import QUEUE_NAME, reminder_message
from shared.broker.redis_broker import enqueue_batch
from shared.planning.keys import message_id
from shared.store.models import Task
from tests.pipeline.conftest import BIN, Receiver, Stack, reminder_id
from workers.producer import scan_due_tasks


def add_reminders_at(stack: Stack, remind_times: list[datetime], lead: int = 60) -> list[Task]:
    """One task per remind time (due ``lead`` seconds after it)."""
    owner = stack.account()
    tasks = []
    for when in remind_times:
        tasks.append(stack.add_task(owner, when + timedelta(seconds=lead), lead))
    return tasks


def webhook(stack: Stack, receiver: Receiver, **more):
    return stack.broker(webhook_url=receiver.url, webhook_secret="s", **more)


def assert_sent_once_never_early(stack: Stack, receiver: Receiver, count: int) -> None:
    rows = stack.reminders()
    sent = [row for row in rows if row.state == "sent"]
    assert len(sent) == count, stack.states()
    assert all(row.sent_at is not None and row.sent_at >= row.remind_at for row in sent)
    assert sorted(receiver.keys()) == sorted(str(row.message_id) for row in sent)


@pytest.mark.slow
def test_reminders_enqueued_ahead_go_out_at_their_remind_times_with_no_further_scan(
    stack: Stack, receiver: Receiver
) -> None:
    """Real time: delayed messages are released by the worker's own clock at their remind time,
    which is what on time means."""
    now = datetime.now(UTC).replace(microsecond=0)
    add_reminders_at(stack, [now + timedelta(seconds=2 + second) for second in range(6)])
    broker, _ = webhook(stack, receiver)

    result = scan_due_tasks(stack.sessions, broker, stack.settings())
    assert result.enqueued == 6
    assert stack.states() == {"queued": 6}
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states() == {"sent": 6}, 30), stack.states()

    assert_sent_once_never_early(stack, receiver, 6)


@pytest.mark.slow
def test_a_task_created_with_its_remind_time_5_s_ahead_is_sent_without_any_scan(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: delayed messages are released by the worker's own clock at their remind time,
    which is what on time means."""
    client = api_client_for(stack)
    alice = stack.account()
    remind = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    body = {"title": "soon", "due_at": (remind + timedelta(seconds=60)).isoformat()}
    created = client.post(
        "/tasks", json={**body, "remind_before_seconds": 60}, headers=alice.headers
    )
    assert created.status_code == 201
    assert created.json["reminder"]["remind_at"] == remind.isoformat().replace("+00:00", "Z")
    broker, _ = webhook(stack, receiver)

    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states() == {"sent": 1}, 30), stack.states()

    assert_sent_once_never_early(stack, receiver, 1)


@pytest.mark.slow
def test_enqueued_ahead_then_changed_delivers_nothing_and_moved_back_delivers_once(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: delayed messages are released by the worker's own clock at their remind time,
    which is what on time means."""
    client = api_client_for(stack)
    alice = stack.account()
    remind = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    due = remind + timedelta(seconds=60)

    def create() -> str:
        body = {"title": "t", "due_at": due.isoformat(), "remind_before_seconds": 60}
        response = client.post("/tasks", json=body, headers=alice.headers)
        assert response.status_code == 201
        return str(response.json["id"])

    rescheduled, finished, deleted, moved_back = (create() for _ in range(4))
    broker, _ = webhook(stack, receiver)
    assert stack.states() == {"queued": 4}  # enqueued ahead by the API, delayed to `remind`
    later = {"due_at": (due + timedelta(days=1)).isoformat()}
    changes = [
        client.patch(f"/tasks/{rescheduled}", json=later, headers=alice.headers),
        client.patch(f"/tasks/{finished}", json={"status": "done"}, headers=alice.headers),
        client.delete(f"/tasks/{deleted}", headers=alice.headers),
        client.patch(f"/tasks/{moved_back}", json=later, headers=alice.headers),
        client.patch(
            f"/tasks/{moved_back}", json={"due_at": due.isoformat()}, headers=alice.headers
        ),
    ]
    assert [change.status_code for change in changes] == [200, 200, 204, 200, 200]

    with stack.run_workers(broker):
        assert stack.wait_for(lambda: len(receiver.keys()) == 1, 30)
        time.sleep(1.5)  # the others' messages came due too, and did nothing

    assert receiver.keys() == [str(message_id(uuid.UUID(moved_back), due, 60))]
    states = {(str(row.task_id), row.due_at): row.state for row in stack.reminders()}
    assert states[(moved_back, due)] == "sent"
    assert states[(rescheduled, due)] == "cancelled"
    assert states[(finished, due)] == "cancelled"
    assert states[(deleted, due)] == "cancelled"


def test_a_message_that_arrives_early_is_not_delivered_before_its_remind_time(
    stack: Stack, receiver: Receiver, capfd
) -> None:
    """Real time: delayed messages are released by the worker's own clock at their remind time,
    which is what on time means."""
    from shared.logs import configure_logging

    configure_logging("INFO")
    [task] = add_reminders_at(
        stack, [datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)]
    )
    broker, _ = webhook(stack, receiver)
    occurrence = reminder_id(task)
    enqueue_batch(broker, [reminder_message(task.id, task.due_at, occurrence)])  # no delay

    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states() == {"sent": 1}, 30), stack.states()

    assert_sent_once_never_early(stack, receiver, 1)
    events = [line for line in capfd.readouterr().err.splitlines() if '"reminder.early"' in line]
    assert len(events) == 1 and str(occurrence) in events[0]


@pytest.mark.slow
def test_a_sigkilled_worker_holding_delayed_messages_loses_none(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """Real time: a real worker process is SIGKILLed holding delayed messages; recovery comes from
    its heartbeat expiring."""
    count = 40
    settings = {
        "webhook_url": receiver.url,
        "webhook_secret": "s",
        "heartbeat_timeout_ms": 2000,
        "requeue_after_seconds": 600,  # recovery must come from the heartbeat
    }
    now = datetime.now(UTC).replace(microsecond=0)
    add_reminders_at(stack, [now + timedelta(seconds=10 + index % 4) for index in range(count)])
    producer, _ = stack.broker(**settings)
    assert scan_due_tasks(stack.sessions, producer, stack.settings(**settings)).enqueued == count
    env = stack.env(**settings)
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "1", "--threads", "2"]
    first = stack.spawn_logged(argv, env, tmp_path / "first.log")
    delay_queue = f"{producer.namespace}:{QUEUE_NAME}.DQ"
    # Every delayed message fetched: held in the worker's memory, not yet due.
    assert stack.wait_for(lambda: producer.client.llen(delay_queue) == 0, 20)
    assert stack.states() == {"queued": count} and receiver.keys() == []
    os.killpg(first.pid, signal.SIGKILL)  # the whole group: nothing is given back on exit
    first.wait(timeout=30)
    stack.spawn_logged(argv, env, tmp_path / "second.log")

    def all_sent() -> bool:
        scan_due_tasks(stack.sessions, producer, stack.settings(**settings))  # maintenance
        return stack.states() == {"sent": count}

    assert stack.wait_for(all_sent, 60, 0.5), stack.states()
    assert_sent_once_never_early(stack, receiver, count)
