"""The gate's bookkeeping on a real Redis, at an injected clock: slots, parking and waking,
leases that expire, rate slots, back-off and the slow mark (SPEC §4.9); and on Redis' own
clock, for workers whose clocks disagree.

Real time: none (the clock is injected, or this process's moved with time-machine); a few
Redis round trips per test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import time_machine
from dramatiq import Message

from shared.broker.gate import (
    RESERVED_SLOT,
    SLOW_LANE_HOPS,
    SLOW_MS,
    WAKE_LEASE_MS,
    Gate,
    Limits,
    Verdict,
    parked_value,
)
from shared.broker.redis_broker import decode_message
from tests.conftest import REDIS_URL

LEASE_MS = 15_000
QUEUE = "reminders"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def client() -> Iterator[Any]:
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gate(client: Any, redis_namespace: str, clock: Clock) -> Gate:
    return Gate(client, redis_namespace, QUEUE, lease_ms=LEASE_MS, clock_ms=clock)


def reminder(options: dict[str, Any] | None = None) -> Message[Any]:
    return Message(
        queue_name=QUEUE,
        actor_name="send_reminder",
        args=(str(uuid.uuid4()), datetime(2026, 1, 1, tzinfo=UTC).isoformat()),
        kwargs={},
        options={"redis_message_id": uuid.uuid4().hex, "retries": 1, **(options or {})},
        message_id=str(uuid.uuid4()),
    )


def queued(client: Any, namespace: str) -> list[Message[Any]]:
    """The messages on the queue, in order, as a worker would fetch them."""
    ids = client.lrange(f"{namespace}:{QUEUE}", 0, -1)
    bodies = client.hmget(f"{namespace}:{QUEUE}.msgs", ids) if ids else []
    messages = [decode_message(body) for body in bodies]
    for broker_id, message in zip(ids, messages, strict=True):
        assert message.options["redis_message_id"] == broker_id.decode()
    return messages


TWO = Limits(max_concurrency=2, max_per_second=None)


def prove(gate: Gate, receiver: str, limits: Limits, duration_ms: int = 10) -> None:
    """One request to ``receiver`` that answered: it is no longer unproven (one at a time)."""
    probe = reminder()
    assert gate.admit(receiver, limits, probe).verdict is Verdict.ADMITTED
    gate.release(receiver, probe.message_id, duration_ms=duration_ms)


def test_an_unproven_receiver_gets_one_request_at_a_time_until_its_first_answers(
    gate: Gate, client: Any, redis_namespace: str
) -> None:
    """A receiver never answered yet might be slow: a flood to it holds one thread, not
    max_concurrency of them, until its first request tells how fast it is."""
    first, second, third = (reminder() for _ in range(3))
    assert gate.admit("endpoint:a", TWO, first).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, second).verdict is Verdict.PARKED
    assert gate.admit("endpoint:a", TWO, third).verdict is Verdict.PARKED
    assert queued(client, redis_namespace) == []

    gate.release("endpoint:a", first.message_id, duration_ms=20)

    # Proven: both slots of its limit, each reserved for a woken reminder.
    woken = queued(client, redis_namespace)
    assert [message.message_id for message in woken] == [second.message_id, third.message_id]
    assert [gate.admit("endpoint:a", TWO, message).verdict for message in woken] == [
        Verdict.ADMITTED
    ] * 2


def test_a_full_receiver_parks_and_its_next_free_slot_wakes_the_oldest(
    gate: Gate, client: Any, redis_namespace: str
) -> None:
    prove(gate, "endpoint:a", TWO)
    first, second, third, fourth = (reminder() for _ in range(4))
    assert gate.admit("endpoint:a", TWO, first).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, second).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, third).verdict is Verdict.PARKED
    assert gate.admit("endpoint:a", TWO, fourth).verdict is Verdict.PARKED
    # Another receiver is not held up by this one.
    assert gate.admit("endpoint:b", TWO, reminder()).verdict is Verdict.ADMITTED
    assert queued(client, redis_namespace) == []
    assert gate.parked_message_ids() == {third.message_id, fourth.message_id}

    gate.release("endpoint:a", first.message_id, duration_ms=20)

    [woken] = queued(client, redis_namespace)
    assert woken.message_id == third.message_id
    assert woken.args == third.args and woken.options["retries"] == 1  # no attempt spent
    assert gate.parked_message_ids() == {fourth.message_id}
    # The freed slot is the woken message's: a newcomer waits behind the fourth.
    assert gate.admit("endpoint:a", TWO, reminder()).verdict is Verdict.PARKED
    assert gate.admit("endpoint:a", TWO, woken).verdict is Verdict.ADMITTED


def test_woken_reminders_go_to_the_head_of_the_queue(
    gate: Gate, client: Any, redis_namespace: str
) -> None:
    """They have waited their turn already: a backlog that came after them (another user's
    burst, the rest of a flood) does not hold them, nor the slots reserved for them. One
    release's wakes keep their order; a later release's go ahead of them (a few, each
    holding a slot, so all are taken within moments)."""
    prove(gate, "endpoint:a", TWO)
    held = [reminder() for _ in range(2)]
    waiting = [reminder() for _ in range(2)]
    for message in held:
        assert gate.admit("endpoint:a", TWO, message).verdict is Verdict.ADMITTED
    for message in waiting:
        assert gate.admit("endpoint:a", TWO, message).verdict is Verdict.PARKED
    backlog = reminder()
    value = parked_value(backlog, "endpoint:b")
    client.hset(f"{redis_namespace}:{QUEUE}.msgs", value[:32], value[32:])
    client.rpush(f"{redis_namespace}:{QUEUE}", value[:32])

    for message in held:
        gate.release("endpoint:a", message.message_id, duration_ms=20)

    assert [message.message_id for message in queued(client, redis_namespace)] == [
        waiting[1].message_id,  # woken by the second release: pushed last, so first
        waiting[0].message_id,
        backlog.message_id,
    ]


def test_a_lease_whose_worker_died_expires_and_the_sweep_wakes_who_waited(
    gate: Gate, client: Any, redis_namespace: str, clock: Clock
) -> None:
    one = Limits(max_concurrency=1, max_per_second=None)
    held, waiting = reminder(), reminder()
    assert gate.admit("endpoint:a", one, held).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", one, waiting).verdict is Verdict.PARKED
    # The worker holding the slot is killed: nobody releases it.
    clock.now += LEASE_MS - 1
    assert gate.sweep(slow_wake=0) == 0
    assert queued(client, redis_namespace) == []
    clock.now += 2
    assert gate.sweep(slow_wake=0) == 1
    assert [message.message_id for message in queued(client, redis_namespace)] == [
        waiting.message_id
    ]


def test_a_rate_gives_each_reminder_its_own_slot_and_honours_the_reservation(
    gate: Gate, clock: Clock
) -> None:
    twice = Limits(max_concurrency=8, max_per_second=2)
    prove(gate, "endpoint:a", Limits(max_concurrency=8, max_per_second=None))
    start = clock.now
    assert gate.admit("endpoint:a", twice, reminder()).verdict is Verdict.ADMITTED
    later = [gate.admit("endpoint:a", twice, reminder()) for _ in range(3)]
    assert [admission.verdict for admission in later] == [Verdict.RATE] * 3
    assert [admission.until_ms - start for admission in later] == [500, 1000, 1500]
    # The second comes back at its slot, carrying it: admitted, and nobody else is.
    clock.now = start + 500
    assert gate.admit("endpoint:a", twice, reminder()).verdict is Verdict.RATE
    carrying = reminder({RESERVED_SLOT: later[0].until_ms})
    assert gate.admit("endpoint:a", twice, carrying).verdict is Verdict.ADMITTED


def test_retry_after_holds_every_reminder_of_that_receiver_until_it_ends(
    gate: Gate, clock: Clock
) -> None:
    first = reminder()
    assert gate.admit("endpoint:a", TWO, first).verdict is Verdict.ADMITTED
    gate.release(
        "endpoint:a",
        first.message_id,
        duration_ms=5,
        back_off_ms=6_000,
        throttled=True,
    )
    held = gate.admit("endpoint:a", TWO, reminder())
    assert (held.verdict, held.until_ms) == (Verdict.BACKING_OFF, clock.now + 6_000)
    assert gate.admit("endpoint:b", TWO, reminder()).verdict is Verdict.ADMITTED
    clock.now += 6_000
    assert gate.admit("endpoint:a", TWO, reminder()).verdict is Verdict.ADMITTED
    [state] = [seen for seen in gate.receivers() if seen.receiver == "endpoint:a"]
    assert (state.throttled, state.deferred) == (1, 1)


def test_a_receiver_is_slow_while_its_requests_take_a_second(gate: Gate, clock: Clock) -> None:
    prove(gate, "endpoint:a", TWO, duration_ms=10)
    first = reminder()
    assert not gate.admit("endpoint:a", TWO, first).slow
    # One request still in flight after a second marks it slow, before any answer.
    clock.now += SLOW_MS
    second = reminder()
    assert gate.admit("endpoint:a", TWO, second).slow
    gate.release("endpoint:a", first.message_id, duration_ms=3 * SLOW_MS)
    gate.release("endpoint:a", second.message_id, duration_ms=SLOW_MS)
    third = reminder()
    assert gate.admit("endpoint:a", TWO, third).slow  # the average of its requests
    gate.release("endpoint:a", third.message_id, duration_ms=10)
    gate.release("endpoint:a", (fourth := reminder()).message_id, duration_ms=10)
    assert not gate.admit("endpoint:a", TWO, fourth).slow  # fast again: halved twice


def test_the_slow_lane_wakes_one_waiting_reminder_per_request_that_ends(
    gate: Gate, client: Any, redis_namespace: str
) -> None:
    prove(gate, "endpoint:a", TWO)
    running, waiting = reminder(), reminder()
    assert gate.admit("endpoint:a", TWO, running).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, waiting).verdict is Verdict.ADMITTED
    gate.park_slow("endpoint:a", waiting)  # this process's slow lane was full
    assert gate.parked_message_ids() == {waiting.message_id}
    assert gate.slow_lane_waiting() == 1
    gate.release("endpoint:a", running.message_id, duration_ms=2_000, slow_lane=True)
    assert [message.message_id for message in queued(client, redis_namespace)] == [
        waiting.message_id
    ]
    assert gate.slow_lane_waiting() == 0


def test_a_woken_slow_reminder_that_meets_a_full_lane_goes_back_to_the_queue_not_the_list(
    gate: Gate, client: Any, redis_namespace: str
) -> None:
    """The thread a slow-lane request freed is in its own process; a process whose lane is
    full that fetches the woken reminder hands it on through the queue (a few times), so the
    freed thread is not left unused while the reminder waits at the back of the list."""
    prove(gate, "endpoint:a", TWO)
    running, waiting, newcomer = reminder(), reminder(), reminder()
    assert gate.admit("endpoint:a", TWO, running).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, waiting).verdict is Verdict.ADMITTED
    gate.park_slow("endpoint:a", waiting)  # a newcomer: the back of the list
    gate.release("endpoint:a", running.message_id, duration_ms=2_000, slow_lane=True)
    [woken] = queued(client, redis_namespace)
    client.delete(f"{redis_namespace}:{QUEUE}")
    assert gate.admit("endpoint:a", TWO, newcomer).verdict is Verdict.ADMITTED
    gate.park_slow("endpoint:a", newcomer)  # waits behind the woken one
    for _ in range(SLOW_LANE_HOPS):  # fetched by processes whose lanes are full
        assert gate.admit("endpoint:a", TWO, woken).verdict is Verdict.ADMITTED
        gate.park_slow("endpoint:a", woken)
        [woken] = queued(client, redis_namespace)
        client.delete(f"{redis_namespace}:{QUEUE}")
        assert woken.message_id == waiting.message_id
        assert gate.slow_lane_waiting() == 1  # only the newcomer is on the list
    # Out of hops: it waits again, first in line, ahead of the newcomer.
    assert gate.admit("endpoint:a", TWO, woken).verdict is Verdict.ADMITTED
    gate.park_slow("endpoint:a", woken)
    assert gate.slow_lane_waiting() == 2
    gate.release("endpoint:a", newcomer.message_id, duration_ms=2_000, slow_lane=True)
    assert [message.message_id for message in queued(client, redis_namespace)] == [
        waiting.message_id
    ]


def test_a_reminder_woken_for_the_slow_lane_does_not_wait_behind_its_receivers_parked_ones(
    gate: Gate, client: Any, redis_namespace: str
) -> None:
    """Woken for the thread a slow request freed, it holds a slot of its receiver: it takes
    that thread now, rather than queueing behind reminders parked for the receiver (the
    thread would go unused and the lane shrink)."""
    prove(gate, "endpoint:a", TWO)
    running, waiting, other, behind = (reminder() for _ in range(4))
    assert gate.admit("endpoint:a", TWO, running).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, waiting).verdict is Verdict.ADMITTED
    gate.park_slow("endpoint:a", waiting)  # this process's slow lane was full
    assert gate.admit("endpoint:a", TWO, other).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, behind).verdict is Verdict.PARKED
    gate.release("endpoint:a", running.message_id, duration_ms=2_000, slow_lane=True)
    [woken] = queued(client, redis_namespace)
    assert woken.message_id == waiting.message_id
    assert gate.admit("endpoint:a", TWO, woken).verdict is Verdict.ADMITTED
    assert gate.parked_message_ids() == {behind.message_id}


def test_a_full_receiver_parks_a_reminder_at_first_look_and_wakes_it_in_turn(
    gate: Gate, client: Any, redis_namespace: str
) -> None:
    """The workers' first look, before any database work: a receiver never admitted to is
    left to `admit`; a full one parks the reminder behind the others; one woken with its slot
    reserved goes on."""
    assert not gate.park_if_full("endpoint:new", reminder())
    prove(gate, "endpoint:a", TWO)
    first, second, third, fourth = (reminder() for _ in range(4))
    assert not gate.park_if_full("endpoint:a", first)  # room: admit decides
    assert gate.admit("endpoint:a", TWO, first).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, second).verdict is Verdict.ADMITTED
    assert gate.park_if_full("endpoint:a", third)
    assert gate.admit("endpoint:a", TWO, fourth).verdict is Verdict.PARKED  # behind it
    assert gate.parked_message_ids() == {third.message_id, fourth.message_id}

    gate.release("endpoint:a", first.message_id, duration_ms=20)

    [woken] = queued(client, redis_namespace)
    assert woken.message_id == third.message_id
    assert not gate.park_if_full("endpoint:a", woken)  # its slot is reserved
    assert gate.admit("endpoint:a", TWO, woken).verdict is Verdict.ADMITTED


def test_a_woken_reminder_whose_reservation_lapsed_competes_again(
    gate: Gate, client: Any, redis_namespace: str, clock: Clock
) -> None:
    one = Limits(max_concurrency=1, max_per_second=None)
    first, second = reminder(), reminder()
    gate.admit("endpoint:a", one, first)
    gate.admit("endpoint:a", one, second)
    gate.release("endpoint:a", first.message_id, duration_ms=5)
    [woken] = queued(client, redis_namespace)
    # Stuck behind a backlog past its reservation: the slot is anyone's again.
    clock.now += WAKE_LEASE_MS + 1
    newcomer = reminder()
    assert gate.admit("endpoint:a", one, newcomer).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", one, woken).verdict is Verdict.PARKED


def test_a_reservation_kept_late_does_not_let_the_next_one_crowd_its_window(
    gate: Gate, clock: Clock
) -> None:
    once = Limits(max_concurrency=8, max_per_second=1)
    prove(gate, "endpoint:a", Limits(max_concurrency=8, max_per_second=None))
    start = clock.now
    assert gate.admit("endpoint:a", once, reminder()).verdict is Verdict.ADMITTED
    second, third = (gate.admit("endpoint:a", once, reminder()) for _ in range(2))
    assert (second.until_ms - start, third.until_ms - start) == (1000, 2000)
    clock.now = start + 1500  # the second came back half a second after its slot
    late = reminder({RESERVED_SLOT: second.until_ms})
    assert gate.admit("endpoint:a", once, late).verdict is Verdict.ADMITTED
    clock.now = start + 2000  # the third on time: a second has not passed since the last
    crowded = gate.admit("endpoint:a", once, reminder({RESERVED_SLOT: third.until_ms}))
    assert (crowded.verdict, crowded.until_ms - start) == (Verdict.RATE, 2500)


def test_operators_see_in_flight_parked_back_off_and_a_request_slow_before_it_ends(
    gate: Gate, clock: Clock
) -> None:
    prove(gate, "endpoint:a", TWO, duration_ms=40)
    held, waiting, throttled = reminder(), reminder(), reminder()
    assert gate.admit("endpoint:a", TWO, held).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, throttled).verdict is Verdict.ADMITTED
    assert gate.admit("endpoint:a", TWO, reminder()).verdict is Verdict.PARKED
    gate.release(
        "endpoint:a",
        throttled.message_id,
        duration_ms=40,
        back_off_ms=30_000,
        throttled=True,
    )
    assert gate.admit("endpoint:b", TWO, waiting).verdict is Verdict.ADMITTED
    clock.now += SLOW_MS  # the held request has been going a second: slow before it answers

    states = {state.receiver: state for state in gate.receivers()}

    a = states["endpoint:a"]
    assert (a.in_flight, a.parked, a.throttled, a.deferred) == (1, 0, 1, 1)
    assert a.backing_off_until_ms == clock.now - SLOW_MS + 30_000
    assert (a.average_ms, a.longest_in_flight_ms, a.slow) == (40, SLOW_MS, True)
    assert states["endpoint:b"].in_flight == 1


def test_a_request_whose_worker_died_stops_counting_in_flight_when_its_lease_lapses(
    gate: Gate, clock: Clock
) -> None:
    gate.admit("endpoint:a", TWO, reminder())  # its worker is SIGKILLed: never released
    clock.now += LEASE_MS - 1
    [state] = gate.receivers()
    assert state.in_flight == 1
    clock.now += 1
    [state] = gate.receivers()
    assert (state.in_flight, state.longest_in_flight_ms) == (0, 0)


def test_a_receivers_state_is_forgotten_a_day_after_its_last_request_and_its_parked_still_wake(
    gate: Gate, client: Any, redis_namespace: str
) -> None:
    """Deleted and idle endpoints do not stay in Redis; should the state lapse with
    reminders still parked (nothing released them for a day), the sweep wakes them."""
    one = Limits(max_concurrency=1, max_per_second=None)
    held, waiting = reminder(), reminder()
    gate.admit("endpoint:a", one, held)
    assert gate.admit("endpoint:a", one, waiting).verdict is Verdict.PARKED
    state = f"{redis_namespace}:gate:endpoint:a:state"
    assert 0 < client.pttl(state) <= 86_400_000

    client.delete(state, f"{redis_namespace}:gate:endpoint:a:leases")  # a day later

    assert gate.sweep(slow_wake=0) == 1
    assert [message.message_id for message in queued(client, redis_namespace)] == [
        waiting.message_id
    ]


def ahead(seconds: float) -> Any:
    """This process's wall clock ``seconds`` ahead, as on a worker host whose clock is wrong."""
    return time_machine.travel(time.time() + seconds, tick=True)


def test_a_worker_whose_clock_runs_ahead_keeps_to_the_rate_slots_a_worker_on_time_took(
    client: Any, redis_namespace: str
) -> None:
    """Workers on two hosts, one 2 s ahead, share a receiver's rate of one a second: the gate
    times them on Redis' clock, so the one ahead cannot take the slot the other just took,
    and is told to wait for the next as long as Redis measures it."""
    gate = Gate(client, redis_namespace, QUEUE, lease_ms=LEASE_MS)  # Redis' clock
    once = Limits(max_concurrency=None, max_per_second=1.0)
    assert gate.admit("endpoint:a", once, reminder()).verdict is Verdict.ADMITTED
    with ahead(2):
        held = gate.admit("endpoint:a", once, reminder())
    assert held.verdict is Verdict.RATE
    assert 0 < held.delay_ms <= 1000, held


def test_a_worker_whose_clock_runs_ahead_keeps_to_a_back_off_a_worker_on_time_recorded(
    client: Any, redis_namespace: str
) -> None:
    gate = Gate(client, redis_namespace, QUEUE, lease_ms=LEASE_MS)
    limits = Limits(max_concurrency=4, max_per_second=None)
    asked = reminder()
    assert gate.admit("endpoint:a", limits, asked).verdict is Verdict.ADMITTED
    gate.release("endpoint:a", asked.message_id, duration_ms=30, back_off_ms=5_000, throttled=True)
    with ahead(6):  # past the back-off by its own clock
        held = gate.admit("endpoint:a", limits, reminder())
    assert held.verdict is Verdict.BACKING_OFF
    assert 0 < held.delay_ms <= 5_000, held
