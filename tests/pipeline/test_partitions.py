"""A host cut off by the network: noticed in seconds, resumed at once, nothing lost.

SPEC §8, §4.10. A worker group whose link to PostgreSQL or to Redis is pulled — packets
dropped, no connection told anything (`tests.partition`) — logs ``database.unavailable``
or ``broker.unavailable`` within about ``REMINDERS_PEER_TIMEOUT`` of the cut (TCP alone
would take minutes), and delivers again within one probe interval of the link coming
back; every reminder is delivered, and only those in flight at the cut may come twice.
A scheduler cut off from Redis across its tick sends the tick once healed, and the tick
runs however late it is: the reminders due meanwhile do not wait for the next one.
A host cut off from both for longer than ``REMINDERS_HEARTBEAT_TIMEOUT_MS`` has the
reminders it held sent by another host within a second more, and sends none of them again
when the link comes back.

Real time: real processes behind a real link, and the timeouts under test are seconds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli.processes import CONSUMER_RESTART_MS
from shared.broker.heartbeat import MAX_BEAT_SECONDS
from shared.broker.queue import QUEUE_NAME, SCAN_DUE_TASKS
from shared.broker.redis_broker import dead_letters, queue_depth
from shared.config import DEFAULT_HEARTBEAT_TIMEOUT_MS, DEFAULT_PEER_TIMEOUT_SECONDS
from shared.store.db import make_engine
from shared.store.schema import upgrade
from tests.partition import Partition, partition
from tests.pipeline.conftest import BIN, Receiver, Stack
from tests.processes import json_lines, tail
from tests.tcp_proxy import TcpProxy
from workers.outage import MAX_PROBE_SECONDS
from workers.producer import scan_due_tasks
from workers.scheduler import MAX_RETRY_SECONDS

PEER_TIMEOUT = DEFAULT_PEER_TIMEOUT_SECONDS  # the default is what is measured
THREADS = 4
# A scan of a few reminders and their deliveries, once the tick is in Redis.
SCAN_AND_SEND_SECONDS = 5
# A worker group's consumer that lost Redis connects again after this long.
CONSUMER_RESTART_SECONDS = CONSUMER_RESTART_MS / 1000


@pytest.fixture
def link() -> Iterator[Partition]:
    with partition() as made:
        yield made


def through(url: str, proxy: TcpProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}{proxy.host}:{proxy.port}").geturl()


def first_event(log: Path, name: str, after: datetime) -> datetime | None:
    """When ``name`` was first logged after ``after`` (the line's own time stamp)."""
    for line in json_lines(log):
        if line.get("event") == name:
            at = datetime.fromisoformat(str(line["ts"]).replace("Z", "+00:00"))
            if at >= after:
                return at
    return None


def wait_for_event(stack: Stack, log: Path, name: str, after: datetime, within: float) -> float:
    """Seconds from ``after`` to ``name`` in ``log``, once it is there (at most ``within``)."""
    found = stack.wait_for(lambda: first_event(log, name, after) is not None, within, 0.2)
    at = first_event(log, name, after)
    assert found and at is not None, f"no {name} within {within} s:\n{tail(log)}"
    return (at - after).total_seconds()


def start_worker(stack: Stack, env: dict[str, str], log: Path, threads: int = THREADS) -> None:
    argv = [str(BIN / "reminders"), "worker", "--processes", "1", "--threads", str(threads)]
    stack.spawn_logged(argv, env, log)


def enqueue_due(stack: Stack, settings: dict[str, Any], count: int) -> None:
    stack.add_due_tasks(stack.account(f"owner-{time.monotonic_ns()}"), count)
    broker, _ = stack.broker(**settings)
    assert scan_due_tasks(stack.sessions, broker, stack.settings(**settings)).enqueued == count


@pytest.mark.slow
def test_a_worker_cut_off_from_the_database_notices_in_seconds_and_resumes(
    stack: Stack, receiver: Receiver, link: Partition, tmp_path: Path
) -> None:
    server = urlsplit(stack.database_url)
    proxy = TcpProxy(
        (server.hostname or "127.0.0.1", server.port or 5432),
        listen=link.listen,
        peer_timeout=PEER_TIMEOUT,  # PostgreSQL's side of each connection, as configured
    )
    receiver.delay_seconds = 0.3  # deliveries hold their transaction across the cut
    settings = {"webhook_url": receiver.url, "webhook_secret": "s"}
    env = stack.env(**settings)
    env["DATABASE_URL"] = through(stack.database_url, proxy)
    log = tmp_path / "worker.log"
    count = 60
    enqueue_due(stack, settings, count)
    start_worker(stack, env, log)
    assert stack.wait_for(lambda: stack.states().get("sent", 0) >= 10, 60), tail(log)

    cut_at = datetime.now(UTC)
    link.cut()
    noticed = wait_for_event(stack, log, "database.unavailable", cut_at, PEER_TIMEOUT + 10)
    time.sleep(max(0.0, 2 * PEER_TIMEOUT - noticed))  # the outage goes on a while
    healed_at = datetime.now(UTC)
    link.heal()
    resumed = wait_for_event(
        stack, log, "database.available", healed_at, MAX_PROBE_SECONDS + PEER_TIMEOUT + 10
    )

    assert stack.wait_for(lambda: stack.states() == {"sent": count}, 60, 0.5), stack.states()
    print(f"database cut: noticed after {noticed:.1f} s, resumed {resumed:.1f} s after the heal")
    assert noticed <= PEER_TIMEOUT + 2, noticed
    # One probe interval, plus the probe's connection attempt that met the cut's end.
    assert resumed <= MAX_PROBE_SECONDS + PEER_TIMEOUT, resumed
    receipts = Counter(receiver.keys())
    rows = stack.reminders()
    assert set(receipts) == {str(row.message_id) for row in rows}
    # Only deliveries in flight at the cut (at most one per thread) were accepted and not
    # recorded: they alone come again, with the same key, and their rows count both.
    assert sum(receipts.values()) - count <= THREADS, receipts.most_common(THREADS + 1)
    assert {str(row.message_id): row.attempts for row in rows} == dict(receipts)
    broker, _ = stack.broker()
    assert dead_letters(broker, QUEUE_NAME) == []
    names = [line.get("event") for line in json_lines(log)]
    assert names.count("database.unavailable") == 1 and "reminder.dead_lettered" not in names


@pytest.mark.slow
def test_a_worker_cut_off_from_redis_notices_in_seconds_and_resumes(
    stack: Stack, receiver: Receiver, link: Partition, tmp_path: Path
) -> None:
    server = urlsplit(stack.settings().redis_url)
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 6379), listen=link.listen)
    receiver.delay_seconds = 0.1
    settings = {"webhook_url": receiver.url, "webhook_secret": "s"}
    env = stack.env(**settings)
    env["REDIS_URL"] = through(stack.settings().redis_url, proxy)
    log = tmp_path / "worker.log"
    enqueue_due(stack, settings, 30)
    start_worker(stack, env, log)
    assert stack.wait_for(lambda: stack.states().get("sent", 0) >= 5, 60), tail(log)

    cut_at = datetime.now(UTC)
    link.cut()
    noticed = wait_for_event(stack, log, "broker.unavailable", cut_at, PEER_TIMEOUT + 10)
    enqueue_due(stack, settings, 30)  # due during the outage: they wait in Redis
    time.sleep(max(0.0, 2 * PEER_TIMEOUT - noticed))
    healed_at = datetime.now(UTC)
    link.heal()
    resumed = wait_for_event(
        stack, log, "broker.available", healed_at, CONSUMER_RESTART_SECONDS + PEER_TIMEOUT + 10
    )

    assert stack.wait_for(lambda: stack.states() == {"sent": 60}, 60, 0.5), stack.states()
    print(f"redis cut: noticed after {noticed:.1f} s, resumed {resumed:.1f} s after the heal")
    assert noticed <= PEER_TIMEOUT + 2, noticed
    # One restart of the consumers, plus a connection attempt that met the cut's end.
    assert resumed <= CONSUMER_RESTART_SECONDS + PEER_TIMEOUT, resumed
    # Acknowledgements that could not reach Redis went once it was back: nothing came twice.
    receipts = Counter(receiver.keys())
    assert len(receipts) == 60 and set(receipts.values()) == {1}, receipts.most_common(3)
    lines = json_lines(log)
    names = [line.get("event") for line in lines]
    assert names.count("broker.unavailable") == 1 and names.count("broker.available") == 1
    messages = [str(line.get("message", "")) for line in lines]
    assert not [m for m in messages if m.startswith("Consumer encountered")], messages
    assert not [m for m in messages if "unexpected" in m], messages


@pytest.mark.slow
def test_a_delivery_holding_its_transaction_longer_than_the_peer_timeout_is_not_cut(
    pg_url: str, redis_namespace: str, receiver: Receiver
) -> None:
    """The timeouts give up a silent server, not a slow answer: a delivery holds its row lock
    while the receiver takes three times REMINDERS_PEER_TIMEOUT to answer, the server answering
    every keepalive meanwhile, and commits once.

    Real time: a receiver that really takes that long."""
    peer_timeout = 2  # the lowest allowed
    engine = make_engine(pg_url, peer_timeout=peer_timeout)
    upgrade(engine)
    stack = Stack(
        engine=engine,
        database_url=pg_url,
        namespace=redis_namespace,
        overrides={"peer_timeout_seconds": peer_timeout, "max_retries": 0},
    )
    try:
        receiver.delay_seconds = 3 * peer_timeout
        settings = {
            "webhook_url": receiver.url,
            "webhook_secret": "s",
            "webhook_timeout_seconds": 20,
        }
        enqueue_due(stack, settings, 1)
        broker, _ = stack.broker(**settings)
        with stack.run_workers(broker, threads=1):
            assert stack.wait_for(lambda: stack.states() == {"sent": 1}, 30), stack.states()
        [row] = stack.reminders()
        assert (row.attempts, row.last_error) == (1, None)
        assert len(receiver.keys()) == 1
    finally:
        stack.close()
        engine.dispose()


CUT_BEFORE_TICK = 3  # seconds: the cut is in place when the scheduler sends its tick
HEAL_AFTER_TICK = 35  # seconds: past the 30 s after which periodiq would drop the tick


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


@pytest.mark.slow
def test_a_scheduler_cut_off_from_redis_across_its_tick_sends_it_once_healed_and_it_runs(
    stack: Stack, receiver: Receiver, link: Partition, tmp_path: Path
) -> None:
    """The scheduler's link to Redis is down from before a tick until 35 s after it; the
    reminders due meanwhile go out within a bound of the heal, each once.

    The scan runs at one minute of the hour only, so nothing but that tick, sent late, can
    send them: the next tick is an hour away. Real time: periodiq ticks on whole minutes, so
    the test waits for the next one (50-110 s in all)."""
    server = urlsplit(stack.settings().redis_url)
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 6379), listen=link.listen)
    # The next whole minute that leaves the scheduler time to start before it.
    tick = (datetime.now(UTC) + timedelta(seconds=72)).replace(second=0, microsecond=0)
    settings = {
        "webhook_url": receiver.url,
        "webhook_secret": "s",
        "scan_cron": f"{tick.minute} * * * *",
    }
    worker_log, scheduler_log = tmp_path / "worker.log", tmp_path / "scheduler.log"
    start_worker(stack, stack.env(**settings), worker_log)
    env = stack.env(**settings)
    env["REDIS_URL"] = through(stack.settings().redis_url, proxy)
    stack.spawn_logged([str(BIN / "reminders"), "scheduler"], env, scheduler_log)
    started = stack.wait_for(lambda: "Starting Periodiq" in scheduler_log.read_text(), 30, 0.2)
    assert started, tail(scheduler_log)
    # Due during the cut, and left to the scan (nothing enqueues them before).
    owner = stack.account()
    count = 20
    for index in range(count):
        remind_at = tick + timedelta(seconds=2 * (index % 16) - 2)
        stack.add_task(owner, remind_at + timedelta(minutes=1), remind_before_seconds=60)
    cut_at = tick - timedelta(seconds=CUT_BEFORE_TICK)
    # Started in the minute before the tick's: periodiq started within a tick's minute sends
    # that tick at once.
    assert datetime.now(UTC) < cut_at, "the scheduler took too long to start"

    sleep_until(cut_at)
    link.cut()
    sleep_until(tick + timedelta(seconds=HEAL_AFTER_TICK))
    assert stack.states() == {"waiting": count}, stack.states()
    healed_at = datetime.now(UTC)
    link.heal()
    resent = wait_for_event(
        stack, scheduler_log, "scheduler.broker_available", healed_at, MAX_RETRY_SECONDS + 20
    )
    assert stack.wait_for(lambda: stack.states() == {"sent": count}, 30, 0.2), stack.states()
    time.sleep(0.5)  # anything sent twice would have arrived by now

    rows = stack.reminders()
    sent = max((row.sent_at for row in rows if row.sent_at is not None), default=healed_at)
    last_sent = (sent - healed_at).total_seconds()
    late = [
        line
        for line in json_lines(worker_log)
        if line.get("event") == "tick.late" and line.get("actor") == SCAN_DUE_TASKS
    ]
    noticed = first_event(scheduler_log, "scheduler.broker_unavailable", cut_at)
    print(
        f"scheduler cut across a tick: its send failed "
        f"{(noticed - tick).total_seconds() if noticed else float('nan'):.1f} s after the tick, "
        f"sent {resent:.1f} s after the heal, "
        f"{late[0]['late_ms'] / 1000 if late else '?'} s late; "
        f"every reminder sent {last_sent:.1f} s after the heal"
    )
    names = [line.get("event") for line in json_lines(scheduler_log)]
    assert names.count("scheduler.broker_unavailable") == 1, tail(scheduler_log)
    # Sent late, by more than periodiq's 30 s, and run all the same.
    assert len(late) == 1 and late[0]["late_ms"] > HEAL_AFTER_TICK * 1000, tail(worker_log)
    # A retry of the send that met the cut's end, then the scan and the deliveries.
    assert resent <= MAX_RETRY_SECONDS + PEER_TIMEOUT, resent
    assert last_sent <= MAX_RETRY_SECONDS + PEER_TIMEOUT + SCAN_AND_SEND_SECONDS, last_sent
    receipts = Counter(receiver.keys())
    assert set(receipts) == {str(row.message_id) for row in rows}
    assert set(receipts.values()) == {1}, receipts.most_common(3)


# What the recovered reminders' delivery may take on top of the bound, on a busy machine.
DELIVERY_ALLOWANCE_SECONDS = 5


@pytest.mark.slow
def test_a_worker_host_cut_off_has_its_reminders_sent_by_another_and_sends_none_again(
    stack: Stack, receiver: Receiver, link: Partition, tmp_path: Path
) -> None:
    """Host A (one worker group) reaches PostgreSQL and Redis through one link, host B
    directly. A's link is pulled while it holds reminders; B sends them once A's heartbeat
    is ``REMINDERS_HEARTBEAT_TIMEOUT_MS`` old, within a second more. Only A's requests in
    flight at the cut (one per thread) reach a receiver twice; healed, A finds the rest sent
    and sends nothing."""
    timeout = DEFAULT_HEARTBEAT_TIMEOUT_MS / 1000  # the default is what is measured
    redis_server = urlsplit(stack.settings().redis_url)
    pg_server = urlsplit(stack.database_url)
    redis_proxy = TcpProxy(
        (redis_server.hostname or "127.0.0.1", redis_server.port or 6379), listen=link.listen
    )
    pg_proxy = TcpProxy(
        (pg_server.hostname or "127.0.0.1", pg_server.port or 5432),
        listen=link.listen,
        peer_timeout=PEER_TIMEOUT,
    )
    a_receiver = Receiver(delay_seconds=0.5).start()  # A's deliveries take a while: it holds
    try:
        settings = {"webhook_secret": "s"}
        env_a = stack.env(webhook_url=a_receiver.url, **settings)
        env_a["DATABASE_URL"] = through(stack.database_url, pg_proxy)
        env_a["REDIS_URL"] = through(stack.settings().redis_url, redis_proxy)
        count, a_threads = 40, 2
        enqueue_due(stack, settings, count)
        before = stack.broker_instances()
        log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
        start_worker(stack, env_a, log_a, threads=a_threads)
        [host_a] = stack.new_instances(before, 1)
        assert stack.wait_for(lambda: len(a_receiver.receipts) >= a_threads, 60), tail(log_a)
        before = stack.broker_instances()
        start_worker(stack, stack.env(webhook_url=receiver.url, **settings), log_b)
        stack.new_instances(before, 1)
        broker, _ = stack.broker()
        # B took what A had not fetched: the queue holds nothing, A its window.
        assert stack.wait_for(lambda: queue_depth(broker, QUEUE_NAME).ready == 0, 60)
        held = stack.unsent(stack.held(host_a))
        assert len(held) > a_threads, held

        cut_at, cut_wall = time.monotonic(), datetime.now(UTC)
        link.cut()
        assert stack.wait_for(lambda: stack.states() == {"sent": count}, timeout + 60, 0.5), (
            stack.states()
        )
        noticed = {
            name: wait_for_event(stack, log_a, name, cut_wall, 1)
            for name in ("broker.unavailable", "database.unavailable")
        }
        at_b = {receipt.key: receipt.at for receipt in receiver.receipts}
        # All but those A finished between reading what it held and the cut (at most one a
        # thread) went out from B.
        recovered = held & set(at_b)
        assert len(recovered) >= len(held) - a_threads, (held, at_b)
        recovered_after = max(at_b[key] for key in recovered) - cut_at
        healed_at = datetime.now(UTC)
        healed = time.monotonic()
        link.heal()
        resumed = {
            name: wait_for_event(
                stack, log_a, name, healed_at, MAX_PROBE_SECONDS + PEER_TIMEOUT + 10
            )
            for name in ("broker.available", "database.available")
        }
        # A goes through the reminders it still held, finding each sent by B.
        assert stack.wait_for(
            lambda: (
                "reminder.duplicate_suppressed" in [line.get("event") for line in json_lines(log_a)]
            ),
            30,
            0.5,
        ), tail(log_a)
        time.sleep(2)  # a request A made now would have arrived
    finally:
        a_receiver.stop()

    print(
        f"host cut: noticed {noticed}, resumed {resumed} s after the heal; {len(held)} "
        f"reminders it held sent by the other host {recovered_after:.1f} s after the cut"
    )
    assert recovered_after <= timeout + MAX_BEAT_SECONDS + DELIVERY_ALLOWANCE_SECONDS
    assert not [r.key for r in a_receiver.receipts if r.at > healed]  # A sent nothing again
    # Every reminder went out, and only A's requests in flight at the cut went out twice.
    keys = [r.key for r in a_receiver.receipts] + [r.key for r in receiver.receipts]
    assert set(keys) == {str(row.message_id) for row in stack.reminders()}
    assert len(keys) - count <= a_threads, Counter(keys).most_common(a_threads + 1)
    assert len(at_b) == len(receiver.receipts)  # B sent each once
