"""Every PostgreSQL and Redis connection gives up a silent server after REMINDERS_PEER_TIMEOUT
(`shared.store.db.libpq_timeouts`, `shared.broker.connection.redis_options`), on both ends of a
PostgreSQL connection; the partitions themselves are in ``tests/pipeline/test_partitions``."""

from __future__ import annotations

import socket
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import text

from shared.broker.connection import redis_client, redis_options
from shared.broker.queue import make_broker
from shared.config import keepalive_for
from shared.store.db import make_engine
from tests.conftest import REDIS_URL, make_settings


def session(url: str, **options: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The libpq parameters of a connection of `make_engine`, and its server-side settings."""
    engine = make_engine(url, **options)
    try:
        with engine.connect() as connection:
            driver = connection.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            client = driver.info.get_parameters()
            names = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
            server = {name: connection.execute(text(f"SHOW {name}")).scalar_one() for name in names}
            server["tcp_user_timeout"] = connection.execute(
                text("SHOW tcp_user_timeout")
            ).scalar_one()
    finally:
        engine.dispose()
    return client, server


def test_postgres_connections_give_up_a_silent_server_on_both_ends(pg_url: str) -> None:
    client, server = session(pg_url, peer_timeout=10)

    keepalive = keepalive_for(10)
    assert (keepalive.idle, keepalive.interval, keepalive.count) == (5, 1, 5)
    assert client["connect_timeout"] == "10" and client["keepalives"] == "1"
    assert client["tcp_user_timeout"] == "10000"
    assert (client["keepalives_idle"], client["keepalives_interval"]) == ("5", "1")
    assert client["keepalives_count"] == "5"
    # The server ends a backend whose client went silent as soon (its locks go with it).
    assert server == {
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "1",
        "tcp_keepalives_count": "5",
        "tcp_user_timeout": "10000",  # ms
    }


def test_a_database_url_keeps_the_timeouts_it_names(pg_url: str) -> None:
    client, _ = session(f"{pg_url}&keepalives_idle=30&connect_timeout=3", peer_timeout=10)

    assert (client["keepalives_idle"], client["connect_timeout"]) == ("30", "3")
    assert client["tcp_user_timeout"] == "10000"


def test_redis_connections_give_up_a_silent_server(redis_namespace: str) -> None:
    settings = make_settings(redis_url=REDIS_URL, redis_namespace=redis_namespace)
    broker = make_broker(settings.model_copy(update={"peer_timeout_seconds": 7}))
    try:
        broker.client.ping()
        connection = broker.client.connection_pool.get_connection()
        try:
            sock = connection._sock
            assert sock is not None
            assert sock.gettimeout() == 7
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 7000
            assert connection.health_check_interval == 7
        finally:
            broker.client.connection_pool.release(connection)
    finally:
        broker.close()


def test_a_redis_server_that_stops_answering_fails_the_command_within_the_timeout() -> None:
    """A server that accepts and then never answers: only a timeout can tell."""
    silent = socket.create_server(("127.0.0.1", 0))
    url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    client = redis_client(url, **redis_options(url, 2))
    try:
        with pytest.raises(redis.TimeoutError):
            client.ping()
    finally:
        client.close()
        silent.close()


def test_a_unix_socket_gets_the_timeouts_without_tcp_options() -> None:
    options = redis_options("unix:///run/redis.sock", 5)

    assert options == {"socket_timeout": 5, "health_check_interval": 5}
    redis.ConnectionPool.from_url("unix:///run/redis.sock", **options)  # accepted as they are
