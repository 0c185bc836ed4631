"""Database access: the engine, the UTC datetime column type and the unit of work.

PostgreSQL (through psycopg 3) is the production database; SQLite serves the embedded
default. Both hold times as UTC: PostgreSQL in ``timestamptz``, SQLite as naive UTC text
that `UTCDateTime` turns back into aware datetimes. On SQLite every transaction starts
with ``BEGIN IMMEDIATE`` so that concurrent writers queue up on the file lock instead of
failing half-way, which is what row locks give on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from sqlalchemy import Connection, CursorResult, DateTime, Engine, create_engine, event, make_url
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from shared.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC on every database.

    Raises:
        ValueError: when given a naive datetime, which would be ambiguous.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(url: str, **options: Any) -> Engine:
    """Create the engine for ``url`` (already resolved, see `Settings.resolved_database_url`).

    Statement parameters are kept out of error messages: they can hold task titles and notes,
    and error messages reach logs and reminder rows.
    """
    options.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **options
        )
        _serialize_sqlite_writers(engine)
        return engine
    options.setdefault("pool_pre_ping", True)
    options.setdefault("pool_size", 5)
    options.setdefault("max_overflow", 10)
    return create_engine(url, **options)


def _serialize_sqlite_writers(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def prepare_sqlite_directory(settings: Settings) -> None:
    """Create the folder of a SQLite database file; nothing for a server database."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    with sessions() as session, session.begin():
        yield session


@cache
def _driver_sql(statement: Executable, dialect: Dialect) -> tuple[str, dict[str, Any]]:
    assert isinstance(statement, ClauseElement)
    compiled = statement.compile(dialect=dialect)
    return compiled.string, dict(compiled.params)


def execute_hot(
    connection: Connection, statement: Executable, params: Mapping[str, Any]
) -> CursorResult[Any]:
    """Execute a module-level Core ``statement`` on a hot path.

    On PostgreSQL the statement is compiled once and handed to the driver as SQL
    (``exec_driver_sql``): setting up the execution of a Core statement costs more Python
    than the round trip itself for the few statements run per reminder or per request.
    Only for statements whose parameters psycopg adapts as they are (UUIDs, aware
    datetimes) and whose rows need no type processing. Elsewhere (SQLite), plain Core.
    """
    if connection.dialect.name != "postgresql":
        return connection.execute(statement, params)
    sql, constants = _driver_sql(statement, connection.dialect)
    return connection.exec_driver_sql(sql, {**constants, **params})


Rows = Callable[[Executable, Mapping[str, Any]], Sequence[Sequence[Any]]]


@contextmanager
def hot_transaction(engine: Engine) -> Iterator[Rows]:
    """One transaction for a hot path, yielding ``rows(statement, params)``.

    Committed when the block ends, rolled back if it raises. ``rows`` runs a module-level
    Core statement and returns its rows as tuples.

    On PostgreSQL this bypasses SQLAlchemy's ``Connection``: a pooled psycopg connection
    runs the statement compiled once and server-side prepared. Per reminder, SQLAlchemy's
    connection, transaction and result objects cost more CPU than the transaction's three
    round trips. What SQLAlchemy would do on failure is kept: a psycopg error is raised as
    SQLAlchemy's ``DBAPIError`` subclass, and a connection found lost is invalidated so
    the pool replaces it. Rows come as the driver gives them (see `execute_hot`).
    Elsewhere (SQLite), a Core transaction.
    """
    if engine.dialect.name != "postgresql":
        with engine.begin() as connection:
            yield lambda statement, params: connection.execute(statement, params).all()
        return
    pooled = engine.raw_connection()
    try:
        driver = pooled.driver_connection
        assert isinstance(driver, psycopg.Connection)
        try:
            with driver.cursor() as cursor:

                def rows(statement: Executable, params: Mapping[str, Any]) -> Any:
                    sql, constants = _driver_sql(statement, engine.dialect)
                    cursor.execute(sql, {**constants, **params}, prepare=True)
                    return cursor.fetchall()

                yield rows
            driver.commit()
        except psycopg.Error as exc:
            lost = driver.closed or driver.broken  # as SQLAlchemy's psycopg dialect tells
            if lost:
                pooled.invalidate(exc)
            raise DBAPIError.instance(
                None, None, exc, psycopg.Error, hide_parameters=True, connection_invalidated=lost
            ) from exc
    finally:
        pooled.close()  # back to the pool, which rolls back what was not committed


T = TypeVar("T")


def once_more_if_connection_lost(action: Callable[[], T]) -> T:
    """Run ``action``, and once more if its pooled connection turned out to be dead.

    For reads on an engine without pre-ping: SQLAlchemy has then invalidated that connection
    and every one as old, so the second try runs on a fresh one. Never for writes, whose
    first try may have committed.
    """
    try:
        return action()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return action()


def utcnow() -> datetime:
    return datetime.now(UTC)
