"""A PostgreSQL failover loses no reminder (SPEC §4.10); what asynchronous replication costs.

Every process — worker processes, the Procfile's web process, the producer — is given
``DATABASE_URL`` naming a primary and its streaming standby (``pg_basebackup -R``), private
servers on loopback, in libpq's multi-host form with ``target_session_attrs=read-write``.
Under load (reminders delivered by real worker processes, a loop of ``POST /tasks``) the
primary is SIGKILLed with all its processes, as when its host dies, and the standby is
promoted (``pg_ctl promote``):

- **Synchronous replication** (``synchronous_standby_names``): every commit the primary
  acknowledged is on the standby. Every reminder is sent, none fails; the only repeats are
  deliveries in flight at the kill (the receiver accepted, the commit never came back), at
  most one per worker thread; every task the API answered 201 for is there after; the API
  answers only 201 or 503 across the switch.
- **Asynchronous replication** (PostgreSQL's default): what the standby had received is kept
  (a reminder it had as sent is never sent again), the rest of the primary's last commits
  are lost. A reminder whose ``sent`` was lost is sent again — by the producer, once it has
  been ``queued`` for ``REMINDERS_REQUEUE_AFTER`` — with the same key and bytes, so a
  receiver that dedupes on ``webhook-id`` sees it once; a task the API had answered 201 for
  may be gone. The repeats are counted and printed.
- **A primary fenced read-only, its standby promoted** (a switchover): the workers' open
  connections to the old primary meet ``cannot execute … in a read-only transaction``, which
  counts as a lost connection: the gate closes once per process, the pool lets go of them,
  and the next connection reaches the new primary. Every reminder is sent exactly once.

Real time: real servers, real worker processes riding out a real failover; 10 to 20 s each.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters
from shared.store.db import make_engine, unit_of_work
from shared.store.models import Task
from shared.store.schema import upgrade
from tests.api.test_database_outage import procfile_web
from tests.conftest import make_settings
from tests.pipeline.conftest import BIN, FAST_RETRIES, Receiver, Stack
from tests.private_servers import (
    PrivatePostgres,
    ReplicatedPostgres,
    multi_host_url,
    private_replicated_postgres,
)
from tests.processes import json_lines, tail
from workers.producer import scan_due_tasks

TASKS = 400
PROCESSES, THREADS = 2, 4
# The producer's lost-message check, run by the test every second: a reminder whose `sent`
# the failover lost (its message already acknowledged) is enqueued again this soon.
REQUEUE_AFTER_SECONDS = 3


@contextmanager
def replicated_stack(
    synchronous: bool, namespace: str, through_link: bool = False
) -> Iterator[tuple[Stack, ReplicatedPostgres]]:
    """A `Stack` on a private primary and its standby, through the multi-host URL."""
    with private_replicated_postgres(synchronous, through_link) as servers:
        url = multi_host_url(servers.primary, servers.standby)
        engine = make_engine(make_settings(database_url=url).resolved_database_url)
        upgrade(engine)
        overrides = {**FAST_RETRIES, "requeue_after_seconds": REQUEUE_AFTER_SECONDS}
        stack = Stack(engine=engine, database_url=url, namespace=namespace, overrides=overrides)
        try:
            yield stack, servers
        finally:
            stack.close()
            engine.dispose()


class PostLoop:
    """Threads sending ``POST /tasks`` to the API in a loop (each with its own key), keeping
    every answer's status and the ID of every task created."""

    def __init__(self, base_url: str, headers: dict[str, str], threads: int = 2) -> None:
        self.base_url = base_url
        self.headers = headers
        self.statuses: list[int] = []
        self.created: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        # Reminded a day ahead of a due date a month away: nothing is enqueued, so only the
        # API and its database are under test here.
        due = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        with httpx.Client(base_url=self.base_url, timeout=20) as http:
            for _ in range(5000):  # a bound, whatever happens to the stop signal
                if self._stop.is_set():
                    return
                key = uuid.uuid4().hex
                headers = {**self.headers, "Idempotency-Key": key}
                try:
                    answer = http.post(
                        "/tasks", json={"title": key, "due_at": due}, headers=headers
                    )
                except httpx.TransportError:
                    self.statuses.append(-1)
                    continue
                self.statuses.append(answer.status_code)
                if answer.status_code == 201:
                    self.created.append(answer.json()["id"])
                time.sleep(0.01)

    def __enter__(self) -> PostLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads)


@dataclass
class Failover:
    """What a test saw around the failover."""

    sent_before: int = 0
    requeued: int = 0  # reminders whose `sent` was lost, their message already acknowledged
    killed_at: float = 0.0
    promoted_at: float = 0.0
    on_standby_sent: set[str] = field(default_factory=set)  # as the standby had them
    on_standby_tasks: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    created: list[str] = field(default_factory=list)  # tasks the API answered 201 for
    tasks_after: set[str] = field(default_factory=set)
    readyz_after: int = 0
    post_after: int = 0
    events: list[str] = field(default_factory=list)  # of the worker processes
    messages: set[str] = field(default_factory=set)  # the load's reminders


def kill_and_promote_under_load(
    stack: Stack,
    servers: ReplicatedPostgres,
    receiver: Receiver,
    tmp_path: Path,
    cut_off_first: float = 0.0,
) -> Failover:
    """Deliver `TASKS` reminders with real worker processes while the API takes a loop of
    POSTs; kill the primary mid-run and promote the standby; wait until every reminder is
    sent (scanning every second, as a fast scheduler would).

    ``cut_off_first``: the standby's replication link is cut that many seconds before the
    kill, while the primary goes on committing.
    """
    seen = Failover()
    primary, standby = servers.primary, servers.standby

    def load_states() -> Counter[str]:  # of the load's reminders (not the POSTed tasks')
        return Counter(row.state for row in stack.reminders() if str(row.task_id) in load)

    receiver.delay_seconds = 0.05  # deliveries are in flight when the primary dies
    settings: dict[str, Any] = {
        "webhook_url": receiver.url,
        "webhook_secret": "s",
        "rate_limit": "",
    }
    owner = stack.account("owner")
    load = {str(task.id) for task in stack.add_due_tasks(owner, TASKS)}
    broker, _ = stack.broker(**settings)
    assert scan_due_tasks(stack.sessions, broker, stack.settings(**settings)).enqueued == TASKS
    log = tmp_path / "workers.log"
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", str(PROCESSES)]
    workers = stack.spawn_logged([*argv, "--threads", str(THREADS)], stack.env(**settings), log)

    with procfile_web(stack.settings(**settings), tmp_path / "web.log") as base_url:
        with PostLoop(base_url, owner.headers) as posts:
            assert stack.wait_for(lambda: load_states()["sent"] >= 30, 60), tail(log)
            if cut_off_first:
                assert servers.link is not None
                servers.link.cut()
                time.sleep(cut_off_first)
            seen.killed_at = time.monotonic()
            primary.kill()
            # What the standby received before the primary died: once replayed, it reads it.
            wait_replayed(standby)
            seen.on_standby_sent = set(
                str(row[0])
                for row in standby.query("SELECT message_id FROM reminders WHERE state = 'sent'")
            )
            seen.on_standby_tasks = {str(row[0]) for row in standby.query("SELECT id FROM tasks")}
            standby.promote()
            seen.promoted_at = time.monotonic()
            seen.sent_before = len(seen.on_standby_sent)

            def all_sent() -> bool:
                with suppress(DBAPIError):  # the producer rides the switch out too
                    scan = scan_due_tasks(stack.sessions, broker, stack.settings(**settings))
                    seen.requeued += scan.requeued
                return load_states() == {"sent": TASKS}

            assert stack.wait_for(all_sent, 60, 1.0), (load_states(), tail(log))
        with httpx.Client(base_url=base_url, timeout=20) as http:
            seen.readyz_after = http.get("/readyz").status_code
            after = {
                "title": "after",
                "due_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
            }
            seen.post_after = http.post("/tasks", json=after, headers=owner.headers).status_code
    assert workers.poll() is None, tail(log)  # every worker process rode it out
    assert dead_letters(broker, QUEUE_NAME) == []
    seen.statuses = Counter(posts.statuses)
    seen.created = posts.created
    with unit_of_work(stack.sessions) as session:
        seen.tasks_after = {str(task_id) for task_id in session.scalars(select(Task.id))}
    seen.events = [str(event.get("event")) for event in json_lines(log)]
    seen.messages = {str(row.message_id) for row in stack.reminders() if str(row.task_id) in load}
    return seen


def wait_replayed(standby: PrivatePostgres) -> None:
    """Until the standby has replayed all the WAL it received (readable there)."""
    for _ in range(200):
        [(done,)] = standby.query("SELECT pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()")
        if done:
            return
        time.sleep(0.05)
    raise RuntimeError("the standby did not replay what it had received")


def receipts_by_key(receiver: Receiver) -> dict[str, list[Any]]:
    by_key: dict[str, list[Any]] = {}
    for receipt in receiver.receipts:
        by_key.setdefault(receipt.key, []).append(receipt)
    return by_key


def assert_repeats_are_the_same_request(by_key: dict[str, list[Any]]) -> None:
    """A repeat carries the same ``webhook-id`` and ``Idempotency-Key`` and the same body:
    a receiver that dedupes on either sees the reminder once."""
    for key, receipts in by_key.items():
        assert {r.headers["webhook-id"] for r in receipts} == {key}
        assert len({r.body for r in receipts}) == 1, key


def report(how: str, seen: Failover, receiver: Receiver, by_key: dict[str, list[Any]]) -> None:
    # No delivery starts while no server takes writes (its first statement is a write), so
    # the first request after the promotion is the first on the new primary.
    resumed_at = min(receipt.at for receipt in receiver.receipts if receipt.at > seen.promoted_at)
    repeats = len(receiver.receipts) - len(by_key)
    lost_tasks = len(set(seen.created) - seen.tasks_after)
    line = (
        f"{how}: standby promoted {seen.promoted_at - seen.killed_at:.2f}s after the kill; "
        f"deliveries resumed {resumed_at - seen.promoted_at:.2f}s after it, "
        f"{resumed_at - seen.killed_at:.2f}s after the kill; "
        f"{seen.sent_before}/{TASKS} sent "
        f"before; repeats {repeats}/{TASKS} ({seen.requeued} requeued: their sent record lost); "
        f"POSTs {dict(seen.statuses)}, "
        f"{lost_tasks}/{len(seen.created)} created tasks lost"
    )
    print(line)


@pytest.mark.slow
def test_a_failover_under_synchronous_replication_loses_nothing(
    receiver: Receiver, redis_namespace: str, tmp_path: Path
) -> None:
    """Real time: a real primary killed under real worker processes and a real API."""
    with replicated_stack(True, redis_namespace) as (stack, servers):
        seen = kill_and_promote_under_load(stack, servers, receiver, tmp_path)

    by_key = receipts_by_key(receiver)
    report("synchronous", seen, receiver, by_key)
    assert seen.sent_before < TASKS - 50, "the failover came after the load"
    # Every reminder sent, none failed (the wait above: all `sent`), each delivered.
    assert set(by_key) == seen.messages
    # Only deliveries in flight at the kill are repeated: at most one per worker thread.
    repeats = len(receiver.receipts) - len(by_key)
    assert repeats <= PROCESSES * THREADS, repeats
    assert_repeats_are_the_same_request(by_key)
    # Nothing the primary acknowledged is lost: every task the API created is there.
    assert set(seen.created) <= seen.tasks_after
    assert set(seen.statuses) <= {201, 503}, seen.statuses
    assert seen.statuses[201] > 20, seen.statuses
    assert (seen.readyz_after, seen.post_after) == (200, 201)
    # Each worker process that met the outage said so once.
    assert 1 <= seen.events.count("database.unavailable") <= PROCESSES, seen.events
    assert "reminder.dead_lettered" not in seen.events


@pytest.mark.slow
@pytest.mark.parametrize("cut_off_first", [0.0, 1.0], ids=["streaming", "standby-cut-off-1s"])
def test_a_failover_under_asynchronous_replication_repeats_only_what_the_standby_lacked(
    receiver: Receiver, redis_namespace: str, tmp_path: Path, cut_off_first: float
) -> None:
    """``streaming``: the standby streams until the primary dies. ``standby-cut-off-1s``: its
    replication link is cut a second before (a partition, a standby fallen behind), so the
    primary's commits of that second are on no standby when it dies.

    Real time: a real primary killed under real worker processes and a real API."""
    with replicated_stack(False, redis_namespace, bool(cut_off_first)) as (stack, servers):
        seen = kill_and_promote_under_load(stack, servers, receiver, tmp_path, cut_off_first)

    by_key = receipts_by_key(receiver)
    how = f"asynchronous, cut off {cut_off_first:.0f}s before" if cut_off_first else "asynchronous"
    report(how, seen, receiver, by_key)
    assert seen.sent_before < TASKS - 50, "the failover came after the load"
    # Every reminder still sent, none failed: at least once, each repeat the same request.
    assert set(by_key) == seen.messages
    assert_repeats_are_the_same_request(by_key)
    # What the standby had received is kept: a reminder it had as sent is never sent again,
    # a task it had is still there.
    assert [key for key in seen.on_standby_sent if len(by_key[key]) > 1] == []
    assert seen.on_standby_tasks <= seen.tasks_after
    assert set(seen.statuses) <= {201, 503}, seen.statuses
    assert (seen.readyz_after, seen.post_after) == (200, 201)
    assert "reminder.dead_lettered" not in seen.events
    if cut_off_first:
        # The second's `sent` records were lost: those reminders were sent again.
        assert seen.requeued > 0 and len(receiver.receipts) > len(by_key)


@pytest.mark.slow
def test_a_switchover_sends_every_reminder_exactly_once(
    receiver: Receiver, redis_namespace: str, tmp_path: Path
) -> None:
    """The primary is fenced read-only (``default_transaction_read_only``, reloaded: its open
    sessions' next transactions are read-only), and once the standby has everything it
    wrote, the standby is promoted. The workers' pooled connections still reach the old
    primary, which answers every write with ``cannot execute … in a read-only transaction``:
    that must count as a lost connection (the gate closes, the pool is let go of, the next
    connection goes to the new primary), not as the reminders' failure.

    Real time: real servers and real worker processes across a real switchover."""
    with replicated_stack(False, redis_namespace) as (stack, servers):
        primary, standby = servers.primary, servers.standby
        receiver.delay_seconds = 0.05
        settings: dict[str, Any] = {"webhook_url": receiver.url, "webhook_secret": "s"}
        stack.add_due_tasks(stack.account(), TASKS)
        broker, _ = stack.broker(**settings)
        assert scan_due_tasks(stack.sessions, broker, stack.settings(**settings)).enqueued == TASKS
        log = tmp_path / "workers.log"
        argv = [str(BIN / "dramatiq"), "workers.app", "--processes", str(PROCESSES)]
        workers = stack.spawn_logged([*argv, "--threads", str(THREADS)], stack.env(**settings), log)
        assert stack.wait_for(lambda: stack.states().get("sent", 0) >= 30, 60), tail(log)

        primary.query("ALTER SYSTEM SET default_transaction_read_only = on")
        [(fenced_at,)] = primary.query("SELECT now()")
        primary.query("SELECT pg_reload_conf()")
        # The transactions begun before the fence end (each within a delivery's time), and the
        # standby replays all the primary wrote: the switchover loses nothing.
        begun_before = (
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            f" AND pid <> pg_backend_pid() AND xact_start <= '{fenced_at.isoformat()}'"
        )
        assert stack.wait_for(lambda: primary.query(begun_before) == [(0,)], 10), "still open"
        [(written,)] = primary.query("SELECT pg_current_wal_lsn()")
        replayed = f"SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn"
        assert stack.wait_for(lambda: standby.query(replayed) == [(True,)], 10)
        sent_before = stack.states().get("sent", 0)
        standby.promote()
        # This test's own pooled connections go to the old primary, which still answers
        # reads (what it had at the fence): look at the new one.
        stack.engine.dispose()

        assert stack.wait_for(lambda: stack.states() == {"sent": TASKS}, 60, 0.5), (
            stack.states(),
            tail(log),
        )
        messages = {str(row.message_id) for row in stack.reminders()}
        assert workers.poll() is None, tail(log)  # every worker process rode it out
    assert sent_before < TASKS - 50, "the switchover came after the load"
    # Exactly once: a write refused by the old primary was refused before its delivery.
    assert sorted(receiver.keys()) == sorted(messages)
    assert dead_letters(broker, QUEUE_NAME) == []
    events = json_lines(log)
    outages = [event for event in events if event.get("event") == "database.unavailable"]
    # Every worker process's connections met the fence: each closed its gate once.
    assert len(outages) == PROCESSES, outages
    assert all("read-only transaction" in str(event["error"]) for event in outages), outages
    assert "reminder.dead_lettered" not in [event.get("event") for event in events]
