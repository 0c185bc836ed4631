"""Fair sharing between worker hosts: a slow one holds little work (SPEC §8).

Each worker process fetches at most ``REMINDERS_PREFETCH_PER_THREAD`` reminders per thread
ahead of its threads. A host whose threads are all busy on a slow receiver (or behind a
slow link, or cut off) holds no more than that back from the others; a host with free
threads takes the rest.

Real time: real worker groups, and a receiver that takes a second per request.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.pipeline.conftest import BIN, Receiver, Stack
from tests.processes import tail
from workers.producer import scan_due_tasks

PREFETCH_PER_THREAD = 2


def start_group(stack: Stack, env: dict[str, str], log: Path, threads: int) -> None:
    argv = [str(BIN / "reminders"), "worker", "--processes", "1", "--threads", str(threads)]
    stack.spawn_logged(argv, env, log)


@pytest.mark.slow
def test_a_busy_host_holds_at_most_its_window_and_a_free_one_does_the_rest(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """The busy group starts first, alone with 60 due reminders, and its two threads wait a
    second on each; the free group then comes. The busy one never holds more than
    threads x ``REMINDERS_PREFETCH_PER_THREAD`` reminders unsent, and the free one sends
    most of them."""
    slow = Receiver(delay_seconds=1.0).start()
    try:
        settings = {"webhook_secret": "s", "prefetch_per_thread": PREFETCH_PER_THREAD}
        count, busy_threads = 60, 2
        stack.add_due_tasks(stack.account(), count)
        producer, _ = stack.broker(**settings)
        assert (
            scan_due_tasks(stack.sessions, producer, stack.settings(**settings)).enqueued == count
        )

        before = stack.broker_instances()
        busy_log = tmp_path / "busy.log"
        start_group(stack, stack.env(webhook_url=slow.url, **settings), busy_log, busy_threads)
        [busy] = stack.new_instances(before, 1)
        assert stack.wait_for(lambda: len(slow.receipts) >= busy_threads, 60), tail(busy_log)
        start_group(
            stack, stack.env(webhook_url=receiver.url, **settings), tmp_path / "free.log", 4
        )

        most_held = 0
        deadline = time.monotonic() + 120
        while stack.states() != {"sent": count} and time.monotonic() < deadline:
            most_held = max(most_held, len(stack.unsent(stack.held(busy))))
            time.sleep(0.05)
        assert stack.states() == {"sent": count}
    finally:
        slow.stop()

    keys = [r.key for r in slow.receipts] + [r.key for r in receiver.receipts]
    assert Counter(keys) == Counter({str(row.message_id): 1 for row in stack.reminders()})
    print(f"busy host: held at most {most_held}, sent {len(slow.receipts)} of {count}")
    assert 0 < most_held <= busy_threads * PREFETCH_PER_THREAD
    assert len(receiver.receipts) > count / 2
