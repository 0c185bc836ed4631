"""Whether a process's broker answers: one line when Redis is lost, one when it is back.

Every consumer thread of a worker process (one per queue and delay queue) notices a lost
Redis on its own, and Dramatiq logs each of them and each of their restarts every few
seconds for as long as the outage lasts. `BrokerReachability` turns that into the two
events an operator reads: ``broker.unavailable`` once, when the first connection is lost,
and ``broker.available`` with the outage's length once a consumer gets an answer again.

A lost connection is one refused or reset, or one whose server left a command unanswered
for ``REMINDERS_PEER_TIMEOUT`` (`shared.broker.connection.redis_options`): redis-py raises
``TimeoutError`` for that, which is no ``ConnectionError``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from dramatiq import Middleware

from shared.logs import get_logger

log = get_logger("broker")

LOST_CONNECTION: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


class BrokerReachability:
    """The state of one process's connection to Redis, as its consumers find it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._answered_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def lost(self, error: BaseException, sent_at: float) -> None:
        """A command sent at ``sent_at`` (``time.monotonic()``) failed on a lost connection:
        ``broker.unavailable``, unless it is said already, or Redis has answered another
        command since this one was sent (an attempt that met the end of an outage)."""
        with self._lock:
            if self._down_since is not None or sent_at < self._answered_at:
                return
            self._down_since = time.monotonic()
        log.warning("broker.unavailable", error_type=type(error).__name__, error=str(error))

    def answered(self) -> None:
        """A command succeeded: ``broker.available`` if Redis was lost until now."""
        self._answered_at = time.monotonic()
        if self._down_since is None:  # the usual case, without taking the lock
            return
        with self._lock:
            down_since, self._down_since = self._down_since, None
        if down_since is not None:
            outage_ms = round((self._answered_at - down_since) * 1000)
            log.info("broker.available", outage_ms=outage_ms)


class ConsumerOutageLines(Middleware):
    """Drops Dramatiq's lines about a consumer that lost its connection and restarts: each
    consumer thread would log them every second of an outage, which ``broker.unavailable``
    and ``broker.available`` say once. (An unexpected error keeps Dramatiq's line, with
    its traceback.) Each consumer thread has a logger of its own, named after its queue,
    which gets the filter as the thread starts."""

    def after_consumer_thread_boot(self, broker: Any, thread: Any) -> None:
        thread.logger.addFilter(_LOST_CONNECTION_LINES)


class _LostConnectionLines(logging.Filter):
    TEMPLATES = frozenset(
        {
            "Consumer encountered a connection error: %s",
            "Restarting consumer in %0.2f seconds.",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.TEMPLATES


_LOST_CONNECTION_LINES = _LostConnectionLines()
