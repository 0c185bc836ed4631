"""A worker host whose clock runs ahead never delivers a reminder early (SPEC §4.2).

Every worker host decides with its own clock when a delayed message is due (Dramatiq's
hand-over compares its ``eta`` with the host's time), and its producer decides with it what
is due at once. A host 2 s ahead therefore releases reminders 2 s early; the delivery's
check, made on the database server's clock, puts them back until their remind time.

The worker group runs with its wall clock 2 s ahead (`tests/clock_ahead`); this process,
the producer it runs, PostgreSQL and the receiver keep the right one, so a request the
receiver gets before its remind time, by its own clock, was early.

Real time: the guarantee is about remind times on a real clock.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.store.models import Task
from tests.conftest import Account
from tests.pipeline.conftest import BIN, ROOT, Receiver, Stack
from tests.processes import json_lines, tail
from workers.producer import scan_due_tasks

AHEAD_SECONDS = 2
CLOCK_AHEAD = ROOT / "tests" / "clock_ahead"  # its sitecustomize moves the clock


def start_worker_ahead(stack: Stack, settings: dict[str, object], log: Path) -> None:
    env = stack.env(**settings)
    env["PYTHONPATH"] = str(CLOCK_AHEAD)
    env["CLOCK_AHEAD_SECONDS"] = str(AHEAD_SECONDS)
    argv = [str(BIN / "reminders"), "worker", "--processes", "1", "--threads", "4"]
    stack.spawn_logged(argv, env, log)
    ready = stack.wait_for(lambda: "ready for action" in log.read_text(), 30, 0.2)
    assert ready, tail(log)


def remind_in(stack: Stack, owner: Account, seconds: list[int]) -> list[Task]:
    """One task per count of seconds: its remind time that many whole seconds from now (and
    up to one more), its due date a minute later."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    return [
        stack.add_task(owner, start + timedelta(seconds=second + 60), remind_before_seconds=60)
        for second in seconds
    ]


@pytest.mark.slow
def test_a_worker_whose_clock_is_two_seconds_ahead_never_delivers_early(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    settings = {"webhook_url": receiver.url, "webhook_secret": "s"}
    log = tmp_path / "worker.log"
    start_worker_ahead(stack, settings, log)

    # Enqueued ahead by a producer with the right clock: delayed to their remind times,
    # which the worker's clock reaches 2 s early.
    owner = stack.account()
    ahead = remind_in(stack, owner, [3 + i % 4 for i in range(8)])
    producer, actors = stack.broker(**settings)
    assert scan_due_tasks(stack.sessions, producer, stack.settings(**settings)).enqueued == 8
    # Left to the producer the worker host runs (a tick): due within 1-2 s, so by that
    # host's clock due already.
    soon = remind_in(stack, owner, [i % 2 for i in range(4)])
    actors.scan_due_tasks.send()

    count = len(ahead) + len(soon)
    assert stack.wait_for(lambda: stack.states() == {"sent": count}, 30, 0.2), stack.states()
    time.sleep(0.5)  # anything sent twice would have arrived by now

    rows = {str(row.message_id): row for row in stack.reminders()}
    receipts = Counter(receiver.keys())
    assert set(receipts) == set(rows) and set(receipts.values()) == {1}, receipts
    # By the receiver's clock (the right one): how long after its remind time each arrived.
    lateness = {r.key: r.wall - rows[r.key].remind_at.timestamp() for r in receiver.receipts}
    early = {key: -late for key, late in lateness.items() if late < 0}
    assert early == {}, f"received before the remind time by (s): {early}"
    assert all(row.sent_at is not None and row.sent_at >= row.remind_at for row in rows.values())
    # The worker's clock was ahead: it released reminders early, and they were put back.
    put_back = [line for line in json_lines(log) if line.get("event") == "reminder.early"]
    assert put_back, tail(log)
    print(f"{len(put_back)} put back; received {max(lateness.values()):.3f} s late at most")
