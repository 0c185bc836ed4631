"""Bounds on endpoint test pings, which wait for the user's own receiver on a request thread.

A ping answers with its attempt (SPEC §6), so the request waits for the receiver; a slow
receiver would hold one of the API's few threads for as long, and a user sending many
pings at once could hold them all and stall every other user. So a ping waits at most
`PING_TIMEOUT_SECONDS` (or the delivery timeout, when shorter), each user has at most one
ping in flight across every API process (a Redis lock that expires on its own, should
a process die holding it), and each process at most `PINGS_PER_PROCESS` at once. Past
either bound the answer is 429 with ``Retry-After``, at once.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import cast

import redis
from redis.exceptions import LockError

# What a receiver is given to answer a ping: a healthy one answers well within it.
PING_TIMEOUT_SECONDS = 5.0
# Pings one API process makes at once; the Procfile gives a process 4 request threads.
PINGS_PER_PROCESS = 2
# A user's lock outlives their ping by this much, in case a request overruns its timeout.
LOCK_MARGIN_SECONDS = 5.0


class PingBusy(Exception):
    """No ping now; ``retry_after`` seconds from now there may be room."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PingGate:
    """Lets one ping through per user (every process) and a few per process."""

    def __init__(self, client: redis.Redis, namespace: str, timeout_seconds: float) -> None:
        self._client = client
        self._namespace = namespace
        self._timeout = timeout_seconds
        self._slots = threading.BoundedSemaphore(PINGS_PER_PROCESS)

    @contextmanager
    def one_ping(self, owner_id: uuid.UUID) -> Iterator[None]:
        """Hold the owner's ping lock and a slot of this process while the block runs.

        Raises:
            PingBusy: the owner has a ping in flight, or this process has no slot free.
        """
        name = f"{self._namespace}:endpoint-ping:{owner_id}"
        lock = self._client.lock(name, timeout=self._timeout + LOCK_MARGIN_SECONDS)
        if not lock.acquire(blocking=False):
            left_ms = cast(int, self._client.pttl(name))  # negative: no expiry, or gone
            # The ping ends by its timeout, before the lock's margin runs out.
            left = left_ms / 1000 - LOCK_MARGIN_SECONDS
            raise PingBusy(
                "a test ping of yours is still waiting for its answer; send the next when it "
                "is done (one at a time)",
                max(1, math.ceil(left)),
            )
        try:
            if not self._slots.acquire(blocking=False):
                raise PingBusy(
                    "too many test pings are waiting for their answers right now; try again",
                    max(1, math.ceil(self._timeout)),
                )
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with suppress(LockError):  # expired meanwhile: someone else's now, or no one's
                lock.release()
