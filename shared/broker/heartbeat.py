"""A worker process's heartbeat and the recovery of silent ones, each second, from a thread.

Dramatiq's Redis broker keeps each broker instance's last call to Redis in
``ns:__heartbeats__``; maintenance gives the messages an instance fetched and did not
acknowledge back to their queue once its stamp is ``REMINDERS_HEARTBEAT_TIMEOUT_MS`` old.
Dramatiq stamps only as a side effect of its consumers' calls, and runs maintenance on a
random 0.1% of them: a dead instance's messages wait for the timeout, then for chance (or,
here, for the producer's next scan, up to a minute later).

`Heartbeat` makes both a matter of time. In every worker process a thread of its own runs
maintenance (`shared.broker.redis_broker.run_maintenance`) on each queue the process
consumes and its delay queue, every `beat_interval` (a tenth of the timeout, at most a
second), in one round trip: the call stamps this instance, as every Dramatiq call does, and
gives back the messages of every instance silent for the timeout. So the messages of a
process that is killed or cut off are back on the queue within the timeout plus one
interval, taken by whichever live process beats first; and a process that reaches Redis
beats at least that often whatever its consumers do. (They stamp too: a consumer with room
in its window polls Redis every 200 ms or less, and the scan queue's nearly always has.)

The stamps are each host's own clock (as Dramatiq's): hosts whose clocks disagree by a
good part of the timeout see each other die early or late, so keep them synchronised.
"""

from __future__ import annotations

import threading
from typing import Any

from dramatiq import Middleware
from dramatiq.brokers.redis import RedisBroker

from shared.broker.reachability import LOST_CONNECTION
from shared.broker.redis_broker import run_maintenance
from shared.logs import get_logger

log = get_logger("broker")

# The longest wait between two beats of a worker process.
MAX_BEAT_SECONDS = 1.0


def beat_interval(heartbeat_timeout_ms: int) -> float:
    """Seconds between two beats: a tenth of the timeout, at most `MAX_BEAT_SECONDS`."""
    return min(MAX_BEAT_SECONDS, heartbeat_timeout_ms / 10_000)


class Heartbeat(Middleware):
    """Beats the worker process's heartbeat from a thread of its own (see the module).

    Started when the worker boots, stopped once it has shut down (deliveries finishing during
    a graceful stop keep their messages): processes that only send (the API, the scheduler)
    never beat. A beat that fails is tried again at the next
    interval; a lost Redis is the consumers' to report (``broker.unavailable``).
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(broker,), name="heartbeat", daemon=True
        )
        self._thread.start()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self, broker: RedisBroker) -> None:
        interval = beat_interval(broker.heartbeat_timeout)
        while True:
            try:
                run_maintenance(broker, *sorted(broker.get_declared_queues()))
            except LOST_CONNECTION:
                pass
            except Exception as error:  # never end the thread: a silent process loses its work
                log.warning("broker.heartbeat_failed", error_type=type(error).__name__)
            if self._stop.wait(interval):
                return
