"""What the pipeline did in the last hour, minute by minute: the numbers behind the ops
page's charts.

Where a reminder row records the event for good, the row is the source: sent (and
lateness) by ``sent_at``, missed by ``updated_at`` of ``missed`` rows. What no row records
is kept in Redis by the workers, one key per minute under the deployment's namespace,
expiring after `ACTIVITY_TTL_SECONDS`::

    <namespace>:activity:retried:<minute>        counter: failed attempts put back for a retry
    <namespace>:activity:dead_lettered:<minute>  counter: messages dead-lettered
    <namespace>:activity:queue_depth:<minute>    the reminders queue's ready messages, as the
                                                 minute's last producer scan saw them

A dead letter is counted when it happens: its row's ``failed_at`` is cleared by an
operator's retry and moved by a later failure, so the rows alone would rewrite the past.
The rows still count as a floor (``failed`` rows by ``failed_at``), so a minute whose
counter was lost to a Redis error shows at least the dead letters still standing.

``<minute>`` is the minute's start in Unix seconds (a multiple of 60). Writing them is
best effort: a Redis error is logged once (until a write succeeds again) and never fails
the delivery or the scan that wanted to record it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import (
    Connection,
    Engine,
    Float,
    Integer,
    cast,
    extract,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import queue_depth
from shared.logs import get_logger
from shared.store.models import Reminder

log = get_logger("activity")

MINUTES = 60  # the charts' span: the current minute and the 59 before it
# Twice the span: a chart drawn late in a minute still finds the hour's first keys.
ACTIVITY_TTL_SECONDS = 2 * 3600


@dataclass(frozen=True)
class Minute:
    """One minute of activity; ``start`` is the minute's first instant, in UTC.

    Lateness is ``sent_at - remind_at`` in seconds over the reminders sent in the minute,
    None when none was; ``queue_depth`` is None when no scan sampled it in the minute.
    """

    start: datetime
    sent: int
    retried: int
    dead_lettered: int
    missed: int
    lateness_p50: float | None
    lateness_p99: float | None
    queue_depth: int | None


def minute_start(moment: datetime) -> datetime:
    """The UTC minute ``moment`` falls in."""
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def retried_key(namespace: str, moment: datetime) -> str:
    return f"{namespace}:activity:retried:{_epoch(moment)}"


def dead_lettered_key(namespace: str, moment: datetime) -> str:
    return f"{namespace}:activity:dead_lettered:{_epoch(moment)}"


def queue_depth_key(namespace: str, moment: datetime) -> str:
    return f"{namespace}:activity:queue_depth:{_epoch(moment)}"


def _epoch(moment: datetime) -> int:
    return int(minute_start(moment).timestamp())


# -- writing (the workers) --------------------------------------------------------------

_failing: set[str] = set()  # the kinds of write whose last attempt failed (logged once)


@contextmanager
def _best_effort(kind: str) -> Iterator[None]:
    """Swallow a Redis error, logging ``activity.not_recorded`` once until ``kind`` works."""
    try:
        yield
    except redis.RedisError as exc:
        if kind not in _failing:
            _failing.add(kind)
            log.warning("activity.not_recorded", kind=kind, error_type=type(exc).__name__)
        return
    _failing.discard(kind)


def record_retry(client: Any, namespace: str, now: datetime) -> None:
    """Count one failed attempt that will be retried, in ``now``'s minute. Never raises a
    Redis error (see the module docstring).

    ``client`` is a synchronous redis-py client (the broker's ``client``).
    """
    _count(client, "retried", retried_key(namespace, now), 1)


def record_dead_letters(client: Any, namespace: str, now: datetime, count: int = 1) -> None:
    """Count ``count`` messages dead-lettered in ``now``'s minute (a final failed attempt,
    or rows the producer found dead-lettered without their failure recorded). Never raises
    a Redis error."""
    if count > 0:
        _count(client, "dead_lettered", dead_lettered_key(namespace, now), count)


def _count(client: Any, kind: str, key: str, count: int) -> None:
    with _best_effort(kind), client.pipeline(transaction=True) as pipe:
        # In one transaction, so the counter never lives on without its expiry.
        pipe.incrby(key, count)
        pipe.expire(key, ACTIVITY_TTL_SECONDS)
        pipe.execute()


def record_queue_depth(client: Any, namespace: str, now: datetime, depth: int) -> None:
    """Keep ``depth`` as ``now``'s minute's queue depth (a later sample in the same minute
    replaces it). Never raises a Redis error."""
    with _best_effort("queue_depth"):
        client.set(queue_depth_key(namespace, now), depth, ex=ACTIVITY_TTL_SECONDS)


def sample_queue_depth(broker: RedisBroker, namespace: str, now: datetime) -> None:
    """Record how many reminder messages are ready on the broker now; the producer's scan
    calls it, once a scan. Never raises a Redis error."""
    with _best_effort("queue_depth"):
        depth = queue_depth(broker, QUEUE_NAME).ready
        record_queue_depth(broker.client, namespace, now, depth)


# -- reading (the ops page) -------------------------------------------------------------

# The states as SQL literals, not parameters: a prepared statement's generic plan (and
# SQLite's planner) can then prove the partial indexes' conditions and use them. The list
# is the one in ``ix_reminders_final_updated_at``, in its order, which SQLite requires.
_FINAL_STATES = Reminder.state.in_(
    [literal_column("'sent'"), literal_column("'cancelled'"), literal_column("'missed'")]
)
_SENT = Reminder.state == literal_column("'sent'")
_FAILED = Reminder.state == literal_column("'failed'")
_MISSED = Reminder.state == literal_column("'missed'")


def last_hour(
    source: Engine | Connection | Session, client: Any, namespace: str, now: datetime
) -> list[Minute]:
    """The 60 minutes up to and including ``now``'s (still running) minute, oldest first.

    ``source`` is where the reminder rows are read (an engine is connected to and released
    here); ``client`` the Redis client of the broker, ``namespace`` the deployment's key
    prefix. Minutes with nothing counted hold zeros, and None for lateness and depth.

    Dead-lettered is the workers' count of the minute (what was dead-lettered then, whatever
    became of it since), or the ``failed`` rows whose ``failed_at`` falls in the minute if
    they are more (the count was lost). Missed counts ``missed`` rows by ``updated_at``,
    which is when the producer marked them (the state is final).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed.
        redis.RedisError: Redis failed.
    """
    first = minute_start(now) - timedelta(minutes=MINUTES - 1)
    end = minute_start(now) + timedelta(minutes=1)
    if isinstance(source, Engine):
        with source.connect() as connection:
            counted = _counted(connection, first, end)
    else:
        counted = _counted(source, first, end)
    starts = [first + timedelta(minutes=index) for index in range(MINUTES)]
    stored = client.mget(
        [retried_key(namespace, start) for start in starts]
        + [dead_lettered_key(namespace, start) for start in starts]
        + [queue_depth_key(namespace, start) for start in starts]
    )
    retried, dead_lettered = stored[:MINUTES], stored[MINUTES : 2 * MINUTES]
    depths = stored[2 * MINUTES :]
    minutes = []
    for index, start in enumerate(starts):
        epoch = int(start.timestamp())
        p50, p99 = counted.lateness.get(epoch, (None, None))
        minutes.append(
            Minute(
                start=start,
                sent=counted.sent.get(epoch, 0),
                retried=int(retried[index] or 0),
                dead_lettered=max(
                    int(dead_lettered[index] or 0), counted.dead_lettered.get(epoch, 0)
                ),
                missed=counted.missed.get(epoch, 0),
                lateness_p50=p50,
                lateness_p99=p99,
                queue_depth=None if depths[index] is None else int(depths[index]),
            )
        )
    return minutes


@dataclass
class _Counted:
    """Per minute (its start in Unix seconds): what the reminder rows say."""

    sent: dict[int, int]
    lateness: dict[int, tuple[float, float]]  # p50, p99
    dead_lettered: dict[int, int]
    missed: dict[int, int]


def _counted(db: Connection | Session, first: datetime, end: datetime) -> _Counted:
    """Read the rows' events from ``first`` up to ``end``, each query an index range.

    Sent rows are found through ``ix_reminders_final_updated_at``: ``sent`` is final and
    its ``updated_at`` is set with ``sent_at`` and never changed after, so a row sent since
    ``first`` was updated since ``first``. Dead letters are a range of
    ``ix_reminders_failed_at`` (``failed_at`` is set exactly while the state is ``failed``).
    """
    postgres = _dialect(db) == "postgresql"
    sent_since = (
        _FINAL_STATES,
        _SENT,
        Reminder.updated_at >= first,
        Reminder.sent_at >= first,
        Reminder.sent_at < end,
    )
    counted = _Counted(sent={}, lateness={}, dead_lettered={}, missed={})
    if postgres:
        minute = _minute_of(Reminder.sent_at, postgres)
        lateness = cast(extract("epoch", Reminder.sent_at - Reminder.remind_at), Float)
        for epoch, sent, p50, p99 in db.execute(
            select(
                minute,
                func.count(),
                func.percentile_cont(0.5).within_group(lateness),
                func.percentile_cont(0.99).within_group(lateness),
            )
            .where(*sent_since)
            .group_by(minute)
        ):
            counted.sent[epoch] = sent
            counted.lateness[epoch] = (float(p50), float(p99))
    else:
        by_minute: dict[int, list[float]] = {}
        for sent_at, remind_at in db.execute(
            select(Reminder.sent_at, Reminder.remind_at).where(*sent_since)
        ):
            assert sent_at is not None  # the WHERE clause
            by_minute.setdefault(_epoch(sent_at), []).append((sent_at - remind_at).total_seconds())
        for epoch, values in by_minute.items():
            values.sort()
            counted.sent[epoch] = len(values)
            counted.lateness[epoch] = (percentile_cont(values, 0.5), percentile_cont(values, 0.99))
    failed_minute = _minute_of(Reminder.failed_at, postgres)
    counted.dead_lettered = dict(
        db.execute(
            select(failed_minute, func.count())
            .where(_FAILED, Reminder.failed_at >= first, Reminder.failed_at < end)
            .group_by(failed_minute)
        ).all()
    )
    missed_minute = _minute_of(Reminder.updated_at, postgres)
    counted.missed = dict(
        db.execute(
            select(missed_minute, func.count())
            .where(_FINAL_STATES, _MISSED, Reminder.updated_at >= first, Reminder.updated_at < end)
            .group_by(missed_minute)
        ).all()
    )
    return counted


def _dialect(db: Connection | Session) -> str:
    return db.dialect.name if isinstance(db, Connection) else db.get_bind().dialect.name


def _minute_of(column: Any, postgres: bool) -> ColumnElement[int]:
    """The start, in Unix seconds, of the minute a timestamp column's value falls in.

    The constants are SQL literals: as parameters, the grouped expression and the selected
    one would differ on PostgreSQL (``$1`` and ``$2``).
    """
    sixty: ColumnElement[int] = literal_column("60", Integer)
    if postgres:
        return cast(func.floor(extract("epoch", column) / sixty) * sixty, Integer)
    # SQLite keeps naive UTC text; strftime('%s') reads it as UTC and drops the fraction.
    seconds = cast(func.strftime(literal_column("'%s'"), column), Integer)
    return cast(seconds - seconds % sixty, Integer)


def percentile_cont(ordered: Sequence[float], fraction: float) -> float:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the two values either
    side of position ``fraction * (n - 1)`` of ``ordered`` (sorted, not empty)."""
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)
