"""The API's pool hands out connections without pinging them first (SPEC §4, §6).

Authentication is every request's first query and tries a dead connection once more on a
fresh one, so a database restart costs users nothing; a connection lost in the middle of a
request answers 503 with Retry-After instead of a bare 500.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from api.app import create_app
from shared.store.db import make_engine
from shared.store.schema import upgrade
from tests.conftest import REDIS_URL, create_account, make_settings

BASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


BODY = {"title": "Water the plants", "due_at": "2030-01-31T09:00:00Z"}


@dataclass(frozen=True)
class OwnPoolApi:
    client: Any
    headers: dict[str, str]
    schema: str  # also the application_name of every connection of the test


@pytest.fixture
def own_pool_api(pg_url: str, redis_namespace: str) -> Iterator[OwnPoolApi]:
    """The API as production builds it: its own engine, from the settings; one account."""
    setup = make_engine(pg_url)
    upgrade(setup)
    account = create_account(setup, "ada")
    setup.dispose()
    settings = make_settings(
        database_url=pg_url, redis_url=REDIS_URL, redis_namespace=redis_namespace
    )
    app = create_app(settings)
    app.testing = True
    schema = pg_url.rsplit("application_name=", 1)[1]
    yield OwnPoolApi(app.test_client(), account.headers, schema)
    app.extensions["reminders"]["engine"].dispose()


def terminate_backends(schema: str, where: str = "TRUE") -> int:
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE application_name = %s AND pid <> pg_backend_pid() AND {where}",
            (schema,),
        ).fetchall()
    return len(rows)


def test_requests_succeed_after_every_pooled_connection_was_killed(
    own_pool_api: OwnPoolApi,
) -> None:
    client, headers, schema = own_pool_api.client, own_pool_api.headers, own_pool_api.schema
    assert client.post("/tasks", json=BODY, headers=headers).status_code == 201
    engine = own_pool_api.client.application.extensions["reminders"]["engine"]
    with engine.connect(), engine.connect(), engine.connect():
        pass  # three connections in the pool: a retry must not take the next dead one

    assert terminate_backends(schema) >= 3  # what a database restart does to the pool

    listed = client.get("/tasks", headers=headers)
    assert listed.status_code == 200, listed.get_data(as_text=True)
    assert len(listed.json["items"]) == 1
    assert client.post("/tasks", json=BODY, headers=headers).status_code == 201
    terminate_backends(schema)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["database"] == "ok"


def test_connection_lost_during_a_request_answers_503_with_retry_after(
    own_pool_api: OwnPoolApi,
) -> None:
    client, headers, schema = own_pool_api.client, own_pool_api.headers, own_pool_api.schema
    answers: list[Any] = []
    with psycopg.connect(BASE_URL, options=f"-csearch_path={schema}") as blocker:
        # Hold the tasks table so the request's INSERT waits, then cut that request's connection.
        blocker.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        request = threading.Thread(
            target=lambda: answers.append(client.post("/tasks", json=BODY, headers=headers))
        )
        request.start()
        deadline = time.monotonic() + 10
        killed = 0
        while not killed and time.monotonic() < deadline:
            time.sleep(0.05)
            killed = terminate_backends(schema, "wait_event_type = 'Lock'")
        blocker.rollback()
        request.join(timeout=10)
    assert killed == 1
    [answer] = answers
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.mimetype == "application/problem+json"
    # The retry the answer asks for works, and the lost attempt wrote nothing.
    assert client.post("/tasks", json=BODY, headers=headers).status_code == 201
    assert len(client.get("/tasks", headers=headers).json["items"]) == 1
