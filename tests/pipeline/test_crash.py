"""SIGKILL a worker process mid-delivery: nothing lost, nothing sent twice (SPEC §4.6).

The bound: a message fetched by a worker that dies is given back once the worker's broker
heartbeat is ``REMINDERS_HEARTBEAT_TIMEOUT_MS`` old, by the maintenance every live worker
process runs each second (`shared.broker.heartbeat`), and by the producer on each scan; so
recovery takes at most heartbeat timeout + one second + delivery: 16 s and the delivery
with the defaults.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from shared.broker.heartbeat import MAX_BEAT_SECONDS
from shared.config import DEFAULT_HEARTBEAT_TIMEOUT_MS
from tests.pipeline.conftest import BIN, Receiver, Stack, reminder_id
from workers.producer import scan_due_tasks

ROOT = Path(__file__).resolve().parents[2]
TASKS = 200
THREADS = 4


def worker_children(group: psutil.Process) -> list[psutil.Process]:
    return [
        child
        for child in group.children(recursive=True)
        if "python" in child.name().lower() or "dramatiq" in " ".join(child.cmdline())
    ]


@pytest.mark.slow
def test_sigkilled_worker_loses_nothing_and_sends_nothing_twice(
    stack: Stack, receiver: Receiver
) -> None:
    """Real time: real worker processes are SIGKILLed; recovery comes from their heartbeats
    expiring."""
    receiver.delay_seconds = 0.05  # deliveries in progress when the kill lands
    heartbeat_ms = 3000
    settings = {
        "webhook_url": receiver.url,
        "webhook_secret": "s",
        "heartbeat_timeout_ms": heartbeat_ms,
        "requeue_after_seconds": 600,  # recovery must come from the heartbeat, not the lease
    }
    alice = stack.account()
    stack.add_due_tasks(alice, TASKS)
    producer_broker, _ = stack.broker(**settings)
    assert (
        scan_due_tasks(stack.sessions, producer_broker, stack.settings(**settings)).enqueued
        == TASKS
    )

    env = stack.env(**settings)
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "2", "--threads", str(THREADS)]
    first = stack.spawn(argv, env, cwd=ROOT)
    assert stack.wait_for(lambda: stack.states().get("sent", 0) >= 40, 60)

    victims = worker_children(psutil.Process(first.pid))
    assert victims, "no worker process to kill"
    victims[0].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    # Dramatiq's master stops the surviving processes when one dies; a supervisor restarts it.
    first.wait(timeout=60)
    stack.spawn(argv, env, cwd=ROOT)

    def all_sent() -> bool:
        scan_due_tasks(stack.sessions, producer_broker, stack.settings(**settings))
        return stack.states().get("sent", 0) == TASKS

    assert stack.wait_for(all_sent, timeout=90, interval=1.0), stack.states()
    recovery = time.monotonic() - killed_at

    rows = stack.reminders()
    assert len(rows) == TASKS and all(row.state == "sent" for row in rows)
    keys = receiver.keys()
    assert set(keys) == {str(row.message_id) for row in rows}
    # At-least-once at the channel: only deliveries cut off mid-commit can repeat.
    assert len(keys) - len(set(keys)) <= THREADS
    print(
        f"recovered {TASKS} reminders {recovery:.1f}s after SIGKILL; "
        f"{len(keys) - len(set(keys))} repeated webhook deliveries; finished at {datetime.now(UTC)}"
    )


@pytest.mark.slow
def test_a_delivery_cut_off_by_sigkill_is_redelivered_with_the_same_bytes(
    stack: Stack, receiver: Receiver
) -> None:
    """SPEC §4.8 across a crash: the worker dies while the receiver holds the first request.

    Real time: real worker processes are SIGKILLed; recovery comes from their heartbeats
    expiring."""
    first_request = threading.Event()
    release = threading.Event()

    def answer(n: int) -> int:
        if n == 0:
            first_request.set()
            release.wait(30)  # the worker is killed while it waits for this answer
        return 200

    receiver.script = answer
    settings = {
        "webhook_url": receiver.url,
        "webhook_secret": "s",
        "heartbeat_timeout_ms": 2000,
        "requeue_after_seconds": 600,
    }
    alice = stack.account()
    [task] = stack.add_due_tasks(alice, 1)
    producer_broker, _ = stack.broker(**settings)
    scan_due_tasks(stack.sessions, producer_broker, stack.settings(**settings))
    env = stack.env(**settings)
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "1", "--threads", "1"]
    try:
        first = stack.spawn(argv, env, cwd=ROOT)
        assert first_request.wait(60), "the worker never called the webhook"
        os.killpg(first.pid, signal.SIGKILL)  # the whole group: nothing is requeued on exit
        first.wait(timeout=30)
        stack.spawn(argv, env, cwd=ROOT)

        def sent() -> bool:
            scan_due_tasks(stack.sessions, producer_broker, stack.settings(**settings))
            return stack.states().get("sent", 0) == 1

        assert stack.wait_for(sent, timeout=60, interval=0.5), stack.states()
    finally:
        release.set()

    cut_off, redelivered = receiver.receipts
    assert cut_off.key == redelivered.key == str(reminder_id(task))
    assert redelivered.body == cut_off.body


# What the recovered reminders' delivery may take on top of the bound, on a busy machine.
DELIVERY_ALLOWANCE_SECONDS = 5


@pytest.mark.slow
def test_a_worker_group_killed_for_good_has_its_reminders_sent_by_another_within_the_bound(
    stack: Stack, receiver: Receiver
) -> None:
    """A worker group holding reminders is SIGKILLed and never comes back; the other group,
    running all along, sends them once the dead one's heartbeat is
    ``REMINDERS_HEARTBEAT_TIMEOUT_MS`` old, within a second more: no producer scan, no
    restart. Only the requests in flight at the kill (one per thread) reach a receiver twice.

    Real time: the default heartbeat timeout is the bound under test."""
    stuck = Receiver(delay_seconds=60).start()  # the doomed group's requests never end
    try:
        settings = {"webhook_secret": "s"}
        count, threads = 20, 2
        stack.add_due_tasks(stack.account(), count)
        producer, _ = stack.broker(**settings)
        assert (
            scan_due_tasks(stack.sessions, producer, stack.settings(**settings)).enqueued == count
        )

        before = stack.broker_instances()
        doomed_env = stack.env(webhook_url=stuck.url, webhook_timeout_seconds=60, **settings)
        argv = [str(BIN / "reminders"), "worker", "--processes", "1", "--threads", str(threads)]
        doomed = stack.spawn(argv, doomed_env, cwd=ROOT)
        [instance] = stack.new_instances(before, 1)
        # Every thread waits on the receiver, the rest of the window waits for a thread.
        assert stack.wait_for(lambda: len(stuck.receipts) == threads, 60)
        held = stack.held(instance)
        assert len(held) > threads, held

        before = stack.broker_instances()
        stack.spawn(argv, stack.env(webhook_url=receiver.url, **settings), cwd=ROOT)
        stack.new_instances(before, 1)
        assert stack.wait_for(lambda: len(receiver.receipts) >= count - len(held), 60)
        os.killpg(doomed.pid, signal.SIGKILL)  # the whole group: nothing requeued on the way out
        killed_at = time.monotonic()
        doomed.wait(timeout=30)

        timeout = DEFAULT_HEARTBEAT_TIMEOUT_MS / 1000
        assert stack.wait_for(lambda: stack.states() == {"sent": count}, timeout + 60, 0.5)
    finally:
        stuck.stop()

    receipts = {receipt.key: receipt.at for receipt in receiver.receipts}
    assert len(receipts) == len(receiver.receipts) == count  # each once at the live receiver
    recovered_after = max(receipts[key] for key in held) - killed_at
    print(f"{len(held)} held reminders sent {recovered_after:.1f} s after the SIGKILL")
    assert recovered_after <= timeout + MAX_BEAT_SECONDS + DELIVERY_ALLOWANCE_SECONDS
    assert recovered_after >= timeout - MAX_BEAT_SECONDS  # a live group is not judged dead
    # The requests in flight at the kill reached the stuck receiver, unanswered: only they
    # were made twice, each with the same key.
    assert {receipt.key for receipt in stuck.receipts} <= held
