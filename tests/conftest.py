"""Test harness: real PostgreSQL and Redis, each test isolated.

- PostgreSQL: every test gets its own schema in the database of
  ``REMINDERS_TEST_DATABASE_URL`` (default: the local ``test`` database), migrated with
  Alembic, dropped afterwards.
- Redis: every test gets its own key namespace on ``REMINDERS_TEST_REDIS_URL``, deleted
  afterwards.
- SQLite: a file in the test's temporary directory.

Without ``CI=true`` a test whose server is not reachable is skipped; under ``CI=true`` it
fails, so CI cannot go green by skipping the guarantees.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import Engine

from shared.config import Settings
from shared.planning.keys import hash_token, new_token
from shared.store.db import make_engine, make_session_factory, unit_of_work
from shared.store.models import ApiToken, User
from shared.store.schema import upgrade

PG_URL = os.environ.get("REMINDERS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REMINDERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {type(exc).__name__}: {exc}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services are required)", pytrace=False)
    pytest.skip(message)


def _plain_pg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def pg_schema() -> Iterator[str]:
    """A SQLAlchemy URL whose connections live in a fresh, empty schema, dropped after."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    base = _plain_pg_url(PG_URL)
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    separator = "&" if "?" in base else "?"
    yield (f"{base}{separator}options=-csearch_path%3D{schema}&application_name={schema}").replace(
        "postgresql://", "postgresql+psycopg://", 1
    )
    with psycopg.connect(base, autocommit=True) as conn:
        # Sessions left behind (a killed worker, a leaked pool) would block the drop.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (schema,),
        )
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextmanager
def served(app: Any) -> Iterator[str]:
    """A WSGI app behind a real threaded HTTP server on 127.0.0.1; yields its base URL."""
    from werkzeug.serving import make_server

    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        http.server_close()
        thread.join(timeout=10)


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg_schema() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'reminders.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def any_database_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A private key prefix on the real Redis server, removed after the test."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    yield namespace
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# The suite lets a series fire every minute (production's default minimum is an hour), so
# recurring tasks can be delivered in real time.
TEST_MIN_RECURRENCE_SECONDS = 60


# One key for the run, so the API and worker processes of a test read each other's secrets.
TEST_SECRET_KEY = Fernet.generate_key().decode()


def make_settings(**values: Any) -> Settings:
    """Settings for a test, by field name (``database_url=...``, ``max_retries=...``)."""
    return Settings.model_validate(
        {
            "min_recurrence_seconds": TEST_MIN_RECURRENCE_SECONDS,
            "secret_key": TEST_SECRET_KEY,
            **values,
        }
    )


@pytest.fixture
def migrated(any_database_url: str) -> Iterator[Engine]:
    engine = make_engine(any_database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@dataclass(frozen=True)
class Account:
    id: uuid.UUID
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def create_account(engine: Engine, name: str, *, operator: bool = False) -> Account:
    token = new_token()
    with unit_of_work(make_session_factory(engine)) as session:
        user = User(id=uuid.uuid4(), name=name, is_operator=operator)
        session.add(user)
        session.flush()
        session.add(ApiToken(user_id=user.id, token_hash=hash_token(token)))
    return Account(id=user.id, name=name, token=token)


@pytest.fixture
def account_factory() -> Callable[..., Account]:
    return create_account


@dataclass
class ApiHarness:
    """A Flask test client on a migrated PostgreSQL schema and a private Redis namespace."""

    client: Any
    engine: Engine
    settings: Settings

    def account(self, name: str, *, operator: bool = False) -> Account:
        return create_account(self.engine, name, operator=operator)


@pytest.fixture
def api(pg_engine: Engine, pg_url: str, redis_namespace: str) -> ApiHarness:
    from api.app import create_app

    settings = make_settings(
        database_url=pg_url, redis_url=REDIS_URL, redis_namespace=redis_namespace
    )
    app = create_app(settings, engine=pg_engine)
    app.testing = True
    return ApiHarness(client=app.test_client(), engine=pg_engine, settings=settings)
