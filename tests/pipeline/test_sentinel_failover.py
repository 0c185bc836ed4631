"""A Redis Sentinel failover loses no reminder and repeats none (SPEC §4.10).

Every process is pointed at a real Sentinel set on loopback (a primary, its replica, three
Sentinels; a primary silent for 1 s is down) through ``REDIS_URL=redis+sentinel://…``: the
producer and the API's immediate enqueue put reminders on its primary, workers deliver
them, the rate limits count there, the ops API and the CLI read there. Then the primary
fails over under load, killed (SIGKILL) or demoted while it runs on (``SENTINEL
FAILOVER``, its open connections answering ``READONLY``): every reminder is sent exactly
once, the worker processes stay up, and the API answers every ``POST`` with a 201 or a 503.

Real time: real Sentinels notice the dead primary after 1 s and promote its replica, and
Dramatiq's consumers reconnect after their 3 s restart delay; about 40 s in all.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from shared.broker.queue import QUEUE_NAME, SCAN_QUEUE_NAME
from shared.broker.redis_broker import dead_letters
from tests.api.test_database_outage import procfile_web
from tests.conftest import create_account
from tests.pipeline.conftest import BIN, ROOT, Receiver, Stack
from tests.private_servers import PrivateSentinelSet, private_sentinel_set
from tests.processes import tail
from workers.producer import scan_due_tasks

PASSWORD = "sentinel-pipeline-pw"
TASKS = 400
THREADS = 4


@pytest.fixture(scope="module")
def shared_set() -> Iterator[PrivateSentinelSet]:
    """One set for the tests that do not fail it over (each has its own namespace)."""
    with private_sentinel_set(PASSWORD) as servers:
        yield servers


@pytest.fixture
def sentinel_set() -> Iterator[PrivateSentinelSet]:
    with private_sentinel_set(PASSWORD) as servers:
        yield servers


def test_every_process_kind_uses_the_sentinel_sets_primary(
    stack: Stack, receiver: Receiver, shared_set: PrivateSentinelSet, tmp_path: Path
) -> None:
    stack.overrides.update(
        redis_url=shared_set.url, webhook_url=receiver.url, webhook_secret="s", rate_limit=""
    )
    owner = stack.account("owner")
    operator = create_account(stack.engine, "olga", operator=True)
    app = create_app(stack.settings(), engine=stack.engine)
    app.testing = True
    api = app.test_client()

    # The API's immediate enqueue: a task whose reminder is due now is queued at once.
    due = {"title": "now", "due_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()}
    created = api.post("/tasks", json=due, headers=owner.headers)
    assert created.status_code == 201, created.get_data(as_text=True)
    assert states_of(stack, created.json["id"]) == ["queued"]
    # The producer.
    stack.add_due_tasks(owner, 5)
    broker, _ = stack.broker()
    assert scan_due_tasks(stack.sessions, broker, stack.settings()).enqueued == 5
    # The ops API reads the queue there.
    queues = api.get("/ops/queues", headers=operator.headers)
    assert queues.status_code == 200
    [reminders] = [q for q in queues.json["items"] if q["queue"] == QUEUE_NAME]
    assert reminders["ready"] == 6
    assert shared_set.primary().cli("llen", f"{stack.namespace}:{QUEUE_NAME}") == "6"
    # So does the CLI.
    listed = subprocess.run(
        [str(BIN / "reminders"), "dlq", "queues", "--json"],
        env=stack.env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert {"queue": QUEUE_NAME, "ready": 6} in [
        {"queue": q["queue"], "ready": q["ready"]} for q in json.loads(listed.stdout)
    ]
    # And the workers deliver from there.
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states() == {"sent": 6}, 30), stack.states()
    assert sorted(receiver.keys()) == sorted({str(row.message_id) for row in stack.reminders()})
    # The scheduler: periodiq sends its first tick at start, onto the scan queue there.
    scheduler = stack.spawn_logged(
        [str(BIN / "python"), "-m", "cli.launch", "periodiq", "workers.app"],
        stack.env(),
        tmp_path / "scheduler.log",
    )
    scans = f"{stack.namespace}:{SCAN_QUEUE_NAME}.msgs"
    assert stack.wait_for(lambda: shared_set.primary().cli("hlen", scans) == "1", 30), tail(
        tmp_path / "scheduler.log"
    )
    assert scheduler.poll() is None


def test_the_rate_limits_count_on_the_sentinel_sets_primary(
    stack: Stack, shared_set: PrivateSentinelSet
) -> None:
    stack.overrides.update(redis_url=shared_set.url, rate_limit="3/minute")
    owner = stack.account("owner")
    # Two API processes (apps) share the count: it lives in Redis, not in either.
    apps = [create_app(stack.settings(), engine=stack.engine) for _ in range(2)]
    clients = [app.test_client() for app in apps]

    statuses = [clients[n % 2].get("/tasks", headers=owner.headers).status_code for n in range(5)]

    assert statuses == [200, 200, 200, 429, 429]
    counters = shared_set.primary().cli("--scan", "--pattern", f"*{stack.namespace}:ratelimit*")
    assert counters, "no rate limit counter on the primary"


def states_of(stack: Stack, task_id: str) -> list[str]:
    """The states of a task's reminder rows."""
    return [row.state for row in stack.reminders() if str(row.task_id) == task_id]


def gaps(times: list[float], after: float) -> tuple[float, float]:
    """The longest silence between deliveries after ``after``: (its start, its end)."""
    points = [after, *sorted(t for t in times if t >= after)]
    return max(itertools.pairwise(points), key=lambda pair: pair[1] - pair[0])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "demoted"])
def test_the_primary_failing_over_under_load_loses_no_reminder_and_repeats_none(
    stack: Stack,
    receiver: Receiver,
    sentinel_set: PrivateSentinelSet,
    tmp_path: Path,
    how: str,
) -> None:
    """``killed``: SIGKILL, as a crash of its host. ``demoted``: a failover that leaves it
    running; the workers' connections to it then meet ``READONLY``, which must take them
    to the new primary as a lost connection does, not stop a consumer on an error.

    Real time: real Sentinels and real worker processes reconnecting."""
    # Deliveries are in flight when the primary goes, and for seconds after: the load (400
    # at 0.1 s each on 8 threads, about 5 s) outlasts a forced failover's negotiation.
    receiver.delay_seconds = 0.1
    settings = {"redis_url": sentinel_set.url, "webhook_url": receiver.url, "webhook_secret": "s"}
    stack.add_due_tasks(stack.account(), TASKS)
    broker, _ = stack.broker(**settings)
    assert scan_due_tasks(stack.sessions, broker, stack.settings(**settings)).enqueued == TASKS
    log = tmp_path / "workers.log"
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "2", "--threads", str(THREADS)]
    workers = stack.spawn_logged(argv, stack.env(**settings), log)
    assert stack.wait_for(lambda: stack.states().get("sent", 0) >= 30, 60), tail(log)
    sentinel_set.wait_replicated()  # what Redis acknowledged before is on the replica

    old = sentinel_set.primary()
    if how == "killed":
        lost_at = time.monotonic()
        old.kill()
        sent_before = stack.states().get("sent", 0)
        new = sentinel_set.wait_for_new_primary(old)
    else:
        # The old primary serves on (as a primary) until it is told to follow the new one.
        new = sentinel_set.force_failover()
        lost_at = time.monotonic()
        old.cli("replicaof", "127.0.0.1", str(new.port))  # as the Sentinels do a moment later
        sent_before = stack.states().get("sent", 0)
    promoted_at = time.monotonic()

    assert stack.wait_for(lambda: stack.states() == {"sent": TASKS}, 60, 0.5), (
        stack.states(),
        tail(log),
    )
    assert sent_before < TASKS - 50, "the failover came after the load"
    keys = receiver.keys()
    assert sorted(keys) == sorted({str(row.message_id) for row in stack.reminders()})
    assert dead_letters(broker, QUEUE_NAME) == []
    assert workers.poll() is None, tail(log)  # every worker process rode it out
    text = log.read_text(errors="replace")
    assert "unexpected error" not in text and "ReadOnlyError" not in text, tail(log)
    assert PASSWORD not in text

    silence_start, resumed_at = gaps([r.at for r in receiver.receipts], lost_at)
    print(
        f"{how}: new primary serving {promoted_at - lost_at:.1f}s after the old one was lost; "
        f"deliveries paused {resumed_at - silence_start:.1f}s and resumed "
        f"{resumed_at - lost_at:.1f}s after it; {sent_before}/{TASKS} sent before"
    )
    assert resumed_at - lost_at < 20


@pytest.mark.slow
def test_posts_across_a_sentinel_failover_answer_201_or_503(
    stack: Stack, sentinel_set: PrivateSentinelSet, tmp_path: Path
) -> None:
    """The Procfile's web process (gunicorn) with the rate limits on and reminders due at
    once (each ``POST`` enqueues one), while the primary is SIGKILLed.

    Real time: real Sentinels promote the replica under real gunicorn processes."""
    owner = stack.account("owner")
    operator = create_account(stack.engine, "olga", operator=True)
    settings = stack.settings(redis_url=sentinel_set.url, rate_limit="100000/minute")
    due = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()  # reminded 1 day before
    answers: list[tuple[str, int]] = []
    stop = threading.Event()

    def post(http: httpx.Client, key: str) -> httpx.Response:
        headers = {**owner.headers, "Idempotency-Key": key}
        return http.post("/tasks", json={"title": key, "due_at": due}, headers=headers)

    with procfile_web(settings, tmp_path / "web.log") as base_url:

        def loop() -> None:
            with httpx.Client(base_url=base_url, timeout=20) as http:
                for _ in range(5000):  # a bound, whatever happens to the stop signal
                    if stop.is_set():
                        return
                    key = uuid.uuid4().hex
                    try:
                        answers.append((key, post(http, key).status_code))
                    except httpx.TransportError as error:
                        answers.append((key, -1))
                        print(error)
                    time.sleep(0.01)

        senders = [threading.Thread(target=loop) for _ in range(3)]
        for sender in senders:
            sender.start()
        try:
            time.sleep(1)
            old = sentinel_set.primary()
            old.kill()
            sentinel_set.wait_for_new_primary(old)
            time.sleep(4)  # the API's connections move over meanwhile
        finally:
            stop.set()
            for sender in senders:
                sender.join(timeout=60)
        assert not any(sender.is_alive() for sender in senders)

        with httpx.Client(base_url=base_url, timeout=20) as http:
            ready = wait_until(lambda: http.get("/readyz").status_code == 200, 15)
            after = post(http, "after-the-failover")
            queues = http.get("/ops/queues", headers=operator.headers)
    counts: dict[int, int] = {}
    for _, status in answers:
        counts[status] = counts.get(status, 0) + 1
    assert set(counts) <= {201, 503}, (counts, tail(tmp_path / "web.log"))
    assert counts.get(201, 0) > 50, counts
    log = (tmp_path / "web.log").read_text(errors="replace")
    # The failover was met: some reminders could not be enqueued at once (the next scan
    # takes them), and the requests were answered anyway.
    assert "reminder.enqueue_deferred" in log
    assert PASSWORD not in log
    assert ready
    # The API enqueues on the new primary: the reminder is queued at once, not left waiting.
    assert after.status_code == 201
    assert states_of(stack, after.json()["id"]) == ["queued"]
    assert queues.status_code == 200
    print(f"POSTs across the failover: {counts}")


def wait_until(condition: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())
