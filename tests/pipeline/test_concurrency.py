"""Several producers and a group of real worker processes at once send each reminder once.

SPEC §4.1: exactly one ``sent`` reminder per occurrence under any interleaving of several
schedulers and several worker processes; §5: the webhook sees each occurrence under one
stable ``Idempotency-Key`` (its message ID). Everything here runs as real processes
(``dramatiq workers.app``, ``reminders scan``, ``reminders scheduler``) against the test's
own PostgreSQL schema and Redis namespace, delivering to a local webhook receiver.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline.conftest import BIN, Receiver, Stack

REPO = Path(__file__).resolve().parents[2]
SECRET = "concurrency-signing-secret"
PROCESSES, THREADS = 4, 4


def start_workers(stack: Stack, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A Dramatiq worker group of PROCESSES x THREADS, its output in ``log``."""
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", str(PROCESSES)]
    return stack.spawn_logged([*argv, "--threads", str(THREADS)], env, log)


def scan_twice_at_once(
    stack: Stack, env: dict[str, str], timeout: float = 45
) -> list[dict[str, Any]]:
    """Two ``reminders scan --json`` processes started together; their summaries."""
    scans = [
        stack.spawn(
            [str(BIN / "reminders"), "scan", "--json"],
            env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    summaries = []
    for process in scans:
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err.decode(errors="replace")[-2000:]
        summaries.append(json.loads(out.decode().strip().splitlines()[-1]))
    return summaries


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def sent_count(stack: Stack) -> int:
    return stack.states().get("sent", 0)


def assert_each_reminder_sent_once(stack: Stack, receiver: Receiver, count: int) -> None:
    rows = stack.reminders()
    assert len(rows) == count
    assert Counter(row.state for row in rows) == {"sent": count}
    keys = receiver.keys()
    duplicates = {key: n for key, n in Counter(keys).items() if n > 1}
    assert duplicates == {}, f"{len(duplicates)} occurrences reached the webhook more than once"
    assert len(keys) == count
    assert set(keys) == {str(row.message_id) for row in rows}
    for receipt in receiver.receipts:
        assert receipt.payload["message_id"] == receipt.key


@pytest.mark.slow
def test_two_schedulers_and_four_worker_processes_send_1000_reminders_once(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """Waves of due tasks, each raced for by two producers while four processes deliver.

    Real time: real scheduler and worker processes race one another."""
    total, waves = 1000, 5
    alice = stack.account()
    env = stack.env(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        scan_batch_size=25,  # many small claim transactions: the two producers interleave
        requeue_after_seconds=5,  # the lost-message check runs against a live backlog too
    )
    workers = start_workers(stack, env, tmp_path / "workers.log")

    summaries: list[dict[str, Any]] = []
    for _ in range(waves):
        stack.add_due_tasks(alice, total // waves)
        summaries += scan_twice_at_once(stack, env)
    deadline = time.monotonic() + 45
    while sent_count(stack) < total and time.monotonic() < deadline:
        summaries += scan_twice_at_once(stack, env)  # idle rounds: nothing may be re-sent
        stack.wait_for(lambda: sent_count(stack) >= total, 1.0)

    assert workers.poll() is None, tail(tmp_path / "workers.log")
    assert sent_count(stack) == total, (stack.states(), tail(tmp_path / "workers.log"))
    time.sleep(1.0)  # let any stray duplicate message finish before counting receipts
    assert_each_reminder_sent_once(stack, receiver, total)
    # SKIP LOCKED: concurrent producers split the claims, never doubling one.
    assert sum(s["enqueued"] for s in summaries) == total
    assert sum(s["missed"] for s in summaries) == 0
    # A backlog the broker still holds is not enqueued a second time.
    assert sum(s["requeued"] for s in summaries) == 0
    enqueued_ids = [mid for s in summaries for mid in s["message_ids"]]
    assert len(enqueued_ids) == len(set(enqueued_ids)) == total


@pytest.mark.slow
def test_two_periodiq_schedulers_fire_together_and_each_reminder_is_sent_once(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """Two real ``reminders scheduler`` processes: both fire at start, two scans race.

    Real time: real scheduler and worker processes race one another."""
    total = 600
    alice = stack.account()
    stack.add_due_tasks(alice, total)
    env = stack.env(webhook_url=receiver.url, webhook_secret=SECRET, scan_batch_size=25)
    log = tmp_path / "workers.log"
    start_workers(stack, env, log)
    for n in range(2):
        with (tmp_path / f"scheduler{n}.log").open("wb") as out:
            stack.spawn(
                [str(BIN / "reminders"), "scheduler"],
                env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    # periodiq sends at start (every minute matches "* * * * *"), or within 5 s if it
    # started in a minute's last seconds.
    assert stack.wait_for(lambda: sent_count(stack) >= total, 50, interval=0.5), (
        stack.states(),
        tail(log),
    )
    time.sleep(1.0)

    assert_each_reminder_sent_once(stack, receiver, total)
    events = [
        event
        for event in map(_json_or_none, log.read_text(errors="replace").splitlines())
        if event and event.get("event") in {"scan.finished", "tick.superseded"}
    ]
    scans = [event for event in events if event["event"] == "scan.finished"]
    # One tick per scheduler at start (more if the test crossed a minute boundary): each
    # runs the producer, or is skipped when a scan started after its time already (the
    # two schedulers' ticks of one second: one scan, not two).
    assert len(events) >= 2, "each scheduler's tick reaches a worker"
    assert scans
    assert sum(scan["enqueued"] for scan in scans) == total


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
