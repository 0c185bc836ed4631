"""Harness for pipeline tests: real PostgreSQL and Redis, a local webhook receiver, workers.

- `Receiver`: an HTTP server on 127.0.0.1 that answers from a script of statuses and
  records every request (headers, JSON body, time), like a customer's webhook endpoint.
- `Stack`: settings, database, broker and actors for one test; ``stack.run_workers()``
  runs an in-process Dramatiq worker; ``stack.env()`` is the environment for real
  ``reminders``/``dramatiq`` processes pointed at the same schema and namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from shared.broker.queue import QUEUE_NAME, make_broker
from shared.broker.redis_broker import decode_message
from shared.config import Settings
from shared.delivery.address_guard import Resolver, system_resolver
from shared.planning.keys import message_id
from shared.store.db import make_session_factory, unit_of_work, utcnow
from shared.store.models import Reminder, Task
from shared.store.occurrences import plan_reminders
from tests.conftest import REDIS_URL, Account, create_account, make_settings
from tests.processes import service_env
from workers.actors import Actors, Pipeline, declare_actors
from workers.admission import make_admissions
from workers.channels import Channel, make_channel
from workers.endpoint_channel import make_endpoint_channel

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


HORIZON_SECONDS = 86400  # REMINDERS_HORIZON's default


def reminder_id(task: Task) -> uuid.UUID:
    """The message ID of a one-off task's first (earliest) reminder."""
    return message_id(task.id, task.due_at, task.reminder_offsets[0])


@dataclass
class Receipt:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: bytes
    wall: float = field(default_factory=time.time)  # the receiver's clock on arrival

    @property
    def key(self) -> str:
        return self.headers["Idempotency-Key"]

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 answering ``script(n)`` to its n-th request (0-based)."""

    script: Callable[[int], int] = lambda n: 200
    delay_seconds: float = 0.0
    receipts: list[Receipt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    index = len(receiver.receipts)
                    receiver.receipts.append(Receipt(time.monotonic(), dict(self.headers), body))
                if receiver.delay_seconds:
                    time.sleep(receiver.delay_seconds)
                status = receiver.script(index)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

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
            return [receipt.key for receipt in self.receipts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@dataclass
class Stack:
    engine: Engine
    database_url: str
    namespace: str
    overrides: dict[str, Any]
    _brokers: list[RedisBroker] = field(default_factory=list)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.engine)

    def settings(self, **more: Any) -> Settings:
        defaults = {"redis_url": REDIS_URL}  # an override may name a private server
        return make_settings(
            database_url=self.database_url,
            redis_namespace=self.namespace,
            **{**defaults, **self.overrides, **more},
        )

    def broker(
        self,
        channel: Channel | None = None,
        resolve: Resolver | None = None,
        endpoint_clock: Callable[[], datetime] = utcnow,
        **more: Any,
    ) -> tuple[RedisBroker, Actors]:
        """A fresh broker with the actors declared on it (like one worker process).

        ``channel`` replaces the one the settings choose; ``resolve`` the host name
        resolver of users' endpoints; ``endpoint_clock`` the clock that stamps the attempts
        on users' endpoints.
        """
        settings = self.settings(**more)
        broker = make_broker(settings)
        admissions = make_admissions(settings, broker)  # every receiver's limits, as workers
        actors = declare_actors(
            broker,
            Pipeline(
                sessions=self.sessions,
                channel=channel or make_channel(settings, admissions),
                settings=settings,
                endpoints=make_endpoint_channel(
                    settings,
                    self.engine,
                    resolve or system_resolver,
                    endpoint_clock,
                    admissions=admissions,
                ),
                gate=admissions.gate,
            ),
        )
        self._brokers.append(broker)
        return broker, actors

    @contextmanager
    def run_workers(self, broker: RedisBroker, threads: int = 4) -> Iterator[Worker]:
        worker = Worker(broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()

    def account(self, name: str = "alice") -> Account:
        return create_account(self.engine, name)

    def add_task(
        self,
        owner: Account,
        due_at: datetime,
        remind_before_seconds: int = 3600,
        title: str = "a task",
        notes: str | None = None,
    ) -> Task:
        now = utcnow()
        task = Task(
            id=uuid.uuid4(),
            owner_id=owner.id,
            title=title,
            notes=notes,
            due_at=due_at.replace(microsecond=0),
            reminder_offsets=[remind_before_seconds],
            status="open",
            created_at=now,
            updated_at=now,
        )
        with unit_of_work(self.sessions) as session:
            session.add(task)
            session.flush()
            plan_reminders(session, task, now, HORIZON_SECONDS)
        return task

    def add_due_tasks(self, owner: Account, count: int) -> list[Task]:
        """``count`` tasks whose reminder is due now (due in 30 min, remind 1 h before)."""
        now = utcnow()
        rows = []
        with unit_of_work(self.sessions) as session:
            for _ in range(count):
                task = Task(
                    id=uuid.uuid4(),
                    owner_id=owner.id,
                    title="due",
                    due_at=(now + timedelta(minutes=30)).replace(microsecond=0),
                    reminder_offsets=[3600],
                    status="open",
                    created_at=now,
                    updated_at=now,
                )
                session.add(task)
                rows.append(task)
            session.flush()
            for task in rows:
                plan_reminders(session, task, now, HORIZON_SECONDS)
        return rows

    def reminders(self) -> list[Reminder]:
        with unit_of_work(self.sessions) as session:
            return list(session.scalars(select(Reminder)))

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.reminders():
            counts[row.state] = counts.get(row.state, 0) + 1
        return counts

    def wait_for(
        self, condition: Callable[[], bool], timeout: float, interval: float = 0.1
    ) -> bool:
        """Poll ``condition`` until true or ``timeout`` seconds pass; returns its last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(interval)
        return condition()

    def broker_instances(self) -> set[str]:
        """The broker instances that have stamped this namespace's heartbeat: one per worker
        process (and one per broker of the test's that has called Redis's dispatch)."""
        client = redis.Redis.from_url(self.settings().redis_url)
        try:
            return {m.decode() for m in client.zrange(f"{self.namespace}:__heartbeats__", 0, -1)}
        finally:
            client.close()

    def new_instances(self, before: set[str], count: int, timeout: float = 60) -> list[str]:
        """The ``count`` broker instances that stamp the heartbeat after ``before`` was read
        (a worker group's processes, once each has called Redis)."""
        assert self.wait_for(lambda: len(self.broker_instances() - before) >= count, timeout)
        return sorted(self.broker_instances() - before)

    def held(self, instance: str) -> set[str]:
        """Message IDs of the reminders broker ``instance`` fetched and has not acknowledged."""
        client = redis.Redis.from_url(self.settings().redis_url)
        try:
            ids = list(client.smembers(f"{self.namespace}:__acks__.{instance}.{QUEUE_NAME}"))
            bodies = client.hmget(f"{self.namespace}:{QUEUE_NAME}.msgs", ids) if ids else []
        finally:
            client.close()
        return {decode_message(body).message_id for body in bodies if body is not None}

    def unsent(self, message_ids: set[str]) -> set[str]:
        """Those of ``message_ids`` whose reminder is not ``sent``."""
        sent = {str(row.message_id) for row in self.reminders() if row.state == "sent"}
        return message_ids - sent

    def env(self, **more: Any) -> dict[str, str]:
        """Environment for real service processes on this test's database and namespace."""
        return service_env(self.settings(**more))

    def spawn(
        self, argv: list[str], env: dict[str, str], **options: Any
    ) -> subprocess.Popen[bytes]:
        """Start a process in its own process group; it is killed when the test ends."""
        process = subprocess.Popen(argv, env=env, start_new_session=True, **options)
        self._processes.append(process)
        return process

    def spawn_logged(
        self, argv: list[str], env: dict[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        """`spawn` from the repository root, stdout and stderr into ``log``."""
        with log.open("wb") as out:
            return self.spawn(argv, env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for broker in self._brokers:
            broker.close()


FAST_RETRIES = {"min_backoff_ms": 100, "max_backoff_ms": 2000, "max_retries": 3}


@pytest.fixture
def stack(pg_engine: Engine, pg_url: str, redis_namespace: str) -> Iterator[Stack]:
    harness = Stack(
        engine=pg_engine,
        database_url=pg_url,
        namespace=redis_namespace,
        overrides=dict(FAST_RETRIES),
    )
    yield harness
    harness.close()


@pytest.fixture
def api_client_for() -> Callable[[Stack], Any]:
    """A Flask test client on a stack's database and broker namespace."""
    from api.app import create_app

    def build(stack: Stack) -> Any:
        app = create_app(stack.settings(), engine=stack.engine)
        app.testing = True
        return app.test_client()

    return build
