"""Riding out a database outage: stop taking messages, probe, resume.

An outage of the database is not a property of a reminder, so it must not use up the
reminder's retries or end it in the dead-letter queue. When an attempt fails because the
database is unreachable (`shared.store.db.database_unreachable`, which includes a server that
refuses writes: a standby, after a failover), the `DatabaseGate` closes: the worker's threads
stop taking messages, one of them probes the database with backoff, and the gate opens again
when the database answers and takes writes. The attempt that met the outage is put
back on the queue without counting against ``REMINDERS_MAX_RETRIES``
(``shared.broker.queue.OutageAwareRetries``). Messages wait in Redis meanwhile, costing nothing;
when the database returns each is delivered once, as after any downtime.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dramatiq import Middleware
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from shared.logs import get_logger
from shared.planning.rules import describe_error
from shared.store.db import check_takes_writes, database_unreachable, once_more_if_connection_lost

log = get_logger("worker")

FIRST_PROBE_SECONDS = 0.5
# The longest wait between probes, so delivery resumes within this long of the database
# answering again; a probe costs one connection attempt, bounded by REMINDERS_PEER_TIMEOUT.
MAX_PROBE_SECONDS = 5.0


class DatabaseGate(Middleware):
    """Holds every message of this worker process while its database is unreachable.

    Added before Dramatiq's TimeLimit, so the time a message waits at the gate does not
    count against its time limit.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._prober: int | None = None  # the thread that probes while the gate is closed
        self._closed_at = 0.0
        self._opened_at = 0.0  # when the gate last opened again after an outage
        self._attempt_began = threading.local()  # when this thread's attempt passed the gate
        self._stopping = False

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def after_process_message(
        self,
        broker: Any,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not database_unreachable(exception):
            return
        # An attempt that passed the gate before it last opened met the outage the probe has
        # already seen the end of (a delivery in flight at a failover, whose receiver answered
        # after that, fails its commit on a connection to the old server): nothing new to hold
        # the process for. Only an attempt begun since can tell of a new outage.
        if getattr(self._attempt_began, "value", 0.0) < self._opened_at:
            return
        self.close(exception)

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.wait_until_open()
        self._attempt_began.value = time.monotonic()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        # Let waiting threads go: their attempts fail on the outage and are put back, so the
        # worker stops promptly and loses nothing.
        self._stopping = True
        self._open.set()

    def close(self, cause: BaseException) -> None:
        with self._lock:
            if not self._open.is_set():
                return
            self._open.clear()
            self._closed_at = time.monotonic()
        log.warning(
            "database.unavailable", error_type=type(cause).__name__, error=describe_error(cause)
        )

    def wait_until_open(self) -> None:
        """Return at once if the gate is open; else wait, one thread probing, until it opens."""
        if self._open.is_set():
            return
        with self._lock:
            probing = self._prober is None
            if probing:
                self._prober = threading.get_ident()
        if not probing:
            self._open.wait()
            return
        try:
            self._probe_until_reachable()
        finally:
            with self._lock:
                self._prober = None

    def _probe_until_reachable(self) -> None:
        delay = FIRST_PROBE_SECONDS
        while not self._open.is_set():
            time.sleep(delay)
            if self._stopping:
                return
            try:
                # A pooled connection that died in the outage (or that reached a server
                # since demoted to a standby) fails once and takes the pool's other old ones
                # with it; the second try opens a fresh one, through libpq's hosts.
                once_more_if_connection_lost(lambda: check_takes_writes(self.engine))
            except SQLAlchemyError:
                delay = min(delay * 2, MAX_PROBE_SECONDS)
                continue
            self._opened_at = time.monotonic()
            outage = self._opened_at - self._closed_at
            log.info("database.available", outage_ms=round(outage * 1000))
            self._open.set()
