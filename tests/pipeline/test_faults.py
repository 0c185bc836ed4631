"""Infrastructure faults under real worker processes: the database rebuilds what is lost.

SPEC §4.6: the broker holds nothing the database cannot rebuild (a flushed Redis is
refilled by the producer from ``queued`` rows); §4.4: database errors are transient and
retried; §4.1: through all of it each occurrence ends ``sent`` exactly once, and the
webhook sees every occurrence under its one ``Idempotency-Key``.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import redis

from tests.conftest import PG_URL, REDIS_URL
from tests.pipeline.conftest import BIN, Receiver, Stack

REPO = Path(__file__).resolve().parents[2]
SECRET = "faults-signing-secret"
PROCESSES, THREADS = 4, 4


def start_workers(stack: Stack, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``reminders worker``: a Dramatiq group of PROCESSES x THREADS, its output in ``log``."""
    argv = [str(BIN / "reminders"), "worker", "-p", str(PROCESSES), "-t", str(THREADS)]
    return stack.spawn_logged(argv, env, log)


def scan(stack: Stack, env: dict[str, str]) -> str:
    """One ``reminders scan`` run; its summary line."""
    process = stack.spawn(
        [str(BIN / "reminders"), "scan"],
        env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode().splitlines()[0]


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def sent_count(stack: Stack) -> int:
    return stack.states().get("sent", 0)


def receipt_duplicates(receiver: Receiver) -> int:
    """Webhook requests beyond the first for the same Idempotency-Key."""
    keys = receiver.keys()
    return len(keys) - len(set(keys))


def assert_all_sent_and_every_key_received(stack: Stack, receiver: Receiver, count: int) -> None:
    rows = stack.reminders()
    assert len(rows) == count
    assert Counter(row.state for row in rows) == {"sent": count}
    assert all(row.sent_at is not None for row in rows)
    keys = set(receiver.keys())
    assert len(keys) == count
    assert keys == {str(row.message_id) for row in rows}


@pytest.mark.slow
def test_redis_flushed_mid_run_is_rebuilt_by_the_producer(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """Real time: Redis is flushed or PostgreSQL connections killed under real worker processes."""
    total = 300
    receiver.delay_seconds = 0.25  # ~5 s of work for 16 threads: the flush lands mid-run
    alice = stack.account()
    stack.add_due_tasks(alice, total)
    env = stack.env(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        requeue_after_seconds=2,
        heartbeat_timeout_ms=3000,
    )
    log = tmp_path / "workers.log"
    start_workers(stack, env, log)
    assert scan(stack, env).startswith(f"enqueued {total},")
    assert stack.wait_for(lambda: sent_count(stack) >= 30, 20), (stack.states(), tail(log))

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{stack.namespace}:*", count=1000))
        assert keys, "the namespace held the queue"
        client.delete(*keys)
        sent_at_flush = sent_count(stack)
        assert sent_at_flush < total, "the flush must land while work is outstanding"
    finally:
        client.close()

    summaries = []
    deadline = time.monotonic() + 45
    while sent_count(stack) < total and time.monotonic() < deadline:
        summaries.append(scan(stack, env))
        stack.wait_for(lambda: sent_count(stack) >= total, 1.0)
    assert sent_count(stack) == total, (stack.states(), summaries, tail(log))
    time.sleep(1.0)  # a stray duplicate message, if any, is handled before counting

    assert_all_sent_and_every_key_received(stack, receiver, total)
    requeued = sum(int(line.split("requeued ")[1].split(",")[0]) for line in summaries)
    assert requeued > 0, f"the producer rebuilt the lost queue: {summaries}"
    # A repeat can only come from a message that was being delivered when Redis was
    # flushed, and at most one per worker thread; in practice the row lock makes it 0.
    duplicates = receipt_duplicates(receiver)
    assert duplicates <= PROCESSES * THREADS, duplicates
    print(
        f"redis flush: sent before flush {sent_at_flush}, requeued {requeued}, "
        f"receipt duplicates {duplicates}"
    )


def _application_name(database_url: str) -> str:
    [name] = parse_qs(urlsplit(database_url).query)["application_name"]
    return name


@pytest.mark.slow
def test_postgres_connections_killed_mid_run_are_retried(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """Real time: Redis is flushed or PostgreSQL connections killed under real worker processes."""
    total = 300
    receiver.delay_seconds = 0.1  # deliveries take long enough to be killed mid-transaction
    alice = stack.account()
    stack.add_due_tasks(alice, total)
    env = stack.env(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        # Headroom: on a busy machine a delivery's transaction is open long enough that
        # one message can be caught by several kills in a row; none may run out of retries.
        max_retries=10,
        min_backoff_ms=100,
        max_backoff_ms=1000,
    )
    assert scan(stack, env).startswith(f"enqueued {total},")  # before the kills begin

    application_name = _application_name(stack.database_url)
    terminated: list[int] = []
    stop = threading.Event()

    def kill_sessions() -> None:
        # A connection outside the schema's application_name: it is never killed itself.
        with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as admin:
            while not stop.is_set():
                rows = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND pid <> pg_backend_pid()",
                    (application_name,),
                ).fetchall()
                terminated.append(sum(1 for (killed,) in rows if killed))
                stop.wait(0.7)

    killer = threading.Thread(target=kill_sessions, daemon=True)
    killer.start()
    log = tmp_path / "workers.log"
    start_workers(stack, env, log)
    try:
        deadline = time.monotonic() + 45
        finished = False
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the test's own session may be killed too
                finished = sent_count(stack) >= total
            if finished:
                break
            time.sleep(0.3)
    finally:
        stop.set()
        killer.join(timeout=10)
    assert finished, (stack.states(), tail(log))
    time.sleep(1.0)

    assert sum(terminated) > 0 and sum(1 for n in terminated if n) >= 3, terminated
    assert "failed" not in stack.states()
    assert_all_sent_and_every_key_received(stack, receiver, total)
    # A repeat needs a delivery whose commit was killed after the webhook accepted it.
    duplicates = receipt_duplicates(receiver)
    assert duplicates <= sum(terminated), (duplicates, sum(terminated))
    retried = log.read_text(errors="replace").count('"reminder.retrying"')
    assert retried > 0, "some deliveries were interrupted by a killed connection"
    print(
        f"pg kills: {sum(terminated)} backends in {len(terminated)} rounds, "
        f"{retried} retries, receipt duplicates {duplicates}"
    )


@pytest.mark.slow
def test_redis_flushed_while_retries_wait_out_their_backoff_still_sends_each_once(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """Messages waiting in the delayed queue exist only in Redis: a flush loses them too.

    Real time: Redis is flushed or PostgreSQL connections killed under real worker processes."""
    total = 100
    receiver.script = lambda n: 503 if n < total else 200  # every first attempt fails
    alice = stack.account()
    stack.add_due_tasks(alice, total)
    env = stack.env(
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        requeue_after_seconds=2,
        max_retries=10,
        min_backoff_ms=2000,  # each retry waits >= 2 s in the delayed queue
        max_backoff_ms=4000,
    )
    log = tmp_path / "workers.log"
    start_workers(stack, env, log)
    assert scan(stack, env).startswith(f"enqueued {total},")
    assert stack.wait_for(lambda: len(receiver.receipts) >= total, 20), tail(log)

    client = redis.Redis.from_url(REDIS_URL)
    try:
        delayed = client.hlen(f"{stack.namespace}:reminders.DQ.msgs")
        keys = list(client.scan_iter(match=f"{stack.namespace}:*", count=1000))
        client.delete(*keys)
    finally:
        client.close()
    assert delayed > 0, "retries were waiting in the delayed queue when Redis was flushed"
    assert sent_count(stack) < total

    summaries = []
    deadline = time.monotonic() + 45
    while sent_count(stack) < total and time.monotonic() < deadline:
        summaries.append(scan(stack, env))
        stack.wait_for(lambda: sent_count(stack) >= total, 1.0)
    assert sent_count(stack) == total, (stack.states(), summaries, tail(log))
    time.sleep(1.0)

    assert_all_sent_and_every_key_received(stack, receiver, total)
    with receiver.lock:  # requests from the total-th on were answered 200
        accepted = [receipt.key for receipt in receiver.receipts[total:]]
    assert set(accepted) == {str(row.message_id) for row in stack.reminders()}
    duplicates = len(accepted) - len(set(accepted))
    assert duplicates <= PROCESSES * THREADS, duplicates
    print(
        f"redis flush with retries delayed: {delayed} delayed at flush, "
        f"accepted duplicates {duplicates}, scans {summaries}"
    )
