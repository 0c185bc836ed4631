"""A database or Redis outage answers 503 with ``Retry-After``, never 500 (SPEC §6).

The API runs as the Procfile runs it (gunicorn, two workers of four threads) against a
PostgreSQL server and a Redis server of the test's own, which the test stops, restarts and
kills while it sends requests. Every answer a request gets while the database restarts or
is down is a 201 or a 503 problem document with ``Retry-After``: a connection that cannot be
opened (refused; "the database system is shutting down" / "is starting up") is the same
outage as one lost mid-request. Once the database is back, the same processes serve again,
and a ``POST`` retried with its ``Idempotency-Key`` after a 503 creates exactly one task.
``/readyz`` names the dependency that is down. With Redis down, creating tasks goes on (the
rate limiter fails open) and the operator endpoints that read the broker answer 503.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Engine, func, select, text

from api.app import create_app
from shared.config import Settings
from shared.store.db import make_engine, make_session_factory, unit_of_work
from shared.store.models import Reminder, Task
from shared.store.schema import upgrade
from tests.conftest import REDIS_URL, Account, ApiHarness, create_account, make_settings
from tests.private_servers import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from tests.processes import REPO, free_port, procfile, service_env, tail

PROBLEM = "application/problem+json"
DUE = "2030-01-31T09:00:00Z"
REQUEST_TIMEOUT = 20.0


@dataclass
class Answer:
    key: str
    status: int
    retry_after: str | None
    content_type: str
    body: str


@dataclass
class Deployment:
    """The web process of the Procfile on a private PostgreSQL and a private Redis."""

    base_url: str
    database: PrivatePostgres
    redis: PrivateRedis
    engine: Engine
    user: Account
    operator: Account
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT)

    def create(self, http: httpx.Client, key: str) -> Answer:
        """POST /tasks titled ``key``, with ``key`` as its Idempotency-Key."""
        headers = {**self.user.headers, "Idempotency-Key": key}
        response = http.post("/tasks", json={"title": key, "due_at": DUE}, headers=headers)
        return Answer(
            key,
            response.status_code,
            response.headers.get("Retry-After"),
            response.headers.get("Content-Type", ""),
            response.text[:300],
        )

    def tasks_by_title(self) -> dict[str, int]:
        with unit_of_work(make_session_factory(self.engine)) as session:
            rows = session.execute(select(Task.title, func.count()).group_by(Task.title)).all()
        return {title: int(count) for title, count in rows}


@contextlib.contextmanager
def procfile_web(settings: Settings, log: Path) -> Iterator[str]:
    """The Procfile's ``web`` line under ``bash -c``, bound to 127.0.0.1 on a free port."""
    port = free_port()
    line = procfile()["web"].replace("0.0.0.0:", "127.0.0.1:")
    assert "127.0.0.1:${PORT" in line, line
    env = {**service_env(settings), "PORT": str(port), "WEB_CONCURRENCY": "2"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", line],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, tail(log)
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"gunicorn did not answer:\n{tail(log)}"
            time.sleep(0.2)
        yield base_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with private_postgres() as database, private_redis() as redis_server:
        engine = make_engine(database.url)
        try:
            upgrade(engine)
            user = create_account(engine, "ada")
            operator = create_account(engine, "olga", operator=True)
            settings = make_settings(
                database_url=database.url,
                redis_url=redis_server.url,
                redis_namespace=f"outage-{uuid.uuid4().hex[:8]}",
                rate_limit="100000/minute",  # on, so a Redis outage goes through it
            )
            log = tmp_path / "web.log"
            with procfile_web(settings, log) as base_url:
                yield Deployment(base_url, database, redis_server, engine, user, operator, log)
        finally:
            engine.dispose()


@dataclass
class Traffic:
    """``POST /tasks`` in a loop from one thread, each with a fresh Idempotency-Key."""

    deployment: Deployment
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    max_requests: int = 20_000  # a bound, whatever happens to the stop signal

    def run(self) -> None:
        with self.deployment.client() as http:
            for _ in range(self.max_requests):
                if self.stop.is_set():
                    return
                try:
                    answer = self.deployment.create(http, f"k-{uuid.uuid4().hex}")
                except httpx.TransportError as exc:
                    answer = Answer("", 0, None, "", f"{type(exc).__name__}: {exc}")
                self.answers.append(answer)
                time.sleep(0.005)

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for answer in list(self.answers):
            counts[answer.status] = counts.get(answer.status, 0) + 1
        return counts


def readiness(http: httpx.Client) -> tuple[int, dict[str, Any]]:
    response = http.get("/readyz")
    return response.status_code, response.json()


@pytest.mark.slow
def test_posts_while_the_database_restarts_or_is_down_are_201_or_503_never_500(
    deployment: Deployment,
) -> None:
    """Real time: a real PostgreSQL server is stopped and restarted under real gunicorn
    processes."""
    traffic = Traffic(deployment)
    senders = [threading.Thread(target=traffic.run) for _ in range(3)]
    for sender in senders:
        sender.start()
    try:
        with deployment.client() as http:
            time.sleep(1)
            deployment.database.stop("fast")  # a restart, as `pg_ctl restart` does it
            deployment.database.start()
            time.sleep(1)
            deployment.database.stop("fast")  # an outage of a few seconds
            time.sleep(1)
            down_status, down = readiness(http)
            time.sleep(2)
            deployment.database.start()
            time.sleep(1)
            up_status, up = readiness(http)
    finally:
        traffic.stop.set()
        for sender in senders:
            sender.join(timeout=60)
    assert not any(sender.is_alive() for sender in senders)

    counts = traffic.statuses()
    assert set(counts) <= {201, 503}, (
        counts,
        [a for a in traffic.answers if a.status not in (201, 503)][:3],
        tail(deployment.log),
    )
    unavailable = [answer for answer in traffic.answers if answer.status == 503]
    assert unavailable, counts  # the outage was met
    for answer in unavailable:
        assert answer.content_type == PROBLEM, answer
        assert answer.retry_after is not None and int(answer.retry_after) >= 1, answer
    assert (down_status, down["checks"]) == (
        503,
        {"database": down["checks"]["database"], "broker": "ok"},
    )
    assert down["checks"]["database"] != "ok"
    assert (up_status, up["checks"]) == (200, {"database": "ok", "broker": "ok"})

    with deployment.client() as http:
        # The same processes serve again, without a restart.
        after = [deployment.create(http, f"after-{n}") for n in range(10)]
        assert [answer.status for answer in after] == [201] * 10, after
        # Each POST answered 503 is retried with its key, as Retry-After asks, until it is
        # created: a claim whose request met the outage may stay in flight (409) a while.
        deadline = time.monotonic() + 90
        for answer in unavailable:
            retried = deployment.create(http, answer.key)
            while retried.status == 409 and time.monotonic() < deadline:
                time.sleep(float(retried.retry_after or 1))
                retried = deployment.create(http, answer.key)
            assert retried.status == 201, retried

    created = deployment.tasks_by_title()
    answered_201 = {answer.key for answer in traffic.answers if answer.status == 201}
    assert {key: created.get(key) for key in answered_201} == dict.fromkeys(answered_201, 1)
    assert {answer.key: created.get(answer.key) for answer in unavailable} == {
        answer.key: 1 for answer in unavailable
    }
    assert len(created) == len(answered_201 | {a.key for a in unavailable}) + 10


def test_with_redis_down_tasks_are_created_and_broker_reads_answer_503(
    deployment: Deployment,
) -> None:
    """Real time: a real Redis server is killed and restarted, and the API notices it is back."""
    operator = deployment.operator.headers
    with deployment.client() as http:
        assert http.get("/ops/queues", headers=operator).status_code == 200
        deployment.redis.kill()

        created = deployment.create(http, "while-redis-is-down")
        # Due at once (its remind time has passed): the API would enqueue it right away, but
        # cannot; the client gets its 201 and the row stays waiting for the next scan.
        soon = {"title": "due-now", "due_at": datetime.now(UTC).isoformat()}
        due_now = http.post("/tasks", json=soon, headers=deployment.user.headers)
        status, ready = readiness(http)
        broker_reads = {
            path: http.get(path, headers=operator)
            for path in ("/ops/queues", "/ops/receivers", "/ops", "/metrics")
        }

        assert created.status == 201, created  # the rate limiter fails open
        assert due_now.status_code == 201, due_now.text
        assert due_now.json()["reminder"]["state"] == "waiting"
        with unit_of_work(make_session_factory(deployment.engine)) as session:
            [state] = session.scalars(
                select(Reminder.state).where(Reminder.task_id == uuid.UUID(due_now.json()["id"]))
            ).all()
        assert state == "waiting"
        assert status == 503 and ready["checks"]["database"] == "ok", ready
        assert ready["checks"]["broker"] != "ok", ready
        for path, response in broker_reads.items():
            assert response.status_code == 503, (path, response.text[:300])
            assert response.headers["Content-Type"] == PROBLEM, path
            assert int(response.headers["Retry-After"]) >= 1, path

        deployment.redis.start()
        deadline = time.monotonic() + 10
        while readiness(http)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert readiness(http) == (
            200,
            {"status": "ready", "checks": {"database": "ok", "broker": "ok"}},
        )
        for path in ("/ops/queues", "/ops/receivers", "/ops", "/metrics"):
            assert http.get(path, headers=operator).status_code == 200, path


def test_a_post_whose_database_went_away_after_its_key_was_claimed_is_retried_into_one_task(
    redis_namespace: str,
) -> None:
    """The key is claimed, then the database stops under the INSERT: 503, and the claim
    cannot be given back until the database is up again. The retry the 503 asks for, once it
    is, creates the task: not a 409 until the claim counts as abandoned (60 s).

    Real time: a real PostgreSQL server stops under a request and comes back; the retry follows
    Retry-After."""
    body = {"title": "one task", "due_at": DUE}
    with private_postgres() as database:
        engine = make_engine(database.url)
        try:
            upgrade(engine)
            user = create_account(engine, "ada")
            settings = make_settings(
                database_url=database.url,
                redis_url=REDIS_URL,
                redis_namespace=redis_namespace,
                rate_limit="",
            )
            app = create_app(settings)
            client = app.test_client()
            headers = {**user.headers, "Idempotency-Key": "once"}
            answers: list[Any] = []
            plain_url = database.url.replace("postgresql+psycopg://", "postgresql://")
            blocker = psycopg.connect(plain_url)
            try:
                # Hold the tasks table so the request waits in its INSERT, key claimed.
                blocker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
                request = threading.Thread(
                    target=lambda: answers.append(client.post("/tasks", json=body, headers=headers))
                )
                request.start()
                deadline = time.monotonic() + 10
                waiting = 0
                while not waiting and time.monotonic() < deadline:
                    time.sleep(0.05)
                    waiting = len(
                        blocker.execute(
                            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        ).fetchall()
                    )
                assert waiting == 1
                database.stop("fast")  # ends the blocker's session too
            finally:
                blocker.close()  # its session ended with the server
            request.join(timeout=30)
            [answer] = answers
            assert answer.status_code == 503, answer.get_data(as_text=True)
            assert answer.mimetype == PROBLEM
            assert answer.headers["Retry-After"] == "1"

            time.sleep(1)  # down a while: the claim cannot be given back yet
            database.start()
            back = time.monotonic()
            retried = client.post("/tasks", json=body, headers=headers)
            while retried.status_code == 409 and time.monotonic() < back + 5:
                time.sleep(int(retried.headers["Retry-After"]))
                retried = client.post("/tasks", json=body, headers=headers)
            assert retried.status_code == 201, retried.get_data(as_text=True)
            replayed = client.post("/tasks", json=body, headers=headers)
            assert replayed.status_code == 201
            assert replayed.get_json()["id"] == retried.get_json()["id"]
            with unit_of_work(make_session_factory(engine)) as session:
                assert session.scalar(select(func.count()).select_from(Task)) == 1
            app.extensions["reminders"]["engine"].dispose()
        finally:
            engine.dispose()


def test_an_error_the_database_answers_is_a_500_not_a_503(api: ApiHarness) -> None:
    """Only an unreachable database is a 503: a statement the server refuses is a bug."""
    alice = api.account("alice")
    api.client.application.testing = False  # answer the error, as in production
    with api.engine.begin() as connection:
        connection.execute(text("ALTER TABLE tasks RENAME TO tasks_elsewhere"))

    response = api.client.post("/tasks", json={"title": "t", "due_at": DUE}, headers=alice.headers)

    assert response.status_code == 500, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    assert "Retry-After" not in response.headers
