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
import psycopg.errors
from psycopg.pq import ExecStatus
from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    create_engine,
    event,
    func,
    make_url,
    select,
    text,
)
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.types import TypeDecorator

from shared.config import DEFAULT_PEER_TIMEOUT_SECONDS, Keepalive, keepalive_for

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


def make_engine(
    url: str, *, peer_timeout: int = DEFAULT_PEER_TIMEOUT_SECONDS, **options: Any
) -> Engine:
    """Create the engine for ``url`` (already resolved, see `Settings.resolved_database_url`).

    Statement parameters are kept out of error messages: they can hold task titles and notes,
    and error messages reach logs and reminder rows.

    PostgreSQL connections give up a server that stops answering after about
    ``peer_timeout`` seconds (``REMINDERS_PEER_TIMEOUT``), on both ends (`_peer_timeouts`),
    instead of TCP's minutes. A server that is down refuses at once; one behind a dropped
    route or a cut link would otherwise hold a worker or a request for minutes, and a
    dead worker's open transaction would hold its row locks on the server as long.
    """
    options.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **options
        )
        _serialize_sqlite_writers(engine)
        return engine
    in_url = make_url(url).query
    libpq = {k: v for k, v in libpq_timeouts(peer_timeout).items() if k not in in_url}
    options["connect_args"] = {**libpq, **options.get("connect_args", {})}
    options.setdefault("pool_pre_ping", True)
    options.setdefault("pool_size", 5)
    options.setdefault("max_overflow", 10)
    engine = create_engine(url, **options)
    _peer_timeouts_on_the_server(engine, keepalive_for(peer_timeout))
    _read_only_server_is_lost(engine)
    return engine


def libpq_timeouts(peer_timeout: int) -> dict[str, int]:
    """libpq's connection parameters that give up a silent server after ``peer_timeout`` s.

    ``connect_timeout`` bounds opening a connection; ``tcp_user_timeout`` fails one whose
    sent data the server does not acknowledge in time; keepalives probe one that waits (for
    an answer, or idle in the pool). None of them cuts a slow statement or a long
    transaction short while the server answers: its kernel acknowledges and answers probes.
    """
    keepalive = keepalive_for(peer_timeout)
    return {
        "connect_timeout": peer_timeout,
        "keepalives": 1,
        "keepalives_idle": keepalive.idle,
        "keepalives_interval": keepalive.interval,
        "keepalives_count": keepalive.count,
        "tcp_user_timeout": keepalive.user_timeout_ms,
    }


# The server's side of a connection: the same bounds, so a backend whose client went silent
# (a worker host cut off mid-transaction) ends, and its row locks go, within about as long.
_SERVER_KEEPALIVE = (
    "SELECT set_config('tcp_keepalives_idle', %(idle)s, false),"
    " set_config('tcp_keepalives_interval', %(interval)s, false),"
    " set_config('tcp_keepalives_count', %(count)s, false)"
)
_SERVER_USER_TIMEOUT = ", set_config('tcp_user_timeout', %(user_timeout)s, false)"  # 12+


def _peer_timeouts_on_the_server(engine: Engine, keepalive: Keepalive) -> None:
    values = {
        "idle": str(keepalive.idle),
        "interval": str(keepalive.interval),
        "count": str(keepalive.count),
        "user_timeout": str(keepalive.user_timeout_ms),
    }

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        statement = _SERVER_KEEPALIVE
        if dbapi_connection.info.server_version >= 120000:
            statement += _SERVER_USER_TIMEOUT
        dbapi_connection.execute(statement, values)
        dbapi_connection.commit()


def refuses_writes(error: BaseException | None) -> bool:
    """Whether ``error`` is a server refusing a write: SQLSTATE 25006, ``cannot execute …
    in a read-only transaction`` (or ``… during recovery``).

    The service never opens a read-only transaction itself, so this means its connection
    reached a server that is not the primary (any more): a standby, a primary demoted or
    fenced read-only (``default_transaction_read_only``) for a switchover. Such a connection
    counts as lost: the pool lets go of it and of its others (opened to the same server),
    and the next one goes through libpq's hosts again, to the one that takes writes
    (``target_session_attrs=read-write``).
    """
    return isinstance(error, psycopg.errors.ReadOnlySqlTransaction)


def _read_only_server_is_lost(engine: Engine) -> None:
    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        # SQLAlchemy then invalidates the connection and the pool, as for a disconnect, and
        # the error it raises says connection_invalidated.
        if refuses_writes(context.original_exception):
            context.is_disconnect = True


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


# -- hot paths: statements run on the driver connection ------------------------------------
#
# Per reminder or per request, SQLAlchemy's connection, transaction and result objects cost
# more CPU than the round trips themselves. On PostgreSQL the hot statements (module-level
# Core statements) are compiled once, prepared on the server and run on a pooled psycopg
# connection directly, with rows as the driver gives them: only for statements whose
# parameters psycopg adapts as they are (UUIDs, aware datetimes, ints) and whose rows need
# no type processing (timestamps come in the session's zone). SQLite keeps plain Core.

TUPLES_OK = ExecStatus.TUPLES_OK
Rows = Callable[[Executable, Mapping[str, Any]], Sequence[Sequence[Any]]]


@cache
def _driver_sql(statement: Executable, dialect: Dialect) -> tuple[str, dict[str, Any]]:
    assert isinstance(statement, ClauseElement)
    compiled = statement.compile(dialect=dialect)
    return compiled.string, dict(compiled.params)


_KEPT_CURSOR = "reminders.cursor"


@contextmanager
def _driver_cursor(engine: Engine) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor of a pooled psycopg connection, failing as a SQLAlchemy connection would.

    The cursor is kept with the connection (its pool record's ``info``, cleared when the
    connection is replaced) and used again by its next users: a new cursor would look up
    its parameter and row adapters again.

    A psycopg error is raised as SQLAlchemy's ``DBAPIError`` subclass. A lost connection
    (or one to a server that refuses writes, `refuses_writes`) marks every pooled connection
    as old, as SQLAlchemy does (they were all opened to the same server), so the next
    checkout opens a fresh one instead of finding the next dead one. Back in the pool, what
    was not committed is rolled back. A connection that cannot be opened (the pool does not
    wrap that error) is raised as ``DBAPIError`` too.
    """
    try:
        pooled = engine.raw_connection()
    except psycopg.Error as exc:
        raise DBAPIError.instance(None, None, exc, psycopg.Error, hide_parameters=True) from exc
    try:
        driver = pooled.driver_connection
        assert isinstance(driver, psycopg.Connection)
        try:
            cursor = pooled.info.get(_KEPT_CURSOR)
            if cursor is None or cursor.closed or cursor.connection is not driver:
                cursor = pooled.info[_KEPT_CURSOR] = driver.cursor()
            yield cursor
        except psycopg.Error as exc:
            # As SQLAlchemy's psycopg dialect tells a lost connection, and a server that
            # takes no writes as `_read_only_server_is_lost` does.
            lost = driver.closed or driver.broken or refuses_writes(exc)
            if lost:
                engine.pool._invalidate(pooled, exc)  # what a SQLAlchemy Connection calls
            raise DBAPIError.instance(
                None, None, exc, psycopg.Error, hide_parameters=True, connection_invalidated=lost
            ) from exc
    finally:
        pooled.close()


def _driver_rows(
    cursor: psycopg.Cursor[Any], dialect: Dialect, statement: Executable, params: Mapping[str, Any]
) -> list[Any]:
    sql, constants = _driver_sql(statement, dialect)
    cursor.execute(sql, {**constants, **params}, prepare=True)
    # [] without RETURNING; the result's status, not ``description``, which builds a column
    # object per returned column on each call.
    result = cursor.pgresult
    return cursor.fetchall() if result is not None and result.status == TUPLES_OK else []


@contextmanager
def hot_transaction(engine: Engine) -> Iterator[Rows]:
    """One transaction, yielding ``rows(statement, params)``, which returns the rows as tuples.

    Committed when the block ends, rolled back if it raises.
    """
    if engine.dialect.name != "postgresql":
        with engine.begin() as connection:
            yield lambda statement, params: connection.execute(statement, params).all()
        return
    with _driver_cursor(engine) as cursor:
        yield lambda statement, params: _driver_rows(cursor, engine.dialect, statement, params)
        cursor.connection.commit()


def hot_statement(
    engine: Engine, statement: Executable, params: Mapping[str, Any]
) -> Sequence[Sequence[Any]]:
    """Run one statement on its own, in autocommit mode (no ``BEGIN``/``COMMIT`` round trips)."""
    if engine.dialect.name != "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            return connection.execute(statement, params).all()
    with _driver_cursor(engine) as cursor:
        driver = cursor.connection
        driver.autocommit = True
        try:
            return _driver_rows(cursor, engine.dialect, statement, params)
        finally:
            if not (driver.closed or driver.broken):
                driver.autocommit = False  # as the pool's other users expect it


def check_takes_writes(engine: Engine) -> None:
    """One round trip that succeeds only if the database answers and would take a write.

    On PostgreSQL a server whose transactions are read-only (a standby, or a primary set
    read-only) fails it as a refused write does (`refuses_writes`): its connection and the
    pool's others are let go, so a second try opens a fresh one through libpq's hosts.

    Raises:
        DBAPIError: the database cannot be reached or takes no writes
            (`database_unreachable` is true of it).
    """
    if engine.dialect.name != "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return
    with _driver_cursor(engine) as cursor:
        cursor.execute(_READ_ONLY)
        if cursor.fetchone() == ("on",):
            raise psycopg.errors.ReadOnlySqlTransaction(
                "the server takes no writes (a standby, or set read-only)"
            )


_READ_ONLY = "SELECT pg_catalog.current_setting('transaction_read_only')"

T = TypeVar("T")


def once_more_if_connection_lost(action: Callable[[], T]) -> T:
    """Run ``action``, and once more if its pooled connection turned out to be dead.

    For reads on an engine without pre-ping: the pool has then marked that connection and
    every one as old (a SQLAlchemy connection and `_driver_cursor` both do), so the
    second try runs on a fresh one. Never for writes, whose first try may have committed.
    """
    try:
        return action()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    return action()


# SQLSTATEs of a connection that failed or that the server shut down (PostgreSQL appendix A).
_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable, not that it refused a statement.

    True for a connection that could not be opened or was lost (refused, reset, server shut
    down or restarting), or that reached a server that refuses writes (`refuses_writes`: a
    standby, after a failover); False for anything else the server answered — a deadlock, a
    constraint, bad SQL — and for SQLite, whose database is a local file.
    """
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, psycopg.InterfaceError) or refuses_writes(orig):
        return True  # "the connection is closed"; a standby's "read-only transaction"
    if isinstance(orig, psycopg.OperationalError):
        return orig.sqlstate is None or orig.sqlstate.startswith(_UNREACHABLE_SQLSTATES)
    return False


def utcnow() -> datetime:
    return datetime.now(UTC)


def database_time(connection: Connection) -> datetime:
    """The database server's time: one clock for every host, however wrong a host's own is.

    On PostgreSQL the statement's start (``statement_timestamp()``); on SQLite, a file every
    process of one host shares, that host's clock.
    """
    if connection.dialect.name != "postgresql":
        return utcnow()
    now: datetime = connection.execute(select(func.statement_timestamp())).scalar_one()
    return now.astimezone(UTC)


def database_clock(engine: Engine) -> Callable[[], datetime]:
    """A clock that reads `database_time` (one round trip on PostgreSQL)."""

    def now() -> datetime:
        if engine.dialect.name != "postgresql":
            return utcnow()
        with engine.connect() as connection:
            return database_time(connection)

    return now
