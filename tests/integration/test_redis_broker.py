"""The adapter over Dramatiq's Redis key layout (``shared.broker.redis_broker``), on a real Redis.

Each test drives the broker the way Dramatiq's own workers do (enqueue, fetch through a
consumer, ack, nack) and checks what the adapter then reports: which occurrences the
broker still holds, what is dead-lettered, how deep each queue is, and what maintenance
gives back or expires. Every test has its own key namespace (the ``redis_namespace``
fixture), so broker instances and heartbeats of other tests never interfere.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import pytest
import redis
from dramatiq import Message
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.worker import Worker

from shared.broker import redis_broker
from shared.broker.queue import QUEUE_NAME, make_broker, reminder_message
from shared.broker.redis_broker import (
    QueueDepth,
    dead_letters,
    dead_message_ids,
    decode_message,
    enqueue_batch,
    pending_message_ids,
    queue_depth,
    remove_dead_letter,
    run_maintenance,
)
from shared.config import DEFAULT_HEARTBEAT_TIMEOUT_MS as TIMEOUT_MS
from tests.conftest import REDIS_URL, make_settings
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis

BrokerFactory = Callable[..., RedisBroker]


@pytest.fixture
def brokers(redis_namespace: str) -> Iterator[BrokerFactory]:
    """Broker instances on this test's namespace, each like one worker process."""
    made: list[RedisBroker] = []

    def build(ack_linger_seconds: float = 0.0, **settings: Any) -> RedisBroker:
        settings = {"redis_url": REDIS_URL, "redis_namespace": redis_namespace, **settings}
        broker = make_broker(make_settings(**settings), ack_linger_seconds=ack_linger_seconds)
        made.append(broker)
        return broker

    yield build
    for broker in made:
        broker.close()
        broker.client.close()


def message(**options: Any) -> Message[Any]:
    return Message(
        queue_name=QUEUE_NAME,
        actor_name="send_reminder",
        args=(str(uuid.uuid4()), "2030-01-01T00:00:00+00:00"),
        kwargs={},
        options=options,
        message_id=str(uuid.uuid4()),
    )


def recorded(number: int, queue_name: str = QUEUE_NAME, **options: Any) -> Message[Any]:
    """A message for a test's ``record`` actor."""
    return Message(
        queue_name=queue_name,
        actor_name="record",
        args=(number,),
        kwargs={},
        options=options,
        message_id=str(uuid.uuid4()),
    )


@contextmanager
def worker_until(broker: RedisBroker, done: Callable[[], bool], seconds: float) -> Iterator[None]:
    """A Dramatiq worker (4 threads) on ``broker``, entered once ``done()`` or after
    ``seconds``; stopped as the block ends."""
    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield
    finally:
        worker.stop()


def fetch(broker: RedisBroker, queue_name: str = QUEUE_NAME, timeout: float = 5) -> MessageProxy:
    """Fetch one message without acking it, as a worker does before processing."""
    consumer = broker.consume(queue_name, prefetch=1, timeout=100)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proxy = next(consumer)
        if proxy is not None:
            return proxy
    raise AssertionError(f"no message on {queue_name!r} within {timeout} s")


def ack(broker: RedisBroker, proxy: MessageProxy, queue_name: str = QUEUE_NAME) -> None:
    broker.consume(queue_name).ack(proxy)


def nack(broker: RedisBroker, proxy: MessageProxy, queue_name: str = QUEUE_NAME) -> None:
    broker.consume(queue_name).nack(proxy)


def stored_keys(broker: RedisBroker) -> set[str]:
    """The namespace's keys that hold messages (the heartbeat set left out)."""
    keys = broker.client.scan_iter(match=f"{broker.namespace}:*", count=1000)
    return {key.decode() for key in keys} - {f"{broker.namespace}:__heartbeats__"}


def dead_letter(broker: RedisBroker, **options: Any) -> Message[Any]:
    """Enqueue a message, fetch it and nack it: what Dramatiq does when retries run out."""
    sent = broker.enqueue(message(**options))
    proxy = fetch(broker)
    assert proxy.message_id == sent.message_id
    nack(broker, proxy)
    time.sleep(0.005)  # dead letters are scored by the millisecond: keep the order strict
    return sent


# -- pending_message_ids ---------------------------------------------------------------------


def test_pending_ids_hold_ready_delayed_and_in_flight_messages_and_forget_acked_ones(
    brokers: BrokerFactory,
) -> None:
    broker = brokers()
    assert pending_message_ids(broker, QUEUE_NAME) == set()

    ready = broker.enqueue(message())
    delayed = broker.enqueue(message(), delay=60_000)
    in_flight = broker.enqueue(message())
    first = fetch(broker)  # FIFO: the first ready message
    assert first.message_id == ready.message_id
    ack(broker, first)
    fetched = fetch(broker)
    assert fetched.message_id == in_flight.message_id

    assert pending_message_ids(broker, QUEUE_NAME) == {delayed.message_id, in_flight.message_id}

    later = broker.enqueue(message())
    assert pending_message_ids(broker, QUEUE_NAME) == {
        delayed.message_id,
        in_flight.message_id,
        later.message_id,
    }

    ack(broker, fetched)
    assert pending_message_ids(broker, QUEUE_NAME) == {delayed.message_id, later.message_id}


def test_a_delayed_message_fetched_by_a_worker_is_still_pending(brokers: BrokerFactory) -> None:
    """Workers fetch delayed messages at once and hold them until their eta."""
    broker = brokers()
    delayed = broker.enqueue(message(), delay=60_000)
    proxy = fetch(broker, dq_name(QUEUE_NAME))
    assert proxy.message_id == delayed.message_id

    assert pending_message_ids(broker, QUEUE_NAME) == {delayed.message_id}
    ack(broker, proxy, dq_name(QUEUE_NAME))
    assert pending_message_ids(broker, QUEUE_NAME) == set()


def test_pending_ids_are_per_queue_and_exclude_dead_letters(brokers: BrokerFactory) -> None:
    broker = brokers()
    dead = dead_letter(broker)
    other = broker.enqueue(message().copy(queue_name="elsewhere"))

    assert pending_message_ids(broker, QUEUE_NAME) == set()
    assert pending_message_ids(broker, "elsewhere") == {other.message_id}
    assert dead_message_ids(broker, QUEUE_NAME) == {dead.message_id}


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letters_are_listed_newest_first_with_message_id_and_traceback(
    brokers: BrokerFactory,
) -> None:
    broker = brokers()
    assert dead_letters(broker, QUEUE_NAME) == []

    oldest = dead_letter(broker, traceback="Traceback ...\nTransientDeliveryError: answered 500")
    middle = dead_letter(broker)
    newest = dead_letter(broker, traceback="Traceback ...\nPermanentDeliveryError: 400")

    letters = dead_letters(broker, QUEUE_NAME)
    assert [letter.message_id for letter in letters] == [
        newest.message_id,
        middle.message_id,
        oldest.message_id,
    ]
    assert [letter.traceback for letter in letters] == [
        "Traceback ...\nPermanentDeliveryError: 400",
        None,
        "Traceback ...\nTransientDeliveryError: answered 500",
    ]
    assert letters[0].failed_at_ms > letters[1].failed_at_ms > letters[2].failed_at_ms
    now_ms = time.time() * 1000
    assert all(now_ms - 10_000 < letter.failed_at_ms <= now_ms + 1000 for letter in letters)
    # The broker id is Redis's own key for the entry, distinct from the message id.
    assert [letter.broker_id for letter in letters] == [
        newest.options["redis_message_id"],
        middle.options["redis_message_id"],
        oldest.options["redis_message_id"],
    ]
    assert all(letter.message.actor_name == "send_reminder" for letter in letters)
    assert dead_message_ids(broker, QUEUE_NAME) == {
        oldest.message_id,
        middle.message_id,
        newest.message_id,
    }


def test_remove_dead_letter_removes_exactly_one_and_says_false_the_second_time(
    brokers: BrokerFactory,
) -> None:
    broker = brokers()
    keep = dead_letter(broker)
    drop = dead_letter(broker)

    assert remove_dead_letter(broker, QUEUE_NAME, drop.options["redis_message_id"]) is True
    assert [letter.message_id for letter in dead_letters(broker, QUEUE_NAME)] == [keep.message_id]
    assert queue_depth(broker, QUEUE_NAME).dead == 1

    assert remove_dead_letter(broker, QUEUE_NAME, drop.options["redis_message_id"]) is False
    assert remove_dead_letter(broker, QUEUE_NAME, "no-such-entry") is False
    assert [letter.message_id for letter in dead_letters(broker, QUEUE_NAME)] == [keep.message_id]

    assert remove_dead_letter(broker, QUEUE_NAME, keep.options["redis_message_id"]) is True
    assert dead_letters(broker, QUEUE_NAME) == []
    assert stored_keys(broker) == set()  # nothing of either letter is left behind in Redis


def test_the_same_message_id_dead_twice_is_two_entries_removed_one_at_a_time(
    brokers: BrokerFactory,
) -> None:
    """A retried message that dies again is a second entry under the same message id."""
    broker = brokers()
    original = message()
    for _ in range(2):
        broker.enqueue(original)
        nack(broker, fetch(broker))
        time.sleep(0.005)

    letters = dead_letters(broker, QUEUE_NAME)
    assert [letter.message_id for letter in letters] == [original.message_id] * 2
    assert letters[0].broker_id != letters[1].broker_id

    assert remove_dead_letter(broker, QUEUE_NAME, letters[0].broker_id) is True
    [left] = dead_letters(broker, QUEUE_NAME)
    assert left.broker_id == letters[1].broker_id


# -- undecodable bodies ----------------------------------------------------------------------

UNDECODABLE_BODIES = {
    "not JSON": b"\x80 not JSON {",
    "args null": b'{"queue_name": "reminders", "actor_name": "send_reminder", "args": null, '
    b'"kwargs": {}, "options": {}, "message_id": "m", "message_timestamp": 0}',
    "fields missing": b'{"queue_name": "reminders"}',
    "options not an object": b'{"queue_name": "reminders", "actor_name": "send_reminder", '
    b'"args": [], "kwargs": {}, "options": null, "message_id": "m", "message_timestamp": 0}',
}


def put_raw(broker: RedisBroker, bodies: dict[str, bytes], queue_name: str = QUEUE_NAME) -> None:
    """What a foreign producer could write: bodies under broker ids, the ids on the list."""
    broker.client.hset(f"{broker.namespace}:{queue_name}.msgs", mapping=bodies)
    broker.client.rpush(f"{broker.namespace}:{queue_name}", *bodies)


def test_a_consumer_dead_letters_undecodable_bodies_and_delivers_the_rest_of_its_batch(
    brokers: BrokerFactory,
) -> None:
    broker = brokers()
    first = broker.enqueue(message())
    poison = {str(uuid.uuid4()): body for body in UNDECODABLE_BODIES.values()}
    put_raw(broker, poison)
    last = broker.enqueue(message())
    consumer = broker.consume(QUEUE_NAME, prefetch=10, timeout=100)

    got = [next(consumer), next(consumer), next(consumer)]  # one fetch holds all six

    assert [proxy.message_id if proxy else None for proxy in got] == [
        first.message_id,
        last.message_id,
        None,
    ]
    letters = dead_letters(broker, QUEUE_NAME)
    assert {letter.broker_id for letter in letters} == set(poison)
    assert all(letter.undecodable and letter.message_id is None for letter in letters)
    assert all((letter.decode_error or "").startswith("UndecodableMessage: ") for letter in letters)
    stored = broker.client.hgetall(f"{broker.namespace}:{QUEUE_NAME}.XQ.msgs")
    assert {key.decode(): body for key, body in stored.items()} == poison  # kept as they were
    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 2, len(poison))
    for proxy in got[:2]:
        assert proxy is not None
        consumer.ack(proxy)
    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, len(poison))
    assert dead_message_ids(broker, QUEUE_NAME) == set()


def test_an_undecodable_delayed_body_goes_to_the_queues_dead_letters(
    brokers: BrokerFactory,
) -> None:
    broker = brokers()
    [broker_id] = poison = {str(uuid.uuid4()): UNDECODABLE_BODIES["args null"]}
    put_raw(broker, poison, dq_name(QUEUE_NAME))
    consumer = broker.consume(dq_name(QUEUE_NAME), prefetch=2, timeout=100)

    assert next(consumer) is None

    [letter] = dead_letters(broker, QUEUE_NAME)
    assert (letter.broker_id, letter.undecodable) == (broker_id, True)
    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 1)


def test_pending_ids_skip_undecodable_bodies(brokers: BrokerFactory) -> None:
    broker = brokers()
    held = broker.enqueue(message())
    put_raw(broker, {str(uuid.uuid4()): body for body in UNDECODABLE_BODIES.values()})
    put_raw(broker, {str(uuid.uuid4()): b"[]"}, dq_name(QUEUE_NAME))

    assert pending_message_ids(broker, QUEUE_NAME) == {held.message_id}


# -- queue_depth -----------------------------------------------------------------------------


def test_queue_depth_counts_ready_delayed_in_flight_and_dead(brokers: BrokerFactory) -> None:
    broker = brokers()
    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)

    dead_letter(broker)
    dead_letter(broker)
    for _ in range(4):
        broker.enqueue(message())
    for _ in range(3):
        broker.enqueue(message(), delay=60_000)
    held = [fetch(broker), fetch(broker)]

    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(
        queue=QUEUE_NAME, ready=2, delayed=3, in_flight=2, dead=2
    )

    ack(broker, held[0])
    nack(broker, held[1])
    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 2, 3, 0, 3)
    # Another queue's depth is its own.
    assert queue_depth(broker, "elsewhere") == QueueDepth("elsewhere", 0, 0, 0, 0)


# -- run_maintenance -------------------------------------------------------------------------


def later(milliseconds: int) -> Callable[[], int]:
    """A maintenance clock ``milliseconds`` ahead of the one Dramatiq stamps heartbeats with."""
    return lambda: current_millis() + milliseconds


def test_maintenance_gives_back_the_messages_of_a_broker_instance_that_stopped_beating(
    brokers: BrokerFactory,
) -> None:
    """Judged at an injected time past the (default) heartbeat timeout: the timeout is
    arithmetic on the heartbeats' stamps, which the Redis script does with the time given."""
    dying = brokers()
    survivor = brokers()
    sent = survivor.enqueue(message())
    stranded = fetch(dying)  # fetched, never acked: its worker was SIGKILLed
    assert stranded.message_id == sent.message_id
    assert queue_depth(survivor, QUEUE_NAME).in_flight == 1

    run_maintenance(survivor, QUEUE_NAME, clock=later(TIMEOUT_MS - 5000))  # silent, not yet dead
    assert queue_depth(survivor, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 1, 0)
    run_maintenance(survivor, QUEUE_NAME, clock=later(TIMEOUT_MS + 1000))  # past the timeout

    assert queue_depth(survivor, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 1, 0, 0, 0)
    again = fetch(survivor)
    assert again.message_id == sent.message_id
    ack(survivor, again)
    assert pending_message_ids(survivor, QUEUE_NAME) == set()


def test_maintenance_gives_back_delayed_messages_of_a_dead_instance(
    brokers: BrokerFactory,
) -> None:
    dying = brokers()
    survivor = brokers()
    sent = survivor.enqueue(message(), delay=100)
    assert fetch(dying, dq_name(QUEUE_NAME)).message_id == sent.message_id

    run_maintenance(survivor, QUEUE_NAME, clock=later(TIMEOUT_MS + 1000))  # past the timeout

    assert fetch(survivor, dq_name(QUEUE_NAME)).message_id == sent.message_id


def test_maintenance_leaves_a_live_instance_its_messages(brokers: BrokerFactory) -> None:
    """Real time: the live instance's heartbeats are stamped by Dramatiq's own clock on each
    of its broker calls, so staying alive past the timeout takes the time passing."""
    live = brokers(heartbeat_timeout_ms=1000)
    other = brokers(heartbeat_timeout_ms=1000)
    sent = other.enqueue(message())
    held = fetch(live)

    for _ in range(3):  # longer than the timeout in all, but ``live`` keeps calling Redis
        time.sleep(0.5)
        live.do_qsize(QUEUE_NAME)  # any broker call is a heartbeat
        run_maintenance(other, QUEUE_NAME)

    assert queue_depth(other, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 1, 0)
    assert next(other.consume(QUEUE_NAME, prefetch=1, timeout=100)) is None
    ack(live, held)
    assert pending_message_ids(other, QUEUE_NAME) == set()
    assert held.message_id == sent.message_id


def test_maintenance_leaves_a_recently_silent_instance_its_messages(
    brokers: BrokerFactory,
) -> None:
    """Silent for less than the heartbeat timeout is not dead: judged a second before the
    (default) timeout after its last call, at an injected time."""
    quiet = brokers()
    other = brokers()
    other.enqueue(message())
    fetch(quiet)

    run_maintenance(other, QUEUE_NAME, clock=later(TIMEOUT_MS - 1000))

    assert queue_depth(other, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 1, 0)


def test_maintenance_expires_dead_letters_older_than_the_ttl_and_keeps_younger_ones(
    brokers: BrokerFactory,
) -> None:
    """Judged at injected times: a letter's age is arithmetic on the millisecond it was
    dead-lettered, which the Redis script does with the time given."""
    broker = brokers(dead_letter_ttl_seconds=60)
    old = dead_letter(broker)
    between = current_millis()  # after ``old`` was dead-lettered, before ``young`` is
    run_maintenance(broker, QUEUE_NAME)
    assert dead_message_ids(broker, QUEUE_NAME) == {old.message_id}  # younger than 60 s

    time.sleep(0.005)  # dead letters are scored by the millisecond: keep the order strict
    young = dead_letter(broker)
    run_maintenance(broker, QUEUE_NAME, clock=lambda: between + 60_000)

    assert dead_message_ids(broker, QUEUE_NAME) == {young.message_id}
    assert queue_depth(broker, QUEUE_NAME).dead == 1


# -- each worker process beats, and gives back what silent ones held (Heartbeat) ---------------


@pytest.mark.slow
def test_a_running_worker_gives_back_what_a_silent_instance_held_without_a_scan(
    brokers: BrokerFactory,
) -> None:
    """No producer scan and no chance: the live worker's own heartbeat thread runs maintenance
    and hands the silent instance's message to the live worker.

    Real time: a heartbeat timeout of 1 s, judged by the live worker's clock."""
    silent = brokers(heartbeat_timeout_ms=1000)
    live = brokers(heartbeat_timeout_ms=1000)
    live.maintenance_chance = 0  # Dramatiq's maintenance on a random call: left out
    processed: list[int] = []

    @dramatiq.actor(broker=live, queue_name=QUEUE_NAME, actor_name="record")
    def record(number: int) -> None:
        processed.append(number)

    enqueue_batch(live, [recorded(7)])
    fetch(silent)  # fetched, then never a word again: killed, or cut off
    with worker_until(live, lambda: bool(processed), seconds=10):
        pass

    assert processed == [7]
    assert queue_depth(live, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)


@pytest.mark.slow
def test_a_worker_whose_threads_are_busy_longer_than_the_timeout_keeps_its_messages(
    brokers: BrokerFactory,
) -> None:
    """A worker's one thread takes 1.5 s per message, 6 s in all with a heartbeat timeout of
    1 s, while another instance runs maintenance every 100 ms: nothing it fetched is given
    back, so nothing is processed twice.

    Real time: the timeout is judged against the worker's own stamps as time passes."""
    live = brokers(heartbeat_timeout_ms=1000)
    other = brokers(heartbeat_timeout_ms=1000)
    processed: list[int] = []

    @dramatiq.actor(broker=live, queue_name=QUEUE_NAME, actor_name="record")
    def record(number: int) -> None:
        time.sleep(1.5)
        processed.append(number)

    enqueue_batch(live, [recorded(number) for number in range(4)])
    worker = Worker(live, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while len(processed) < 4 and time.monotonic() < deadline:
            run_maintenance(other, QUEUE_NAME)
            time.sleep(0.1)
        time.sleep(0.5)  # a message given back would be processed again by now
    finally:
        worker.stop()

    assert processed == [0, 1, 2, 3]
    assert queue_depth(other, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)


def test_a_batch_is_enqueued_in_order_and_consumed_like_single_enqueues(
    brokers: BrokerFactory,
) -> None:
    broker = brokers()
    batch = [message() for _ in range(3)]
    single = message()

    enqueue_batch(broker, batch)
    broker.enqueue(single)

    fetched = [fetch(broker) for _ in range(4)]
    assert [proxy.message_id for proxy in fetched] == [m.message_id for m in [*batch, single]]
    assert [proxy.args for proxy in fetched[:3]] == [m.args for m in batch]
    assert len({proxy.options["redis_message_id"] for proxy in fetched}) == 4
    for proxy in fetched:
        ack(broker, proxy)
    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)


def test_a_batch_puts_delayed_messages_on_the_delay_queue_with_their_eta(
    brokers: BrokerFactory,
) -> None:
    broker = brokers()
    eta = datetime.now(UTC) + timedelta(minutes=5)
    now_message = reminder_message(uuid.uuid4(), eta, uuid.uuid4())
    later_message = reminder_message(uuid.uuid4(), eta, uuid.uuid4(), eta=eta)

    enqueue_batch(broker, [now_message, later_message])

    def stored(queue_name: str) -> list[Message[Any]]:
        blobs = broker.client.hgetall(f"{broker.namespace}:{queue_name}.msgs").values()
        return [decode_message(blob) for blob in blobs]

    ready, delayed = stored(QUEUE_NAME), stored(dq_name(QUEUE_NAME))
    assert [msg.message_id for msg in ready] == [now_message.message_id]
    assert [msg.message_id for msg in delayed] == [later_message.message_id]
    assert delayed[0].options["eta"] == round(eta.timestamp() * 1000)
    assert pending_message_ids(broker, QUEUE_NAME) == {
        now_message.message_id,
        later_message.message_id,
    }


# -- delayed messages handed over when due ----------------------------------------------------


@pytest.mark.slow
def test_due_delayed_messages_are_each_processed_once_and_the_not_due_are_held(
    brokers: BrokerFactory,
) -> None:
    """2,500 delayed messages due together (more than two hand-over batches) and 300 due
    in ten minutes, through a Dramatiq worker: each due one processed once, none before its
    eta, every delay-queue entry acknowledged; the others held, unprocessed.

    Real time: delayed messages are released by the worker's own clock when their time comes."""
    broker = brokers()
    processed: list[tuple[int, int]] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE_NAME, actor_name="record")
    def record(number: int) -> None:
        processed.append((number, current_millis()))

    soon, later = current_millis() + 1500, current_millis() + 600_000

    enqueue_batch(broker, [recorded(n, dq_name(QUEUE_NAME), eta=soon) for n in range(2500)])
    enqueue_batch(broker, [recorded(n, dq_name(QUEUE_NAME), eta=later) for n in range(2500, 2800)])
    with worker_until(broker, lambda: len(processed) >= 2500, seconds=60):
        time.sleep(0.5)  # a duplicate hand-over would show up by now
        held = queue_depth(broker, QUEUE_NAME)

    assert sorted(number for number, _ in processed) == list(range(2500))
    assert min(at for _, at in processed) >= soon
    # The 300 not yet due: fetched by the worker and held (in flight on the delay queue).
    assert held == QueueDepth(QUEUE_NAME, ready=0, delayed=300, in_flight=0, dead=0)
    assert len(pending_message_ids(broker, QUEUE_NAME)) == 300


@pytest.mark.slow
def test_delayed_messages_held_through_a_lost_connection_still_go_out(
    brokers: BrokerFactory,
) -> None:
    """A worker whose delay-queue consumer loses Redis drops the delayed messages it held in
    memory (Dramatiq's consumer thread starts afresh); they stay fetched by this live instance
    in Redis, which maintenance never gives back. Its restarted consumer takes them back.

    Real time: the messages are released by the worker's own clock, after a reconnection."""
    server = urlsplit(REDIS_URL)
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 6379))
    try:
        broker = brokers(redis_url=server._replace(netloc=f"127.0.0.1:{proxy.port}").geturl())
        processed: list[int] = []

        @dramatiq.actor(broker=broker, queue_name=QUEUE_NAME, actor_name="record")
        def record(number: int) -> None:
            processed.append(number)

        direct = brokers()
        eta = current_millis() + 3000
        enqueue_batch(direct, [recorded(n, dq_name(QUEUE_NAME), eta=eta) for n in range(3)])

        def held() -> bool:  # fetched from the delay queue, waiting in the worker's memory
            return direct.client.llen(f"{direct.namespace}:{dq_name(QUEUE_NAME)}") == 0

        with worker_until(broker, held, seconds=10):
            assert held()
            proxy.cut()
            time.sleep(0.5)  # every consumer meets the lost connection
            proxy.restore()
            deadline = time.monotonic() + 20
            while len(processed) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        proxy.close()

    assert sorted(processed) == [0, 1, 2]
    assert queue_depth(direct, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_retry_that_cannot_reach_redis_is_enqueued_once_redis_answers(
    brokers: BrokerFactory,
) -> None:
    """An attempt fails while the worker's Redis connection is cut: its retry goes on the
    queue when Redis answers again, instead of being lost with the failed attempt's
    acknowledgement (the reminder would then wait for the producer's lost-message check).

    Real time: Redis is unreachable for a second, and the retry waits out its backoff."""
    server = urlsplit(REDIS_URL)
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 6379))
    try:
        broker = brokers(redis_url=server._replace(netloc=f"127.0.0.1:{proxy.port}").geturl())
        attempts: list[int] = []

        @dramatiq.actor(broker=broker, queue_name=QUEUE_NAME, actor_name="record")
        def record(number: int) -> None:
            attempts.append(number)
            if len(attempts) == 1:
                proxy.cut()  # the host loses Redis as its attempt fails
                threading.Timer(1.0, proxy.restore).start()
                raise RuntimeError("a transient failure")

        direct = brokers()
        enqueue_batch(direct, [recorded(5)])
        with worker_until(broker, lambda: len(attempts) >= 2, seconds=30):
            pass
    finally:
        proxy.close()

    assert attempts == [5, 5]
    assert in_flight_within(direct, 0) == 0
    assert queue_depth(direct, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)


# -- acknowledgements, sent in groups ----------------------------------------------------------


def fetch_all(broker: RedisBroker, count: int) -> tuple[Consumer, list[MessageProxy]]:
    """One consumer and ``count`` messages it fetched, none acked yet."""
    consumer = broker.consume(QUEUE_NAME, prefetch=count, timeout=100)
    fetched: list[MessageProxy] = []
    deadline = time.monotonic() + 5
    while len(fetched) < count and time.monotonic() < deadline:
        proxy = next(consumer)
        if proxy is not None:
            fetched.append(proxy)
    assert len(fetched) == count
    return consumer, fetched


def test_acks_from_many_threads_all_reach_redis(brokers: BrokerFactory) -> None:
    broker = brokers()
    enqueue_batch(broker, [message() for _ in range(400)])
    consumer, fetched = fetch_all(broker, 400)
    assert queue_depth(broker, QUEUE_NAME).in_flight == 400

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(consumer.ack, fetched))

    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)
    assert stored_keys(broker) == set()  # the worker's set of unacked ids is gone too


def test_acks_made_while_one_waits_on_redis_go_with_it(brokers: BrokerFactory) -> None:
    broker = brokers()
    enqueue_batch(broker, [message() for _ in range(5)])
    consumer, fetched = fetch_all(broker, 5)
    admin = redis.Redis.from_url(REDIS_URL)
    admin.client_pause(10_000, all=False)  # writes (every script call) wait; reads go on
    try:
        sender = threading.Thread(target=consumer.ack, args=(fetched[0],))
        sender.start()
        deadline = time.monotonic() + 5
        while not consumer._acks.sending and time.monotonic() < deadline:
            time.sleep(0.01)
        others = threading.Thread(target=lambda: [consumer.ack(p) for p in fetched[1:]])
        others.start()
        others.join(timeout=5)

        assert not others.is_alive(), "the other threads waited on Redis"
        assert sender.is_alive(), "the first acknowledgement did not wait on the paused Redis"
        assert queue_depth(broker, QUEUE_NAME).in_flight == 5  # nothing acked yet
    finally:
        admin.client_unpause()
        admin.close()
    sender.join(timeout=10)

    assert not sender.is_alive()
    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)


def test_acks_that_could_not_reach_redis_are_sent_with_the_next(
    brokers: BrokerFactory,
) -> None:
    server = urlsplit(REDIS_URL)
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 6379))
    try:
        through_proxy = brokers(
            redis_url=server._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
        )
        enqueue_batch(through_proxy, [message() for _ in range(3)])
        consumer, fetched = fetch_all(through_proxy, 3)

        proxy.cut()
        with pytest.raises(ConnectionClosed):  # Dramatiq retries the acknowledgement on this
            consumer.ack(fetched[0])
        proxy.restore()
        consumer.ack(fetched[1])
    finally:
        proxy.close()

    direct = brokers()
    assert queue_depth(direct, QUEUE_NAME).in_flight == 1  # only fetched[2], never acked
    assert pending_message_ids(direct, QUEUE_NAME) == {fetched[2].message_id}


def in_flight_within(broker: RedisBroker, expected: int, seconds: float = 5) -> int:
    """The queue's in-flight count once it is ``expected``, or when ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while (count := queue_depth(broker, QUEUE_NAME).in_flight) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return count


def test_lingering_acks_never_hold_up_a_worker_thread_and_all_reach_redis(
    brokers: BrokerFactory,
) -> None:
    broker = brokers(ack_linger_seconds=0.02)  # as the workers' broker
    enqueue_batch(broker, [message() for _ in range(400)])
    consumer, fetched = fetch_all(broker, 400)
    admin = redis.Redis.from_url(REDIS_URL)
    admin.client_pause(10_000, all=False)  # writes (every script call) wait; reads go on
    try:

        def ack_from_eight_threads() -> None:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(consumer.ack, fetched))

        acking = threading.Thread(target=ack_from_eight_threads, daemon=True)
        acking.start()
        acking.join(timeout=5)

        assert not acking.is_alive(), "a worker thread waited on Redis to acknowledge"
        assert queue_depth(broker, QUEUE_NAME).in_flight == 400  # none sent yet
    finally:
        admin.client_unpause()
        admin.close()

    assert in_flight_within(broker, 0) == 0
    assert stored_keys(broker) == set()


def test_closing_a_consumer_sends_its_lingering_acks_at_once(brokers: BrokerFactory) -> None:
    broker = brokers(ack_linger_seconds=60)  # nothing would go out on its own in this test
    enqueue_batch(broker, [message() for _ in range(3)])
    consumer, fetched = fetch_all(broker, 3)
    for proxy in fetched[:2]:
        consumer.ack(proxy)
    assert queue_depth(broker, QUEUE_NAME).in_flight == 3  # still lingering

    consumer.close()  # what Dramatiq's worker does as it stops

    assert queue_depth(broker, QUEUE_NAME).in_flight == 1
    assert pending_message_ids(broker, QUEUE_NAME) == {fetched[2].message_id}


def test_lingering_acks_cut_off_from_redis_are_sent_once_it_is_back(
    brokers: BrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_broker, "ACK_RETRY_SECONDS", 0.2)
    server = urlsplit(REDIS_URL)
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 6379))
    direct = brokers()
    try:
        through_proxy = brokers(
            redis_url=server._replace(netloc=f"127.0.0.1:{proxy.port}").geturl(),
            ack_linger_seconds=0.01,
        )
        enqueue_batch(through_proxy, [message() for _ in range(3)])
        consumer, fetched = fetch_all(through_proxy, 3)

        proxy.cut()
        consumer.ack(fetched[0])  # no error: the worker thread goes on
        consumer.ack(fetched[1])
        time.sleep(0.5)  # the sender tries, fails and waits to try again, twice over
        assert queue_depth(direct, QUEUE_NAME).in_flight == 3
        proxy.restore()

        assert in_flight_within(direct, 1) == 1  # only fetched[2], never acked
    finally:
        proxy.close()
    assert pending_message_ids(direct, QUEUE_NAME) == {fetched[2].message_id}


def test_a_stopping_worker_sends_its_lingering_acks_before_it_ends(
    brokers: BrokerFactory,
) -> None:
    """A Dramatiq worker whose acknowledgements would linger a minute: stopping it sends
    them, so nothing it processed is left in flight (to be redelivered after maintenance)."""
    broker = brokers(ack_linger_seconds=60)
    processed: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=QUEUE_NAME, actor_name="record")
    def record(number: int) -> None:
        processed.append(number)

    enqueue_batch(broker, [recorded(number) for number in range(300)])
    with worker_until(broker, lambda: len(processed) >= 300, seconds=30):
        lingering = queue_depth(broker, QUEUE_NAME).in_flight

    assert sorted(processed) == list(range(300))
    assert lingering > 0  # processed, not yet acknowledged: the linger holds them
    assert queue_depth(broker, QUEUE_NAME) == QueueDepth(QUEUE_NAME, 0, 0, 0, 0)
    assert stored_keys(broker) == set()
