"""Outages and hostile receivers: what each costs, caused for real (SPEC §4.4, §4.6)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters
from shared.store.db import make_engine
from shared.store.schema import upgrade
from tests.pipeline.conftest import BIN, FAST_RETRIES, Receiver, Stack
from tests.private_servers import PrivatePostgres, private_postgres, private_redis
from tests.processes import json_lines, tail
from workers.channels import ReminderPayload, TransientDeliveryError, WebhookChannel
from workers.producer import scan_due_tasks

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class DripReceiver:
    """A webhook on 127.0.0.1 that reads the request, then answers one byte per ``every`` s.

    Each byte arrives well within a per-read timeout, so only a deadline on the whole call
    ends an attempt early; the full answer (a 200) would take ~``len(ANSWER) * every`` s.
    """

    def __init__(self, every: float = 0.4) -> None:
        self.every = every
        self.requests = 0
        self._stop = threading.Event()
        self._serving = threading.Thread(target=self._serve, daemon=True)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self._serving.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            self.requests += 1
            threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    def _drip(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(2)
            try:
                connection.recv(65536)
                for byte in ANSWER:
                    if self._stop.wait(self.every):
                        return
                    connection.sendall(bytes([byte]))
            except OSError:
                return  # the client gave up and closed

    def stop(self) -> None:
        self._stop.set()
        self._serving.join(timeout=5)
        self._server.close()


@pytest.fixture
def drip() -> Iterator[DripReceiver]:
    receiver = DripReceiver()
    yield receiver
    receiver.stop()


def payload() -> ReminderPayload:
    now = datetime.now(UTC)
    return ReminderPayload(
        message_id="m", task_id="t", due_at=now, remind_at=now, sent_at=now, body=b"{}"
    )


def test_a_slow_drip_receiver_costs_at_most_the_timeout_per_attempt(
    drip: DripReceiver,
) -> None:
    """Real time: a real receiver answers slowly; the guarantee is the HTTP timeout."""
    channel = WebhookChannel(drip.url, "s", timeout_seconds=1.0)

    started = time.monotonic()
    with pytest.raises(TransientDeliveryError, match="timed out"):
        channel.deliver(payload())
    took = time.monotonic() - started

    # Without a total deadline this call would succeed after ~24 s of dripping.
    assert took < 3.0, took


def test_slow_drip_attempts_each_end_within_the_timeout_and_dead_letter(
    stack: Stack, drip: DripReceiver
) -> None:
    """Real time: a real receiver answers slowly; the guarantee is the HTTP timeout."""
    alice = stack.account()
    stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = stack.broker(
        webhook_url=drip.url,
        webhook_secret="s",
        webhook_timeout_seconds=1,
        max_retries=1,
        min_backoff_ms=50,
        max_backoff_ms=100,
    )
    scan_due_tasks(stack.sessions, broker, stack.settings())

    started = time.monotonic()
    with stack.run_workers(broker, threads=2):
        assert stack.wait_for(lambda: stack.states() == {"failed": 1}, 20), stack.states()
    took = time.monotonic() - started

    [row] = stack.reminders()
    assert row.attempts == 2 and drip.requests == 2
    assert row.last_error == "TransientDeliveryError: webhook timed out (no answer within 1 s)"
    assert took < 10.0, took  # two attempts of ~1 s each, not two of ~24 s


@pytest.fixture
def private_pg_stack(redis_namespace: str) -> Iterator[tuple[Stack, PrivatePostgres]]:
    """A `Stack` on a PostgreSQL server of the test's own, which the test may stop."""
    with private_postgres() as server:
        engine = make_engine(server.url)
        upgrade(engine)
        stack = Stack(
            engine=engine,
            database_url=server.url,
            namespace=redis_namespace,
            overrides=dict(FAST_RETRIES),
        )
        try:
            yield stack, server
        finally:
            stack.close()
            engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("stop_mode", ["fast", "immediate"])
def test_a_database_outage_longer_than_the_retries_fails_no_reminder(
    private_pg_stack: tuple[Stack, PrivatePostgres],
    receiver: Receiver,
    tmp_path: Path,
    stop_mode: str,
) -> None:
    """``fast``: connections ended by the server; ``immediate``: as a crash, then recovery.

    Real time: a real PostgreSQL outage outlasts the workers' real retries."""
    stack, server = private_pg_stack
    count = 300
    receiver.delay_seconds = 0.01  # deliveries are in flight when the server stops
    settings = {"webhook_url": receiver.url, "webhook_secret": "s"}
    stack.add_due_tasks(stack.account(), count)
    broker, _ = stack.broker(**settings)
    assert scan_due_tasks(stack.sessions, broker, stack.settings(**settings)).enqueued == count
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "2", "--threads", "4"]
    stack.spawn_logged(argv, stack.env(**settings), tmp_path / "workers.log")
    assert stack.wait_for(lambda: stack.states().get("sent", 0) >= 30, 60)

    server.stop(stop_mode)
    # FAST_RETRIES spend all 4 attempts in well under 5 s: the outage outlasts them.
    time.sleep(12)
    server.start()

    assert stack.wait_for(lambda: stack.states() == {"sent": count}, 90, 0.5), stack.states()
    rows = stack.reminders()
    receipts: dict[str, int] = {}
    for receipt in receiver.receipts:
        receipts[receipt.key] = receipts.get(receipt.key, 0) + 1
    assert set(receipts) == {str(row.message_id) for row in rows}
    # Attempts stay true: a delivery whose commit the outage cut off is counted too.
    assert {str(r.message_id): r.attempts for r in rows} == receipts
    assert dead_letters(broker, QUEUE_NAME) == []
    events = json_lines(tmp_path / "workers.log")
    names = [event.get("event") for event in events]
    assert "database.unavailable" in names and "database.available" in names
    assert "reminder.dead_lettered" not in names
    assert not [e for e in events if "unhandled exception" in str(e.get("message", ""))]


@pytest.mark.slow
def test_the_scheduler_rides_out_redis_down_across_a_tick(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """Real time: a real Redis is down across a real periodiq tick."""
    with private_redis() as server:
        settings = {"webhook_url": receiver.url, "webhook_secret": "s", "redis_url": server.url}
        env = stack.env(**settings)
        scheduler = stack.spawn_logged(
            [str(BIN / "python"), "-m", "cli.launch", "periodiq", "workers.app"],
            {**env, "TZ": "UTC"},
            tmp_path / "scheduler.log",
        )
        worker_argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "1", "--threads", "2"]
        stack.spawn_logged(worker_argv, env, tmp_path / "workers.log")
        # periodiq ticks at once on start, then at each minute: these are due for the next one,
        # added well clear of a tick.
        time.sleep(3)
        while not 8 <= datetime.now(UTC).second <= 45:
            time.sleep(0.5)
        tasks = stack.add_due_tasks(stack.account(), 20)
        next_tick = 60 - datetime.now(UTC).second
        time.sleep(max(0, next_tick - 3))
        server.kill()  # down from 3 s before the tick to 8 s after it
        time.sleep(11)
        assert scheduler.poll() is None, tail(tmp_path / "scheduler.log")
        server.start()

        assert stack.wait_for(lambda: stack.states() == {"sent": len(tasks)}, 60, 0.5), (
            stack.states(),
            tail(tmp_path / "scheduler.log"),
        )
        assert scheduler.poll() is None
        names = [line.get("event") for line in json_lines(tmp_path / "scheduler.log")]
        assert "scheduler.broker_unavailable" in names and "scheduler.broker_available" in names
