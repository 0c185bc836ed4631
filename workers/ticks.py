"""Late scheduler ticks still run, unless a later run has already covered them.

periodiq's middleware drops a periodic message older than its ``skip_delay`` (it was 30 s):
a tick whose send waited out a broker outage or a network partition arrives late and is
dropped, and the reminders it would have enqueued wait for the next tick, up to a minute
later. `LateTicks` runs a late tick all the same, and skips it only when a run of the same
actor has started since the tick was due: that run saw everything the tick would have.
So after an outage the first tick to arrive runs, and the others queued behind it (one per
minute of the outage, or the same tick sent by two schedulers) are skipped, not run again.

The latest start is one Redis key per actor (``<namespace>:periodic:<actor>``), on Redis'
clock, compared and set in one script, so two workers taking two ticks at once cannot both
skip and workers' clocks need not agree. If Redis cannot
be asked, the tick runs: every periodic job here is safe to run twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
from dramatiq.common import current_millis
from dramatiq.middleware import SkipMessage
from periodiq import PeriodiqMiddleware

from shared.logs import get_logger

log = get_logger("scheduler")

# Runs the tick (1) unless a run started after it was due (0); records this run's start on
# Redis' clock, one clock for every worker host (never before the tick's own time).
_CLAIM = """
local due = tonumber(ARGV[1])
local last = tonumber(redis.call('get', KEYS[1]) or '-1')
if due < last then
    return 0
end
local t = redis.call('time')
local now = math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), due)
redis.call('set', KEYS[1], now, 'PX', ARGV[2])
return 1
"""
KEEP_MS = 7 * 24 * 3600 * 1000  # a tick later than this after the last run runs anyway


class LateTicks(PeriodiqMiddleware):
    """periodiq's middleware, except that a late tick is skipped only when superseded."""

    def __init__(self, client: Any, namespace: str) -> None:
        super().__init__(skip_delay=None)
        self.namespace = namespace
        self._claim = client.register_script(_CLAIM)

    def before_process_message(self, broker: Any, message: Any) -> None:
        actor = broker.actors[message.actor_name]
        scheduled = message.options.get("scheduled_at")
        if "periodic" not in actor.options or scheduled is None:
            return  # not periodic, or sent by hand: runs
        due_ms = round(datetime.fromisoformat(scheduled).timestamp() * 1000)
        try:
            runs = self._claim(
                keys=[f"{self.namespace}:periodic:{message.actor_name}"], args=[due_ms, KEEP_MS]
            )
        except redis.RedisError as exc:
            log.warning("tick.unchecked", actor=message.actor_name, error_type=type(exc).__name__)
            return
        late_ms = current_millis() - due_ms
        if not runs:
            log.info("tick.superseded", actor=message.actor_name, scheduled_at=scheduled)
            raise SkipMessage()
        if late_ms > 30_000:
            log.info("tick.late", actor=message.actor_name, scheduled_at=scheduled, late_ms=late_ms)
