"""Outages and hostile receivers: what each costs, caused for real (SPEC §4.4, §4.6)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.pipeline.conftest import Stack
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
