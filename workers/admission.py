"""The worker's side of the per-receiver limits (SPEC §4.9, `shared.broker.gate`).

Before a request to a receiver, `Admissions.request` asks the gate. Admitted, the request
goes; its end frees the slot (and wakes the next reminder waiting for it) and tells the
gate how long it took and whether the receiver asked to be left alone (``Retry-After`` on a
429 or 503). Not admitted, it raises `Deferred`: the delivery's transaction rolls back, the
actor acknowledges its message (parked in Redis, or enqueued again delayed), no attempt is
counted and the thread goes on to the next message.

**The slow lane.** A receiver whose requests take a second or more (on average, or one still
in flight) is slow. Requests to slow receivers together hold at most
``REMINDERS_SLOW_LANE_THREADS`` threads of a worker process; a reminder to a slow receiver
that finds them all busy waits in Redis for one, and the others stay free for the receivers
that answer at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from shared.broker.gate import Admission, Gate, Limits, Verdict, make_gate
from shared.config import Settings
from shared.delivery.webhooks import Answer
from shared.logs import get_logger
from workers import metrics

log = get_logger("delivery")


class Deferred(Exception):
    """Not sent now, and not an attempt: the gate parked the message or wants it delayed."""

    def __init__(self, receiver: str, admission: Admission) -> None:
        super().__init__(f"{receiver}: {admission.verdict}")
        self.receiver = receiver
        self.admission = admission


@dataclass
class Request:
    """One admitted request; the caller sets what the receiver answered."""

    answer: Answer | None = None


class Admissions:
    """Admission of reminders to receivers, and this process's slow lane."""

    def __init__(self, gate: Gate, slow_lane_threads: int) -> None:
        self.gate = gate
        self.slow_lane_threads = slow_lane_threads
        self._slow_lane = threading.BoundedSemaphore(slow_lane_threads)

    @contextmanager
    def request(self, receiver: str, limits: Limits, message: Message[Any]) -> Iterator[Request]:
        """Admit ``message``'s request to ``receiver`` for the ``with`` block, or raise
        `Deferred`. The block sets the `Request`'s answer; the slot is freed when it ends."""
        admission = self.gate.admit(receiver, limits, message)
        if admission.verdict is not Verdict.ADMITTED:
            metrics.DEFERRED.labels(admission.verdict.value).inc()
            raise Deferred(receiver, admission)
        slow_lane = False
        if admission.slow:
            if not self._slow_lane.acquire(blocking=False):
                self.gate.park_slow(receiver, message)
                metrics.DEFERRED.labels("slow_lane").inc()
                raise Deferred(receiver, Admission(Verdict.PARKED, slow=True))
            slow_lane = True
        request = Request()
        started = time.monotonic()
        try:
            yield request
        finally:
            if slow_lane:
                self._slow_lane.release()
            self._release(receiver, message, request, started, slow_lane)

    def _release(
        self, receiver: str, message: Message[Any], request: Request, started: float, slow: bool
    ) -> None:
        answer = request.answer
        throttled = answer is not None and answer.status_code in (429, 503)
        back_off_ms = 0
        if answer is not None and answer.retry_after_seconds:
            back_off_ms = math.ceil(answer.retry_after_seconds * 1000)
        if throttled:
            metrics.THROTTLED.inc()
        try:
            self.gate.release(
                receiver,
                message.message_id,
                duration_ms=round((time.monotonic() - started) * 1000),
                back_off_ms=back_off_ms,
                throttled=throttled,
                slow_lane=slow,
            )
        except redis.RedisError as exc:
            # The request's outcome stands; the slot comes free when its lease expires.
            log.warning(
                "gate.release_failed",
                receiver=receiver,
                message_id=message.message_id,
                error_type=type(exc).__name__,
            )


def make_admissions(settings: Settings, broker: RedisBroker) -> Admissions:
    """Admissions through the gate on the broker's Redis (`shared.broker.gate.make_gate`)."""
    return Admissions(make_gate(settings, broker), settings.slow_lane_threads)
