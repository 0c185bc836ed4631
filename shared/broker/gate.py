"""Per-endpoint admission: how many requests are in flight at a receiver, how fast they go,
and the reminders waiting their turn (SPEC §4.9).

Every worker process on every host asks the same Redis, in one script call, before it sends
a reminder to a receiver (a user's endpoint, or the deployment's webhook when it has
limits), and tells it when the request ended. Per receiver ``e`` (namespace ``ns``)::

    ns:gate:<e>:leases    sorted set: token (the reminder's message ID) -> lease expiry (ms)
    ns:gate:<e>:started   sorted set: token -> when its request was admitted (ms)
    ns:gate:<e>:parked    list of tokens waiting for a slot, oldest first
    ns:gate:<e>:sent      sorted set: the requests of the last rate window, by time (ms)
    ns:gate:<e>:state     hash: max (its concurrency), tat (next free rate slot, ms),
                          until (Retry-After back-off, ms), ewma (request time, ms),
                          deferred, throttled (counts for operators)
    ns:gate:parked.msgs   hash token -> broker id (32 hex) + the encoded message to wake
    ns:gate:slow          list of <receiver>|<token> waiting for a thread of the slow lane
    ns:gate:receivers     set of receivers that have parked reminders or leases

``admit`` answers one of:

- **admitted**: a lease (expiring after ``lease_ms``, so a SIGKILLed worker never blocks a
  receiver for good) is taken; the caller sends, then calls ``release``.
- **parked**: the receiver has ``max`` requests in flight. The message is stored in Redis
  and the worker thread goes on; the caller acknowledges its message. When a request to the
  receiver ends, ``release`` moves the oldest parked message back onto the queue, with the
  freed slot reserved for it: one list push to wait, one pop to wake — no polling.
- **delayed** until a time: the receiver's rate (``max_per_second``) has no slot before
  then (the slot is reserved for this message, which comes back delayed to it and carries
  the reservation), or the receiver asked to be left alone (``Retry-After``). The caller
  enqueues the message again, delayed; this is no attempt.

Waking moves a message from the parked hash onto the queue in the same script, under a
broker id chosen when it was parked, so no crash between the two loses it; a parked message
counts as held by the broker (`parked_message_ids`), and the producer does not enqueue it
again. Redis losing the gate's keys loses no reminder either: the rows stay ``queued`` and
the producer enqueues them again after ``REMINDERS_REQUEUE_AFTER``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dramatiq import Message, get_encoder
from dramatiq.brokers.redis import RedisBroker

from shared.broker.queue import QUEUE_NAME
from shared.config import Settings

# A rate reservation is honoured if its message comes back this long after its slot at most
# (a backlog in the queue); later, it takes a new slot.
RESERVATION_GRACE_MS = 2_000
# How long a slot freed for a woken message stays reserved for it while it travels the queue
# (at least: `make_gate` keeps it longer than the heartbeat bound, so a woken message whose
# worker dies before it sends still finds its slot when it comes back).
WAKE_LEASE_MS = 60_000
# A receiver is slow while its requests take this long (their running average, or one still
# in flight for longer).
SLOW_MS = 1_000

_LUA_COMMON = """
local ns, e = ARGV[1], ARGV[2]
-- The time given (a test's clock), or Redis' own: one clock for every worker host.
local now = tonumber(ARGV[3])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local base = ns .. ':gate:' .. e
local leases, started = base .. ':leases', base .. ':started'
local parked, state = base .. ':parked', base .. ':state'
local parked_msgs = ns .. ':gate:parked.msgs'
local slow_list = ns .. ':gate:slow'
local receivers = ns .. ':gate:receivers'
-- A receiver's state (limits seen, back-off, rate schedule, average, counts) is forgotten a
-- day after its last request: deleted and idle endpoints do not stay in Redis for good.
local STATE_TTL_MS = 86400000

-- Put a woken message at the head of the queue, the next one taken: it has waited its turn
-- already, and it holds a slot reserved for it (so no more than the receivers' limits ever
-- go ahead of newcomers this way).
local function push(queue, value)
  local bid = string.sub(value, 1, 32)
  redis.call('HSET', queue .. '.msgs', bid, string.sub(value, 33))
  redis.call('LPUSH', queue, bid)
end

-- Wake the oldest message waiting for a thread of the slow lane, with a slot of its receiver
-- reserved for it (or it would wait behind that receiver's parked ones, and the thread go
-- unused). Returns 1 if one was woken.
local function wake_slow(queue, wake_lease)
  while true do
    local entry = redis.call('LPOP', slow_list)
    if not entry then return 0 end
    local bar = string.find(entry, '|', 1, true)
    local token = bar and string.sub(entry, bar + 1) or entry
    local value = redis.call('HGET', parked_msgs, token)
    if value then
      redis.call('HDEL', parked_msgs, token)
      push(queue, value)
      if bar then
        local owner_leases = ns .. ':gate:' .. string.sub(entry, 1, bar - 1) .. ':leases'
        redis.call('ZADD', owner_leases, now + wake_lease, token)
      end
      return 1
    end
  end
end

-- Wake up to n messages parked on the list parked_key, each with a slot reserved for it
-- in leases_key.
local function wake_from(parked_key, leases_key, n, queue, wake_lease)
  local values = {}
  while #values < n do
    local token = redis.call('LPOP', parked_key)
    if not token then break end
    local value = redis.call('HGET', parked_msgs, token)
    if value then
      redis.call('HDEL', parked_msgs, token)
      redis.call('ZADD', leases_key, now + wake_lease, token)
      values[#values + 1] = value
    end
  end
  for i = #values, 1, -1 do push(queue, values[i]) end  -- the oldest at the very head
  return #values
end

-- Wake up to n parked messages of this receiver.
local function wake(n, queue, wake_lease)
  return wake_from(parked, leases, n, queue, wake_lease)
end

-- A receiver none of whose requests has ended yet (new, or idle for a day) is unproven: one
-- request at a time until the first answers. A slow receiver met for the first time then
-- holds one ordinary thread, not max of them, before it is known to be slow.
local function cap(max)
  if max > 1 and redis.call('HEXISTS', state, 'ewma') == 0 then return 1 end
  return max
end

-- Park the message token (stored as value) behind the receiver's others if it has no room
-- for it, or others already wait (first come, first served; a free slot wakes them first).
-- Returns true if parked.
local function park_if_full(token, value, max, queue, wake_lease)
  local busy = redis.call('ZCARD', leases)
  local waiting = redis.call('LLEN', parked)
  local limit = cap(max)
  if busy < limit and waiting == 0 then return false end
  if waiting > 0 and busy < limit then wake(limit - busy, queue, wake_lease) end
  redis.call('RPUSH', parked, token)
  redis.call('HSET', parked_msgs, token, value)
  redis.call('SADD', receivers, e)
  redis.call('HINCRBY', state, 'deferred', 1)
  return true
end

local function room()
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  local max = cap(tonumber(redis.call('HGET', state, 'max') or 0))
  if max <= 0 then return 0 end
  return max - redis.call('ZCARD', leases)
end
"""

# ARGV: ns, receiver, now, token, lease_ms, max, interval_ms, reserved_ms, grace_ms, slow_ms,
#       parked value, queue key, wake lease ms, sends per window (of interval_ms each)
_ADMIT = (
    _LUA_COMMON
    + """
local token, lease, max = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local interval, reserved, grace = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local slow_ms, value, queue, wake_lease = tonumber(ARGV[10]), ARGV[11], ARGV[12], tonumber(ARGV[13])
local per_window = tonumber(ARGV[14])
local window = interval * per_window
local sent = base .. ':sent'

redis.call('HSET', state, 'max', max)
redis.call('PEXPIRE', state, STATE_TTL_MS)
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
redis.call('ZREMRANGEBYSCORE', started, '-inf', now - lease)
local mine = redis.call('ZSCORE', leases, token)

local function give_back()
  -- A slot reserved for this message that it will not use now: to the next one waiting.
  if mine then
    redis.call('ZREM', leases, token)
    wake(1, queue, wake_lease)
  end
end

local until_ms = tonumber(redis.call('HGET', state, 'until') or 0)
if until_ms > now then
  give_back()
  redis.call('HINCRBY', state, 'deferred', 1)
  return {3, until_ms, now}
end

local next_tat = nil
if interval > 0 then
  local held = reserved > 0 and now <= reserved + grace
  if not held then
    local tat = math.max(tonumber(redis.call('HGET', state, 'tat') or 0), now)
    if tat > now then
      redis.call('HSET', state, 'tat', tat + interval)
      give_back()
      redis.call('HINCRBY', state, 'deferred', 1)
      return {2, tat, now}
    end
    next_tat = now + interval
  end
  -- The slots are spaced, but a delayed message may come back late and the next on time:
  -- never more than per_window sends in any window (what the receiver counts).
  redis.call('ZREMRANGEBYSCORE', sent, '-inf', now - window)
  if redis.call('ZCARD', sent) >= per_window then
    local oldest = redis.call('ZRANGE', sent, 0, 0, 'WITHSCORES')
    give_back()
    redis.call('HINCRBY', state, 'deferred', 1)
    return {2, tonumber(oldest[2]) + window, now}
  end
end

if max > 0 and not mine and park_if_full(token, value, max, queue, wake_lease) then
  return {1, 0}
end

if next_tat then redis.call('HSET', state, 'tat', next_tat) end
if interval > 0 then
  redis.call('ZADD', sent, now, token .. ':' .. now)
  redis.call('PEXPIRE', sent, window * 2)
end
if max > 0 then
  redis.call('ZADD', leases, now + lease, token)
  redis.call('SADD', receivers, e)
end
redis.call('ZADD', started, now, token)
local slow = 0
local ewma = tonumber(redis.call('HGET', state, 'ewma') or 0)
local oldest = redis.call('ZRANGE', started, 0, 0, 'WITHSCORES')
if ewma >= slow_ms or (oldest[2] and now - tonumber(oldest[2]) >= slow_ms) then slow = 1 end
return {0, slow}
"""
)

# ARGV: ns, receiver, now, token, duration_ms, back-off ms (Retry-After), queue key, wake lease
#       ms, slow lane (1: the request held a thread of the slow lane), throttled (1: a 429/503)
_RELEASE = (
    _LUA_COMMON
    + """
local token, duration, back_off = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local queue, wake_lease, slow_lane, throttled = ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10]
redis.call('ZREM', leases, token)
redis.call('ZREM', started, token)
if back_off > 0 then
  local until_ms = now + back_off
  local current = tonumber(redis.call('HGET', state, 'until') or 0)
  if until_ms > current then redis.call('HSET', state, 'until', until_ms) end
end
if throttled == '1' then redis.call('HINCRBY', state, 'throttled', 1) end
if duration >= 0 then
  local ewma = tonumber(redis.call('HGET', state, 'ewma') or duration)
  redis.call('HSET', state, 'ewma', math.floor((ewma + duration) / 2))
end
if redis.call('EXISTS', state) == 1 then redis.call('PEXPIRE', state, STATE_TTL_MS) end
if slow_lane == '1' then wake_slow(queue, wake_lease) end
local free = room()
if free > 0 then wake(free, queue, wake_lease) end
if redis.call('ZCARD', leases) == 0 and redis.call('LLEN', parked) == 0 then
  redis.call('SREM', receivers, e)
end
return 0
"""
)

# ARGV: ns, receiver, now, token, parked value, queue key, wake lease ms: park the message
# now if the receiver is full as last seen (its limit as its last admission recorded it),
# before the worker reads anything from the database. 1: parked; 0: go on to `_ADMIT`.
_PARK_IF_FULL = (
    _LUA_COMMON
    + """
local token, value, queue, wake_lease = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
if redis.call('ZSCORE', leases, token) then return 0 end
local max = tonumber(redis.call('HGET', state, 'max') or 0)
if max > 0 and park_if_full(token, value, max, queue, wake_lease) then return 1 end
return 0
"""
)

# ARGV: ns, receiver, now, token, parked value, how (back, front or queue), queue key, wake
# lease ms: the
# receiver is slow and this process's slow lane is full: give the slot back and wait for a
# thread of the slow lane, at the back of the slow list (a newcomer), at its front (woken
# for a thread another process freed), or go straight back onto the queue for another
# process to take (woken, a few times at most).
_PARK_SLOW = (
    _LUA_COMMON
    + """
local token, value, how, queue, wake_lease = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
redis.call('ZREM', leases, token)
redis.call('ZREM', started, token)
if how == 'queue' then
  push(queue, value)
  redis.call('ZADD', leases, now + tonumber(wake_lease), token)  -- its slot kept on the way
else
  redis.call(how == 'front' and 'LPUSH' or 'RPUSH', slow_list, e .. '|' .. token)
  redis.call('HSET', parked_msgs, token, value)
end
redis.call('HINCRBY', state, 'deferred', 1)
redis.call('PEXPIRE', state, STATE_TTL_MS)
return 0
"""
)

# ARGV: ns, receiver (unused: ''), now, queue key, wake lease ms, slow wake count: wake what
# expired leases left waiting, on every receiver, and a few of the slow lane.
_SWEEP = (
    _LUA_COMMON
    + """
local queue = ARGV[4]
local wake_lease, slow_wake = tonumber(ARGV[5]), tonumber(ARGV[6])
local woken = 0
for _, e in ipairs(redis.call('SMEMBERS', receivers)) do
  local base = ns .. ':gate:' .. e
  local leases, parked, state = base .. ':leases', base .. ':parked', base .. ':state'
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  -- A receiver whose state lapsed with reminders still parked (no request for a day): wake
  -- one; its admission records the limit again and its release wakes the next.
  local max = math.max(tonumber(redis.call('HGET', state, 'max') or 0), 1)
  local free = max - redis.call('ZCARD', leases)
  if free > 0 then woken = woken + wake_from(parked, leases, free, queue, wake_lease) end
  if redis.call('ZCARD', leases) == 0 and redis.call('LLEN', parked) == 0 then
    redis.call('SREM', receivers, e)
  end
end
for _ = 1, slow_wake do
  if wake_slow(queue, wake_lease) == 0 then break end
  woken = woken + 1
end
return woken
"""
)


class Verdict(StrEnum):
    ADMITTED = "admitted"
    PARKED = "parked"  # waiting for a slot of the receiver's concurrency
    RATE = "rate"  # delayed to the receiver's next free rate slot, reserved for it
    BACKING_OFF = "backing_off"  # delayed until the receiver's Retry-After ends


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    slow: bool = False  # admitted, to a receiver whose requests are slow
    until_ms: int = 0  # delayed until then (milliseconds since the epoch, on the gate's clock)
    delay_ms: int = 0  # delayed: how long from now that is


# The receivers' names: the deployment's webhook, and a user's endpoint by its ID.
WEBHOOK_RECEIVER = "webhook"
ENDPOINT_RECEIVER_PREFIX = "endpoint:"

# In a message's options: the rate slot (ms since the epoch) reserved for it by `Gate.admit`.
RESERVED_SLOT = "gate_slot"
# In a parked message's options: the receiver it waits for. Woken, it holds a reserved slot
# there; a message that then makes no request (its task changed meanwhile) gives it back.
WOKEN_FOR = "gate_receiver"
# In a message that waited for the slow lane: how many times in a row, woken, it found the
# fetching process's lane full and went straight back onto the queue (`Gate.park_slow`).
SLOW_LANE_HOPS_OPTION = "gate_slow_hops"
SLOW_LANE_HOPS = 3


@dataclass(frozen=True)
class Limits:
    """A receiver's limits; None: unlimited."""

    max_concurrency: int | None
    max_per_second: float | None

    @property
    def limited(self) -> bool:
        return self.max_concurrency is not None or self.max_per_second is not None


@dataclass(frozen=True)
class ReceiverState:
    """What operators see of one receiver (`Gate.receivers`)."""

    receiver: str
    in_flight: int
    parked: int
    backing_off_until_ms: int
    average_ms: int | None  # None: no request has ended yet (unproven, one at a time)
    deferred: int
    throttled: int
    # How long the oldest request still in flight has been going (ms; 0: none in flight).
    longest_in_flight_ms: int = 0

    @property
    def slow(self) -> bool:
        """Slow as admission judges it: its requests' running average, or one still in
        flight, has reached `SLOW_MS`."""
        average = self.average_ms or 0
        return average >= SLOW_MS or self.longest_in_flight_ms >= SLOW_MS


class Gate:
    """Admission to receivers, shared through Redis by every worker (see the module).

    Its times (leases, rate slots, back-offs) are Redis' clock, read inside each script, so
    worker hosts whose clocks disagree share one schedule; ``clock_ms`` replaces it (tests).
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        queue_name: str,
        *,
        lease_ms: int,
        wake_lease_ms: int = WAKE_LEASE_MS,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.queue_key = f"{namespace}:{queue_name}"
        self.lease_ms = lease_ms
        self.wake_lease_ms = wake_lease_ms
        self.clock_ms = clock_ms
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)
        self._park_slow = client.register_script(_PARK_SLOW)
        self._park_if_full = client.register_script(_PARK_IF_FULL)
        self._sweep = client.register_script(_SWEEP)

    def _now_ms(self) -> int:
        """The time the scripts are given: -1 for Redis' own."""
        return -1 if self.clock_ms is None else self.clock_ms()

    def admit(self, receiver: str, limits: Limits, message: Message[Any]) -> Admission:
        """Admit ``message`` to ``receiver`` now, park it, or tell until when to delay it."""
        rate = limits.max_per_second
        interval = 0 if rate is None else max(1, round(1000 / rate))
        # The window a receiver counts in: a second, or one request's interval below 1/s.
        per_window = 1 if rate is None else max(1, math.floor(rate))
        reserved = int(message.options.get(RESERVED_SLOT) or 0)
        code, value, *now = self._admit(
            args=[
                self.namespace,
                receiver,
                self._now_ms(),
                message.message_id,
                self.lease_ms,
                limits.max_concurrency or 0,
                interval,
                reserved,
                RESERVATION_GRACE_MS,
                SLOW_MS,
                parked_value(message, receiver),
                self.queue_key,
                self.wake_lease_ms,
                per_window,
            ]
        )
        if code == 0:
            return Admission(Verdict.ADMITTED, slow=bool(value))
        if code == 1:
            return Admission(Verdict.PARKED)
        return Admission(
            Verdict.RATE if code == 2 else Verdict.BACKING_OFF,
            until_ms=int(value),
            delay_ms=max(0, int(value) - int(now[0])),
        )

    def release(
        self,
        receiver: str,
        token: str,
        *,
        duration_ms: int,
        back_off_ms: int = 0,
        throttled: bool = False,
        slow_lane: bool = False,
    ) -> None:
        """The request admitted for ``token`` ended: free its slot, wake who waits for it,
        and note how long it took and any back-off the receiver asked for (``back_off_ms``
        from now: its ``Retry-After``)."""
        self._release(
            args=[
                self.namespace,
                receiver,
                self._now_ms(),
                token,
                duration_ms,
                back_off_ms,
                self.queue_key,
                self.wake_lease_ms,
                "1" if slow_lane else "0",
                "1" if throttled else "0",
            ]
        )

    def park_if_full(self, receiver: str, message: Message[Any]) -> bool:
        """Park ``message`` if ``receiver`` is full, or others wait for it, as its last
        admission left it; True if parked. A cheap first look, before the delivery's
        transaction: parking a flood to a full receiver then costs one script call per
        reminder and no database work. False: go on to `admit`, which decides."""
        return bool(
            self._park_if_full(
                args=[
                    self.namespace,
                    receiver,
                    self._now_ms(),
                    message.message_id,
                    parked_value(message, receiver),
                    self.queue_key,
                    self.wake_lease_ms,
                ]
            )
        )

    def park_slow(self, receiver: str, message: Message[Any]) -> None:
        """Give back the slot ``message`` was admitted to and wait for a slow-lane thread.

        A slow-lane request that ends wakes the oldest message waiting, for the thread it
        freed in its own process; another process, whose lane is full, may fetch it. That
        process does not make it wait again at once, or the freed thread would go unused
        and the lane run below its width: it puts the message back onto the queue, up to
        `SLOW_LANE_HOPS` times, then at the front of the slow list."""
        hops = message.options.get(SLOW_LANE_HOPS_OPTION)
        if hops is None:
            how, hops = "back", 0
        elif hops < SLOW_LANE_HOPS:
            how, hops = "queue", hops + 1
        else:
            how, hops = "front", 0
        self._park_slow(
            args=[
                self.namespace,
                receiver,
                self._now_ms(),
                message.message_id,
                parked_value(message, receiver, {SLOW_LANE_HOPS_OPTION: hops}),
                how,
                self.queue_key,
                self.wake_lease_ms,
            ]
        )

    def sweep(self, slow_wake: int) -> int:
        """Wake what waits on slots freed by expired leases (a worker killed mid-request), and
        up to ``slow_wake`` messages of the slow lane; returns how many were woken."""
        woken: int = self._sweep(
            args=[
                self.namespace,
                "",
                self._now_ms(),
                self.queue_key,
                self.wake_lease_ms,
                slow_wake,
            ]
        )
        return woken

    def parked_message_ids(self) -> set[str]:
        """Message IDs parked here: held by the broker, to be woken."""
        return parked_message_ids(self.client, self.namespace)

    def receivers(self) -> list[ReceiverState]:
        """Every receiver with requests in flight or reminders parked, and every one backing
        off or counted, as operators see them."""
        if self.clock_ms is None:
            seconds, microseconds = self.client.time()
            now = seconds * 1000 + microseconds // 1000
        else:
            now = self.clock_ms()
        names = {name.decode() for name in self.client.smembers(f"{self.namespace}:gate:receivers")}
        for key in self.client.scan_iter(match=f"{self.namespace}:gate:*:state", count=1000):
            names.add(key.decode()[len(self.namespace) + 6 : -len(":state")])
        # A request whose lease lapsed is no longer in flight (its worker died): admission
        # stops counting it then, and so do operators.
        live_since = f"({now - self.lease_ms}"
        found = []
        for name in sorted(names):
            base = f"{self.namespace}:gate:{name}"
            with self.client.pipeline(transaction=False) as pipe:
                pipe.zcount(f"{base}:started", live_since, "+inf")
                pipe.zrangebyscore(f"{base}:started", live_since, "+inf", 0, 1, withscores=True)
                pipe.llen(f"{base}:parked")
                pipe.hgetall(f"{base}:state")
                started, oldest, parked, state = pipe.execute()
            until = int(state.get(b"until", 0))
            found.append(
                ReceiverState(
                    receiver=name,
                    in_flight=int(started),
                    parked=int(parked),
                    backing_off_until_ms=until if until > now else 0,
                    average_ms=int(state[b"ewma"]) if b"ewma" in state else None,
                    deferred=int(state.get(b"deferred", 0)),
                    throttled=int(state.get(b"throttled", 0)),
                    longest_in_flight_ms=max(0, now - int(oldest[0][1])) if oldest else 0,
                )
            )
        return found

    def slow_lane_waiting(self) -> int:
        return int(self.client.llen(f"{self.namespace}:gate:slow"))


def webhook_limits(settings: Settings) -> Limits:
    """The deployment webhook's limits (``REMINDERS_WEBHOOK_MAX_*``)."""
    return Limits(settings.webhook_max_concurrency, settings.webhook_max_per_second)


def endpoint_receiver(endpoint_id: object) -> str:
    """The receiver name of a user's endpoint."""
    return f"{ENDPOINT_RECEIVER_PREFIX}{endpoint_id}"


def make_gate(
    settings: Settings, broker: RedisBroker, clock_ms: Callable[[], int] | None = None
) -> Gate:
    """The gate on the broker's Redis, under its namespace, for ``send_reminder``'s queue:
    built the same way by the workers (to admit) and by what shows operators the receivers
    (the API, the CLI). A lease outlives the longest request (the webhook timeout bounds the
    whole call) by ten seconds. A slot reserved for a woken message outlives the time its
    worker's death takes to be noticed (``REMINDERS_HEARTBEAT_TIMEOUT_MS``) by five seconds,
    and is kept `WAKE_LEASE_MS` at least. ``clock_ms``: the time, in milliseconds since the
    epoch (None: Redis' own)."""
    lease_ms = round((settings.webhook_timeout_seconds + 10) * 1000)
    wake_lease_ms = max(WAKE_LEASE_MS, settings.heartbeat_timeout_ms + 5_000)
    return Gate(
        broker.client,
        broker.namespace,
        QUEUE_NAME,
        lease_ms=lease_ms,
        wake_lease_ms=wake_lease_ms,
        clock_ms=clock_ms,
    )


def parked_message_ids(client: Any, namespace: str) -> set[str]:
    """Message IDs parked by the gate of ``namespace``: held, to be woken."""
    return {token.decode() for token in client.hkeys(f"{namespace}:gate:parked.msgs")}


def parked_value(message: Message[Any], receiver: str, more: dict[str, Any] | None = None) -> str:
    """What a parked message is stored as: a fresh broker id, then the message encoded as it
    goes back onto its queue under that id (its retry count and reservation kept, the
    receiver it waited for, and ``more`` options)."""
    broker_id = os.urandom(16).hex()
    options = {key: value for key, value in message.options.items() if key != "eta"}
    options["redis_message_id"] = broker_id
    options[WOKEN_FOR] = receiver
    options.update(more or {})
    encoded = get_encoder().encode(
        {
            "queue_name": message.queue_name.removesuffix(".DQ"),
            "actor_name": message.actor_name,
            "args": message.args,
            "kwargs": message.kwargs,
            "options": options,
            "message_id": message.message_id,
            "message_timestamp": message.message_timestamp,
        }
    )
    return broker_id + encoded.decode()
