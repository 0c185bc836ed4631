"""A connection to a PostgreSQL server that refuses writes counts as lost (SPEC §4.10).

Against a private primary and its streaming standby, named by one multi-host
``DATABASE_URL`` with ``target_session_attrs=read-write``: the primary is fenced read-only
(``default_transaction_read_only``, reloaded, as a switchover does) and the standby
promoted, while the engine's pooled connections stay open to the old primary. A write
there (``cannot execute … in a read-only transaction``), on the hot path or through
SQLAlchemy, is then an unreachable database: the pool lets go of its connections and the
next write reaches the new primary. The API answers it 503 with ``Retry-After``, and the
retry creates the task. A server that takes no writes never passes the outage probe.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, column, insert, table, text
from sqlalchemy.exc import DBAPIError

from api.app import create_app
from shared.store.db import (
    check_takes_writes,
    database_unreachable,
    hot_statement,
    make_engine,
    once_more_if_connection_lost,
)
from shared.store.schema import upgrade
from tests.conftest import REDIS_URL, create_account, make_settings
from tests.private_servers import ReplicatedPostgres, multi_host_url, private_replicated_postgres

NOTES = table("notes", column("n"))


@pytest.fixture
def servers() -> Iterator[ReplicatedPostgres]:
    with private_replicated_postgres(synchronous=False) as pair:
        pair.primary.query("CREATE TABLE notes (n int)")
        yield pair


def engine_on(servers: ReplicatedPostgres) -> Engine:
    url = multi_host_url(servers.primary, servers.standby)
    return make_engine(make_settings(database_url=url).resolved_database_url)


def server_port(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT inet_server_port()")).scalar_one())


def fence_and_promote(servers: ReplicatedPostgres) -> None:
    """The old primary keeps answering reads on the open connections, refusing writes."""
    servers.primary.query("ALTER SYSTEM SET default_transaction_read_only = on")
    servers.primary.query("SELECT pg_reload_conf()")
    servers.standby.promote()


def test_a_write_refused_as_read_only_lets_go_of_the_pool_and_the_next_reaches_the_new_primary(
    servers: ReplicatedPostgres,
) -> None:
    hot, orm = engine_on(servers), engine_on(servers)
    # Connections open to the old primary, two in each pool.
    for engine in (hot, orm):
        with engine.connect(), engine.connect():
            pass
        assert server_port(engine) == servers.primary.port

    fence_and_promote(servers)

    with pytest.raises(DBAPIError) as refused:
        hot_statement(hot, insert(NOTES), {"n": 1})
    assert "read-only transaction" in str(refused.value)
    assert refused.value.connection_invalidated and database_unreachable(refused.value)
    hot_statement(hot, insert(NOTES), {"n": 2})  # a fresh connection, to the new primary

    with pytest.raises(DBAPIError) as refused, orm.begin() as connection:
        connection.execute(insert(NOTES), {"n": 3})
    assert refused.value.connection_invalidated and database_unreachable(refused.value)
    with orm.begin() as connection:
        connection.execute(insert(NOTES), {"n": 4})

    assert servers.standby.query("SELECT n FROM notes ORDER BY n") == [(2,), (4,)]
    for engine in (hot, orm):
        assert server_port(engine) == servers.standby.port  # the old pool is gone
        engine.dispose()


def test_the_outage_probe_passes_only_a_server_that_takes_writes(
    servers: ReplicatedPostgres,
) -> None:
    standby_only = make_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{servers.standby.port}/postgres"
    )
    with pytest.raises(DBAPIError) as read_only:
        check_takes_writes(standby_only)
    assert database_unreachable(read_only.value)

    engine = engine_on(servers)
    check_takes_writes(engine)  # a connection to the primary, kept in the pool
    fence_and_promote(servers)
    # The pooled connection reaches a read-only server: the first try fails and lets go of
    # it, the second opens one to the new primary.
    once_more_if_connection_lost(lambda: check_takes_writes(engine))
    assert server_port(engine) == servers.standby.port
    for each in (standby_only, engine):
        each.dispose()


def test_the_api_answers_a_refused_write_503_and_its_retry_creates_the_task(
    servers: ReplicatedPostgres, redis_namespace: str
) -> None:
    engine = engine_on(servers)
    upgrade(engine)
    owner = create_account(engine, "ada")
    settings = make_settings(
        database_url=multi_host_url(servers.primary, servers.standby),
        redis_url=REDIS_URL,
        redis_namespace=redis_namespace,
    )
    app = create_app(settings, engine=engine)
    app.testing = True
    api = app.test_client()
    body = {"title": "renew", "due_at": "2031-03-01T09:00:00+00:00"}
    headers = {**owner.headers, "Idempotency-Key": "renew-1"}
    assert api.get("/tasks", headers=owner.headers).status_code == 200  # pooled, on the primary

    fence_and_promote(servers)
    refused = api.post("/tasks", json=body, headers=headers)
    retried = api.post("/tasks", json=body, headers=headers)

    assert refused.status_code == 503, refused.get_data(as_text=True)
    assert refused.headers["Retry-After"] == "1"
    assert retried.status_code == 201, retried.get_data(as_text=True)
    assert servers.standby.query("SELECT title FROM tasks") == [("renew",)]
    assert api.get("/readyz").status_code == 200
    engine.dispose()
