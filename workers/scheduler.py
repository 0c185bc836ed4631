"""The scheduler's tick, made to ride out a broker outage.

periodiq sends each periodic actor's message at its cron tick; if Redis cannot be reached
then, the error leaves periodiq's loop and the process exits with status 1, so nothing
triggers the producer until something restarts it. `BrokerTolerantScheduler` retries the
tick's sends with backoff until the broker answers, then periodiq goes on as usual
(a tick that came due meanwhile runs at once). Sending a tick's message twice is harmless:
the producer does the same work whichever tick fired it.
"""

from __future__ import annotations

import time
from typing import Any

import periodiq
import redis

from shared.logs import get_logger

log = get_logger("scheduler")

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 10.0


class BrokerTolerantScheduler(periodiq.Scheduler):
    """periodiq's Scheduler, except that a tick waits out a broker outage."""

    def send_actors(self, actors: list[Any], now: Any) -> None:
        delay = FIRST_RETRY_SECONDS
        down_since: float | None = None
        while True:
            try:
                super().send_actors(actors, now)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning(
                        "scheduler.broker_unavailable", tick=str(now), error_type=type(exc).__name__
                    )
                time.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            if down_since is not None:
                outage_ms = round((time.monotonic() - down_since) * 1000)
                log.info("scheduler.broker_available", tick=str(now), outage_ms=outage_ms)
            return


def install() -> None:
    """Make periodiq's command line use `BrokerTolerantScheduler` (it looks the name up)."""
    periodiq.Scheduler = BrokerTolerantScheduler
