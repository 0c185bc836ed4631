"""Isolation between users (SPEC §4.9), with real Dramatiq workers, real PostgreSQL and Redis,
and receivers on 127.0.0.1 that answer slowly, count what is in flight, or ask for back-off.

Real time: each test waits for its reminders' remind times (a few seconds) and for slow
receivers' answers; the longest runs about 10 s.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from shared.broker.gate import Gate
from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import ENDPOINT, decode_message
from shared.delivery.secret_box import SecretBox
from shared.store.db import unit_of_work
from shared.store.models import Endpoint, Reminder, Task
from tests.conftest import Account
from tests.pipeline.conftest import BIN, Stack
from workers.producer import scan_due_tasks

Answer = tuple[int, dict[str, str]]


@dataclass
class Arrival:
    at: float  # wall clock, seconds since the epoch
    key: str


@dataclass
class SlowReceiver:
    """An endpoint on 127.0.0.1 that takes ``hold`` seconds per request, answers
    ``script(n)`` to its n-th, and counts requests in flight."""

    hold: float = 0.0
    script: Callable[[int], Answer] = lambda n: (200, {})
    arrivals: list[Arrival] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> SlowReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    index = len(receiver.arrivals)
                    receiver.arrivals.append(Arrival(time.time(), self.headers["Idempotency-Key"]))
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                try:
                    time.sleep(receiver.hold)
                    status, headers = receiver.script(index)
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def keys(self) -> list[str]:
        with self.lock:
            return [arrival.key for arrival in self.arrivals]


@pytest.fixture
def receivers() -> Iterator[Callable[..., SlowReceiver]]:
    started: list[SlowReceiver] = []

    def start(**fields: Any) -> SlowReceiver:
        started.append(SlowReceiver(**fields).start())
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


def endpoint_for(
    stack: Stack,
    owner: Account,
    url: str,
    max_concurrency: int = 8,
    per_second: float | None = None,
) -> uuid.UUID:
    now = datetime.now(UTC)
    endpoint_id = uuid.uuid4()
    with unit_of_work(stack.sessions) as session:
        session.add(
            Endpoint(
                id=endpoint_id,
                owner_id=owner.id,
                url=url,
                secret=stack_box(stack).encrypt("whsec_" + "A" * 43),
                enabled=True,
                max_concurrency=max_concurrency,
                max_per_second=per_second,
                created_at=now,
                updated_at=now,
            )
        )
    return endpoint_id


def stack_box(stack: Stack) -> SecretBox:
    settings = stack.settings()
    return SecretBox.from_setting(settings.secret_key, settings.data_dir)


def reminders_at(
    stack: Stack, owner: Account, endpoint_id: uuid.UUID, times: list[datetime]
) -> list[uuid.UUID]:
    """One task per remind time, routed to ``endpoint_id``; their reminders' message IDs."""
    task_ids = []
    for when in times:
        task = stack.add_task(owner, when + timedelta(seconds=60), 60)
        task_ids.append(task.id)
    with unit_of_work(stack.sessions) as session:
        session.execute(update(Task).where(Task.id.in_(task_ids)).values(endpoint_id=endpoint_id))
        return list(
            session.scalars(select(Reminder.message_id).where(Reminder.task_id.in_(task_ids)))
        )


def sent(stack: Stack) -> int:
    with unit_of_work(stack.sessions) as session:
        return int(session.scalar(select(func.count()).where(Reminder.state == "sent")) or 0)


def whole_second_from_now(seconds: int) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds + 1)).replace(microsecond=0)


def test_a_slow_users_flood_does_not_make_a_fast_users_reminders_late(
    stack: Stack, receivers: Callable[..., SlowReceiver]
) -> None:
    """A's endpoint takes 1.5 s per request and has 14 reminders due at once, more than the
    worker has threads; B's five, due over the next seconds, arrive on time, and A's all
    arrive once."""
    slow, fast = receivers(hold=1.5), receivers()
    alice, bob = stack.account("alice"), stack.account("bob")
    start = whole_second_from_now(1)
    flood = reminders_at(stack, alice, endpoint_for(stack, alice, slow.url), [start] * 14)
    bob_times = [start + timedelta(seconds=2 + second) for second in range(5)]
    bobs = reminders_at(stack, bob, endpoint_for(stack, bob, fast.url), bob_times)
    broker, _ = stack.broker(allow_private_endpoints=True, slow_lane_threads=2)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker, threads=6):
        assert stack.wait_for(lambda: sent(stack) == len(flood) + len(bobs), 60)

    by_key = {arrival.key: arrival.at for arrival in fast.arrivals}
    lateness = [
        by_key[str(key)] - when.timestamp() for key, when in zip(bobs, bob_times, strict=True)
    ]
    assert all(-0.05 <= late <= 1.0 for late in lateness), lateness
    assert sorted(slow.keys()) == sorted(str(key) for key in flood)  # each once
    assert slow.most_in_flight <= 8


def test_an_endpoint_never_has_more_than_its_max_concurrency_in_flight(
    stack: Stack, receivers: Callable[..., SlowReceiver]
) -> None:
    receiver = receivers(hold=0.2)
    alice = stack.account("alice")
    endpoint_id = endpoint_for(stack, alice, receiver.url, max_concurrency=3)
    flood = reminders_at(stack, alice, endpoint_id, [whole_second_from_now(0)] * 30)
    broker, _ = stack.broker(allow_private_endpoints=True)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    # Each message names the endpoint: workers park it while the endpoint is full before
    # opening a transaction (`Gate.park_if_full`).
    named = set()
    for queue in (QUEUE_NAME, f"{QUEUE_NAME}.DQ"):  # due, or held until their second
        key = f"{stack.namespace}:{queue}"
        for blob in broker.client.hvals(f"{key}.msgs"):
            named.add(decode_message(blob).options[ENDPOINT])
    assert named == {str(endpoint_id)}
    with stack.run_workers(broker, threads=8):
        assert stack.wait_for(lambda: sent(stack) == len(flood), 60)
    assert receiver.most_in_flight == 3
    assert sorted(receiver.keys()) == sorted(str(key) for key in flood)
    with unit_of_work(stack.sessions) as session:
        attempts = session.scalars(select(Reminder.attempts).where(Reminder.message_id.in_(flood)))
        assert set(attempts) == {1}  # waiting for a slot is no attempt


def test_a_retry_after_of_two_seconds_is_honoured_for_every_reminder_of_that_endpoint(
    stack: Stack, receivers: Callable[..., SlowReceiver]
) -> None:
    receiver = receivers(script=lambda n: (429, {"Retry-After": "2"}) if n == 0 else (200, {}))
    alice = stack.account("alice")
    endpoint_id = endpoint_for(stack, alice, receiver.url, max_concurrency=1)
    keys = reminders_at(stack, alice, endpoint_id, [whole_second_from_now(0)] * 3)
    broker, _ = stack.broker(allow_private_endpoints=True, min_backoff_ms=100)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker, threads=4):
        assert stack.wait_for(lambda: sent(stack) == len(keys), 30)
    first, *rest = receiver.arrivals
    assert len(rest) == 3  # the 429'd one again, and the two behind it
    assert min(arrival.at for arrival in rest) - first.at >= 2.0
    with unit_of_work(stack.sessions) as session:
        attempts = dict(
            session.execute(
                select(Reminder.message_id, Reminder.attempts).where(Reminder.message_id.in_(keys))
            ).all()
        )
    assert attempts[uuid.UUID(first.key)] == 2  # the 429 counted
    assert sorted(attempts.values()) == [1, 1, 2]  # the ones held back did not


def test_max_per_second_holds_at_the_receiver(
    stack: Stack, receivers: Callable[..., SlowReceiver]
) -> None:
    receiver = receivers()
    alice = stack.account("alice")
    endpoint_id = endpoint_for(stack, alice, receiver.url, per_second=4)
    keys = reminders_at(stack, alice, endpoint_id, [whole_second_from_now(0)] * 12)
    broker, _ = stack.broker(allow_private_endpoints=True)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker, threads=8):
        assert stack.wait_for(lambda: sent(stack) == len(keys), 30)
    times = sorted(arrival.at for arrival in receiver.arrivals)
    assert len(times) == 12
    # Over the run: 11 gaps of at least a quarter second, give or take the requests' jitter.
    assert times[-1] - times[0] >= 11 / 4 - 0.1
    # In any one second, no more than 4: the gate counts when it admits, the receiver when
    # the request arrives, a few milliseconds later or earlier for each.
    assert max(sum(1 for t in times if start <= t < start + 0.97) for start in times) <= 4


def test_a_sigkilled_worker_holding_slots_and_parked_reminders_loses_none(
    stack: Stack, receivers: Callable[..., SlowReceiver], tmp_path: Path
) -> None:
    """Real time: a real worker process is SIGKILLed with both of an endpoint's slots in flight
    and the rest parked; a second one delivers them all once."""
    receiver = receivers(hold=0.8)
    alice = stack.account("alice")
    endpoint_id = endpoint_for(stack, alice, receiver.url, max_concurrency=2)
    keys = reminders_at(stack, alice, endpoint_id, [whole_second_from_now(0)] * 10)
    settings = {"allow_private_endpoints": True, "heartbeat_timeout_ms": 2000}
    producer, _ = stack.broker(**settings)
    scan_due_tasks(stack.sessions, producer, stack.settings(**settings))
    env = stack.env(**settings)
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "1", "--threads", "4"]
    first = stack.spawn_logged(argv, env, tmp_path / "first.log")
    gate = Gate(producer.client, producer.namespace, QUEUE_NAME, lease_ms=1)
    # The first request proves the new endpoint (one at a time until it answers); then both
    # slots are in flight and the other seven wait.
    assert stack.wait_for(
        lambda: receiver.in_flight == 2 and len(gate.parked_message_ids()) == 7, 30, 0.05
    )
    os.killpg(first.pid, signal.SIGKILL)  # slots held, nothing given back
    first.wait(timeout=30)
    in_flight_at_kill = set(receiver.keys())
    stack.spawn_logged(argv, env, tmp_path / "second.log")

    def all_sent() -> bool:
        scan_due_tasks(stack.sessions, producer, stack.settings(**settings))  # maintenance
        return sent(stack) == len(keys)

    assert stack.wait_for(all_sent, 60, 0.5)
    assert set(receiver.keys()) == {str(key) for key in keys}
    arrived = receiver.keys()
    repeated = {key for key in arrived if arrived.count(key) > 1}
    assert repeated <= in_flight_at_kill  # only what was in flight at the crash came twice
    assert gate.parked_message_ids() == set()


def test_a_woken_reminder_whose_task_was_finished_gives_its_slot_to_the_next_at_once(
    stack: Stack, receivers: Callable[..., SlowReceiver]
) -> None:
    """Real time: three reminders to an endpoint taking one request at a time, 0.9 s each;
    the one parked first is finished meanwhile. The last goes out right after the first
    (not once the slot reserved for the finished one lapses, a minute later)."""
    receiver = receivers(hold=0.9)
    alice = stack.account("alice")
    endpoint_id = endpoint_for(stack, alice, receiver.url, max_concurrency=1)
    reminders_at(stack, alice, endpoint_id, [whole_second_from_now(0)] * 3)
    broker, _ = stack.broker(allow_private_endpoints=True)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    parked = f"{broker.namespace}:gate:endpoint:{endpoint_id}:parked"
    with stack.run_workers(broker, threads=4):
        assert stack.wait_for(lambda: broker.client.llen(parked) == 2, 15)
        finished = uuid.UUID(broker.client.lindex(parked, 0).decode())
        with unit_of_work(stack.sessions) as session:
            task_id = session.scalar(
                select(Reminder.task_id).where(Reminder.message_id == finished)
            )
            session.execute(update(Task).where(Task.id == task_id).values(status="done"))
        assert stack.wait_for(lambda: sent(stack) == 2, 15)
    first, last = receiver.arrivals
    assert str(finished) not in {first.key, last.key}
    # The reservation would have held the slot for a minute; a wake takes a moment.
    assert last.at - first.at < 10
