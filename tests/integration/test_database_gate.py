"""A worker process's database gate closes once per outage (`workers.outage.DatabaseGate`).

Against a private PostgreSQL server that the test restarts: the attempt that meets the
outage closes the gate and its probe opens it again once the server answers. An attempt that
was already under way before the gate closed — a delivery whose receiver answers only after
the probe found the database again — then fails its commit on its old connection; that is
the same outage, already ridden out, and must not hold the process again. An attempt begun
after the gate opened that meets a lost server is a new outage and closes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from shared.store.db import make_engine
from tests.private_servers import PrivatePostgres, private_postgres
from workers.outage import DatabaseGate


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    with private_postgres() as private:
        yield private


def failure(connection: Connection) -> DBAPIError:
    """The error of a statement on ``connection``, whose server went away under it."""
    with pytest.raises(DBAPIError) as raised:
        connection.execute(text("SELECT 1"))
    return raised.value


def attempt_meeting_an_outage(gate: DatabaseGate, engine: Engine) -> None:
    """In a thread of its own (a worker thread): pass the gate, meet the lost server on a
    pooled connection, report it, and wait until the gate opens again (its probe)."""

    def run() -> None:
        gate.before_process_message(None, None)
        with engine.connect() as connection:
            error = failure(connection)
        gate.after_process_message(None, None, exception=error)
        assert not gate.is_open
        gate.wait_until_open()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()


def test_an_attempt_begun_before_the_gate_reopened_does_not_close_it_again(
    server: PrivatePostgres,
) -> None:
    # As the workers build theirs: no pre-ping, a connection per thread.
    engine = make_engine(server.url, pool_pre_ping=False, pool_size=0)
    gate = DatabaseGate(engine)
    with engine.connect(), engine.connect():  # one for each thread, kept in the pool
        pass

    gate.before_process_message(None, None)  # this thread's attempt begins...
    with engine.connect() as in_flight:
        in_flight.execute(text("SELECT 1"))
        server.stop("immediate")  # ...the server goes away under it...
        server.start()
        attempt_meeting_an_outage(gate, engine)  # ...another attempt closes the gate, which opens
        assert gate.is_open
        # This attempt's commit now fails on its old connection.
        gate.after_process_message(None, None, exception=failure(in_flight))
    assert gate.is_open

    gate.before_process_message(None, None)  # a new attempt, after the gate opened
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        server.stop("immediate")
        gate.after_process_message(None, None, exception=failure(connection))
    assert not gate.is_open  # a new outage
    engine.dispose()
