"""What this service knows about how Dramatiq's Redis broker keeps its messages.

Dramatiq has no public API for the questions operators and the producer ask: "is this
occurrence's message still somewhere in Redis?", "what is dead-lettered?", "how deep is
each queue?". The answers depend on its key layout (Dramatiq 2.x, namespace ``ns``)::

    ns:<q>            list of broker ids, ready to fetch
    ns:<q>.msgs       hash broker id -> encoded message (ready and fetched-but-unacked)
    ns:<q>.DQ(.msgs)  the same for delayed messages (retries waiting out their backoff)
    ns:<q>.XQ         sorted set of dead broker ids, scored by time of death
    ns:<q>.XQ.msgs    hash broker id -> encoded dead message
    ns:__acks__.<broker instance>.<q>   set of ids a worker fetched and has not acked
    ns:__heartbeats__ sorted set of broker instances by last call

A stored body that does not decode to a message Dramatiq can process (`decode_message`)
would crash Dramatiq's consumer on every fetch. The consumer here moves such a body to
the dead-letter set instead (kept as is, listed as ``UndecodableMessage``), and every
reader here skips it.

All knowledge of those keys lives in this module; it is tested against a real Redis.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from queue import Empty
from typing import Any, TypeVar

import redis
from dramatiq import Message, Middleware, get_encoder
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff, current_millis, dq_name, q_name, xq_name
from dramatiq.errors import BrokerConnectionError, ConnectionClosed, DecodeError
from dramatiq.middleware import MiddlewareError

from shared.broker.reachability import LOST_CONNECTION, BrokerReachability
from shared.logs import get_logger

SCAN_COUNT = 1000
UNDECODABLE = "UndecodableMessage"  # the error type operators see for such a dead letter

log = get_logger("broker")


def _client(broker: RedisBroker) -> Any:
    # redis-py types its commands for sync and async clients alike; this one is sync.
    return broker.client


def _key(broker: RedisBroker, name: str) -> str:
    return f"{broker.namespace}:{name}"


def decode_message(data: bytes) -> Message[Any]:
    """The message a stored body encodes, if a worker can process it.

    Raises:
        DecodeError: ``data`` is not an encoded message (not JSON, a field missing, ``args``
            not a list), or a field has a type Dramatiq's worker cannot handle (``options``
            or ``kwargs`` not an object, no ``redis_message_id`` to acknowledge it by).
    """
    message: Message[Any] = Message.decode(data)
    shape = (
        isinstance(message.queue_name, str)
        and isinstance(message.actor_name, str)
        and isinstance(message.message_id, str)
        and isinstance(message.kwargs, dict)
        and isinstance(message.options, dict)
        and isinstance(message.options.get("redis_message_id"), str)
    )
    if not shape:
        raise DecodeError("Message fields have the wrong types.", data, TypeError())
    return message


def describe_decode_error(error: DecodeError) -> str:
    """One line on why a body did not decode (never the body: it may hold anything)."""
    cause = error.error
    detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    return f"{UNDECODABLE}: {detail}"[:300]


def _decoded(
    broker: RedisBroker, hash_key: str, undecodable: list[str]
) -> Iterator[tuple[str, Message[Any]]]:
    """The decodable messages of a hash; the ids of the others are added to ``undecodable``."""
    for raw_id, data in _client(broker).hscan_iter(hash_key, count=SCAN_COUNT):
        try:
            yield raw_id.decode(), decode_message(data)
        except DecodeError:
            undecodable.append(raw_id.decode())


def enqueue_batch(broker: RedisBroker, messages: Sequence[Message[Any]]) -> None:
    """Enqueue ``messages`` in one atomic round trip.

    Exactly what Dramatiq's enqueue script does per message (store the encoded message
    under a fresh broker id in ``<q>.msgs``, push the id on ``<q>``), done for the whole
    batch as one HSET and one RPUSH per queue inside MULTI/EXEC, so a worker never pops an
    id whose message is not stored yet. A delayed message is one whose queue is a delay
    queue (``<q>.DQ``) with an ``eta`` option, as ``RedisBroker.enqueue`` makes it. The
    broker's enqueue hooks run for each message as usual. The producer enqueues thousands
    per scan; a script call each would dominate it.
    """
    if not messages:
        return
    # Emitting a signal no middleware listens to still costs a call on each: skip those, and
    # build no Message copy when no hook would see it.
    emit_before = any(_overrides(m, "before_enqueue") for m in broker.middleware)
    emit_after = any(_overrides(m, "after_enqueue") for m in broker.middleware)
    encoder = get_encoder()
    encoded: dict[str, dict[str, bytes]] = {}  # by queue
    prepared = []
    # Random 128-bit broker ids, from one getrandom call (Dramatiq makes uuid4 strings; its
    # scripts and this module use them as opaque keys).
    randomness = os.urandom(16 * len(messages)).hex()
    for index, original in enumerate(messages):
        broker_id = randomness[32 * index : 32 * index + 32]
        # As Message.copy + Message.encode, without their per-call dataclass introspection.
        fields = {name: getattr(original, name) for name in _MESSAGE_FIELDS}
        fields["options"] = {**original.options, "redis_message_id": broker_id}
        if emit_before or emit_after:
            message: Message[Any] = Message(**fields)
            if emit_before:  # a hook may add options: encoded below, as the same dict
                broker.emit_before("enqueue", message, None)
            prepared.append(message)
        encoded.setdefault(original.queue_name, {})[broker_id] = encoder.encode(fields)
    with _client(broker).pipeline(transaction=True) as pipe:
        for queue_name, queue_messages in encoded.items():
            pipe.hset(_key(broker, f"{queue_name}.msgs"), mapping=queue_messages)
            pipe.rpush(_key(broker, queue_name), *queue_messages)
        pipe.execute()
    if emit_after:
        for message in prepared:
            broker.emit_after("enqueue", message, None)


_MESSAGE_FIELDS = tuple(field.name for field in dataclasses.fields(Message))

# The option naming a reminder's owner (the task's user), set by the producer.
OWNER = "owner"
# In a reminder message's options: the endpoint its task named when it was enqueued, so a
# worker can park it while that endpoint is full before opening a transaction (a hint: the
# delivery reads the task's endpoint again).
ENDPOINT = "endpoint"

_M = TypeVar("_M", Message[Any], MessageProxy)


def interleave_owners(messages: Sequence[_M]) -> list[_M]:
    """``messages`` in turns by owner: the first of each owner, then the second of each...

    Fair bursts (SPEC §4.9): when one owner has thousands of reminders due at the same
    second, another owner's reminder released with them goes near the front of the queue,
    not behind them all. Each owner's own messages keep their order; owners take turns in
    the order they first appear. Messages without an owner (enqueued by an operator's retry)
    form one group of their own. O(n).
    """
    groups: dict[Any, list[_M]] = {}
    for message in messages:
        groups.setdefault(message.options.get(OWNER), []).append(message)
    if len(groups) < 2:
        return list(messages)
    interleaved: list[_M] = []
    turns = list(groups.values())
    depth = 0
    while turns:  # each round takes the depth-th message of every owner that has one
        turns = [group for group in turns if len(group) > depth]
        interleaved.extend(group[depth] for group in turns)
        depth += 1
    return interleaved


def _overrides(middleware: Middleware, hook: str) -> bool:
    # An instance attribute counts too (a hook set on one middleware object).
    return hook in getattr(middleware, "__dict__", {}) or getattr(
        type(middleware), hook
    ) is not getattr(Middleware, hook)


class GroupAckRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, whose consumers acknowledge messages in groups (`AckGroup`).

    ``ack_linger_seconds`` > 0 (the workers' broker, `ACK_LINGER_SECONDS`): an
    acknowledgement waits up to that long for others to join it, and a thread of the
    broker sends each group; the worker thread goes on at once. 0: the acknowledging thread
    sends it (with whatever other threads add while it is on its way), and a connection
    error reaches the caller, as with Dramatiq's own consumer.

    A signal is emitted only to the middleware whose class overrides its hook: Dramatiq
    calls every middleware's hook for each of a message's signals (``process_message``,
    ``ack``, ...) though most are the base class's no-op, which cost the worker more than
    the hooks that do something. Errors are handled as Dramatiq does.
    """

    _listeners: tuple[tuple[Middleware, ...], dict[str, list[Middleware]]] = ((), {})

    def __init__(self, *, ack_linger_seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ack_linger_seconds = ack_linger_seconds
        self.reachability = BrokerReachability()
        self._ack_script = _client(self).register_script(_ACK_GROUP)
        self._ack_groups: dict[str, AckGroup] = {}
        self._ack_groups_lock = threading.Lock()

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _GroupAckConsumer

    def ack_group(self, queue_name: str) -> AckGroup:
        """The acknowledgements waiting for ``queue_name``'s consumers of this broker: one
        per queue, kept when a consumer is replaced (after a lost connection)."""
        with self._ack_groups_lock:
            group = self._ack_groups.get(queue_name)
            if group is None:
                group = self._ack_groups[queue_name] = AckGroup(self, queue_name)
            return group

    def _listening(self, hook: str) -> list[Middleware]:
        stack, by_hook = self._listeners
        if stack != tuple(self.middleware):  # added or removed since: start again
            stack, by_hook = tuple(self.middleware), {}
            self._listeners = (stack, by_hook)
        listening = by_hook.get(hook)
        if listening is None:
            listening = by_hook[hook] = [m for m in stack if _overrides(m, hook)]
        return listening

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "before_" + signal
        for middleware in self._listening(hook):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        hook = "after_" + signal
        for middleware in reversed(self._listening(hook)):
            try:
                getattr(middleware, hook)(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in %s of %r.", hook, middleware, exc_info=True
                )


# The workers' broker: how long an acknowledgement waits for others to share its round trip.
# At a few hundred messages per second and thread, 10 ms gathers a handful per group; an
# acknowledgement lost with a crash in that window only means a redelivery (a no-op).
ACK_LINGER_SECONDS = 0.01
ACK_GROUP_MAX = 1000  # broker ids per script call


class AckGroup:
    """The acknowledgements of one queue's consumers, sent to Redis in groups.

    Each group is one call of `_ACK_GROUP`, which does for every id what Dramatiq's ``ack``
    does for one (remove it from the instance's set of unacknowledged ids and its message
    from the queue's hash) and beats the instance's heartbeat, as every Dramatiq call does.

    With a linger (`GroupAckRedisBroker`), ``add`` only records the ids: a thread started
    at the first one sends what has gathered ``linger`` seconds after each wake-up, and
    after a lost connection tries again every `ACK_RETRY_SECONDS`, keeping the ids; a
    worker closing its consumers sends what waits (`flush`). Without one, the first thread
    to add ids sends them, with every id other threads add meanwhile, until none is left;
    the others go on.

    An acknowledgement may come with an enqueue that must reach Redis first (the retry of a
    failed attempt that could not be enqueued then: `enqueue_before_ack`): it is made before
    any acknowledgement added with or after it, and waits with them for Redis to answer.
    """

    def __init__(self, broker: GroupAckRedisBroker, queue_name: str) -> None:
        self._broker = broker
        self._queue_name = queue_name
        self._linger = broker.ack_linger_seconds
        self._lock = threading.Lock()
        self._waiting: list[str] = []
        self._enqueues: list[tuple[Message[Any], int | None]] = []
        self._sending = False
        self._wake = threading.Event()
        self._sender: threading.Thread | None = None
        namespace = broker.namespace
        self._keys = [
            f"{namespace}:__heartbeats__",
            f"{namespace}:__acks__.{broker.broker_id}.{queue_name}",
            f"{namespace}:{queue_name}.msgs",
        ]

    @property
    def sending(self) -> bool:
        """Whether a group is on its way to Redis."""
        return self._sending

    def add(
        self,
        broker_ids: Sequence[str],
        enqueues: Sequence[tuple[Message[Any], int | None]] = (),
    ) -> None:
        """Acknowledge ``broker_ids``: now (no linger), or within the linger; first enqueue
        each message of ``enqueues`` with its delay (milliseconds or None).

        Raises:
            ConnectionClosed: no linger, and Redis could not be reached; the ids stay
                waiting and go with the next ``add`` (Dramatiq's worker acknowledges again
                after a pause).
        """
        with self._lock:
            self._enqueues.extend(enqueues)
            self._waiting.extend(broker_ids)
            if self._linger:
                if self._sender is None:
                    self._sender = threading.Thread(
                        target=self._send_lingering, name=f"acks-{self._queue_name}", daemon=True
                    )
                    self._sender.start()
                self._wake.set()
                return
        self._send_waiting()

    def flush(self) -> None:
        """Send what waits now (the worker is stopping, or its consumer is replaced after a
        lost connection). What cannot reach Redis stays unacknowledged: the lingering
        sender tries again, and if the process ends first, maintenance gives it back once
        this instance stops beating."""
        deadline = time.monotonic() + ACK_RETRY_SECONDS
        while self._sending and time.monotonic() < deadline:  # another thread's group
            time.sleep(0.001)
        try:
            self._send_waiting()
        except (ConnectionClosed, redis.RedisError) as error:
            log.warning(
                "broker.acks_not_sent",
                queue=self._queue_name,
                count=len(self._waiting),
                error=str(error),
            )

    def _send_lingering(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self._linger)
            self._wake.clear()
            try:
                self._send_waiting()
            except Exception as error:  # kept waiting: tried again after a pause
                log.warning("broker.ack_failed", queue=self._queue_name, error=str(error))
                self._wake.set()
                time.sleep(ACK_RETRY_SECONDS)

    def _send_waiting(self) -> None:
        with self._lock:
            if self._sending:
                return
            self._sending = True
        group: list[str] = []
        enqueues: list[tuple[Message[Any], int | None]] = []
        try:
            while True:
                with self._lock:
                    enqueues, self._enqueues = self._enqueues, []
                    group = self._waiting[:ACK_GROUP_MAX]
                    del self._waiting[:ACK_GROUP_MAX]
                    if not group and not enqueues:
                        self._sending = False
                        return
                while enqueues:  # before the acknowledgements that came with or after them
                    self._enqueue(*enqueues[0])
                    del enqueues[0]
                if group:
                    self._send(group)
        except BaseException:
            with self._lock:
                self._waiting[:0] = group
                self._enqueues[:0] = enqueues
                self._sending = False
            raise

    def _enqueue(self, message: Message[Any], delay: int | None) -> None:
        sent_at = time.monotonic()
        try:
            self._broker.enqueue(message, delay=delay)
        except LOST_CONNECTION as error:
            self._broker.reachability.lost(error, sent_at)
            raise ConnectionClosed(error) from None

    def _send(self, broker_ids: list[str]) -> None:
        sent_at = time.monotonic()
        try:
            # A Script call loads the script again if Redis lost it (restarted).
            self._broker._ack_script(
                keys=self._keys, args=[current_millis(), self._broker.broker_id, *broker_ids]
            )
        except LOST_CONNECTION as error:
            self._broker.reachability.lost(error, sent_at)
            raise ConnectionClosed(error) from None


# Dramatiq's ``ack`` (dispatch.lua) for many broker ids at once, with its heartbeat.
# KEYS: the heartbeats set, the instance's unacknowledged ids of the queue, the queue's
# messages hash. ARGV: the time (ms), the broker instance's id, then the broker ids.
_ACK_GROUP = """
redis.call("zadd", KEYS[1], ARGV[1], ARGV[2])
for i = 3, #ARGV do
    if redis.call("srem", KEYS[2], ARGV[i]) > 0 then
        redis.call("hdel", KEYS[3], ARGV[i])
    end
end
"""


HAND_OVER_BATCH = 1000  # due delayed messages moved to their queue per round trip
ACK_RETRY_SECONDS = 5  # as Dramatiq's worker retries an acknowledgement after a lost connection


class BatchedDelayHandOver(Middleware):
    """Due delayed messages handed over to their queue in batches, not one by one.

    Dramatiq's worker keeps the delayed messages it fetched (``<q>.DQ``) in memory and, once
    one is due, enqueues it on its queue with one script call and acknowledges it with
    another, serially in the delay queue's consumer thread. When thousands share a remind
    time that thread makes two round trips per message while the worker threads hold the
    GIL, and the last of a burst waits seconds for its turn. This middleware gives each
    delay-queue consumer thread a hand-over that moves up to `HAND_OVER_BATCH` due messages
    in one MULTI/EXEC (`enqueue_batch`) and acknowledges them in one pipelined round trip,
    in the same order as Dramatiq: enqueued first, acknowledged after. The messages due
    together are interleaved by owner first (`interleave_owners`). A process killed in
    between leaves the delayed message unacknowledged; it is handed over again after
    recovery and the second message finds its occurrence sent (a no-op, never a second
    delivery). Installed through Dramatiq's ``consumer_thread_boot`` signal; a thread of
    another broker or consumer keeps Dramatiq's own hand-over.
    """

    def after_consumer_thread_boot(self, broker: Any, thread: Any) -> None:
        consumer_thread = thread
        if not isinstance(broker, GroupAckRedisBroker) or not consumer_thread.queue_name.endswith(
            ".DQ"
        ):
            return

        def hand_over_due() -> None:
            _hand_over_due(broker, consumer_thread)

        consumer_thread.handle_delayed_messages = hand_over_due


def _hand_over_due(broker: GroupAckRedisBroker, thread: Any) -> None:
    """Hand every due message of ``thread``'s in-memory delay queue over to its queue.

    All that are due are taken at once and interleaved by owner (`interleave_owners`), so
    a burst of one owner does not push another's reminder due with it to the back; they
    go over `HAND_OVER_BATCH` at a time, each batch acknowledged once it is enqueued.
    """
    delay_queue = thread.delay_queue
    now = current_millis()
    due: list[MessageProxy] = []
    while True:
        try:
            item = delay_queue.get_nowait()
        except Empty:
            break
        if item.priority > now:  # the earliest left is not due: put it back, stop
            delay_queue.put(item)
            delay_queue.task_done()
            break
        due.append(item.message)
    if not due:
        return
    taken = len(due)
    try:
        due = interleave_owners(due)
        for start in range(0, len(due), HAND_OVER_BATCH):
            batch = due[start : start + HAND_OVER_BATCH]
            ready = []
            for message in batch:
                copy = message.copy(queue_name=q_name(message.queue_name))
                del copy.options["eta"]
                ready.append(copy)
            sent_at = time.monotonic()
            try:
                enqueue_batch(broker, ready)
            except LOST_CONNECTION as error:
                # As Dramatiq: the consumer thread drops what it holds and reconnects; the
                # unacknowledged delayed messages come back from Redis.
                broker.reachability.lost(error, sent_at)
                raise ConnectionClosed(error) from None
            _acknowledge(broker, thread, batch)
    finally:
        for _ in range(taken):
            delay_queue.task_done()


def _acknowledge(broker: GroupAckRedisBroker, thread: Any, messages: list[MessageProxy]) -> None:
    """Acknowledge handed-over delayed messages, retrying through a lost connection as
    Dramatiq's ``post_process_message`` does (the messages are on their queue already)
    until the thread is told to stop."""
    consumer: _GroupAckConsumer = thread.consumer
    for message in messages:
        broker.emit_before("ack", message)
    pending = messages
    while True:
        try:
            consumer.ack_many(pending)
            break
        except BrokerConnectionError as error:
            log.warning("broker.ack_failed", queue=thread.queue_name, error=str(error))
            if not thread.running:  # stopping: left unacknowledged, handed over again later
                return
            pending = []  # the group waits in the consumer: send it again
            time.sleep(ACK_RETRY_SECONDS)
    for message in messages:
        broker.emit_after("ack", message)


# The attribute of a MessageProxy that holds what `enqueue_before_ack` asked for.
_ENQUEUE_FIRST = "_reminders_enqueue_before_ack"


def enqueue_before_ack(message: MessageProxy, copy: Message[Any], delay: int | None) -> None:
    """Have ``copy`` enqueued, delayed by ``delay`` milliseconds (or not), as ``message`` is
    acknowledged and before: the acknowledgement's sender (`AckGroup`) makes it, waiting
    for Redis as acknowledgements do. For an enqueue that a lost connection kept from Redis
    (a failed attempt's retry): the message stays unacknowledged until its retry is on the
    queue, so a crash meanwhile loses neither (maintenance gives the message back)."""
    setattr(message, _ENQUEUE_FIRST, (copy, delay))


class _GroupAckConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, with acknowledgements sent as a group (`AckGroup`), a full
    window refilled as soon as a thread frees room, and a delay queue's held messages taken
    back after a lost connection.

    Dramatiq acknowledges each processed message from the worker thread that processed it,
    one script call and one Redis round trip per message. Here the ids go to the broker's
    `AckGroup` for the queue, which sends several in one call. A message whose
    acknowledgement never reached Redis (the process was killed) is given back by
    maintenance and delivered again; delivery is idempotent in the database, so that costs
    a no-op, not a duplicate.

    A consumer holds at most ``prefetch`` messages fetched and not yet acknowledged (its
    window). Dramatiq's, when the window is full, sleeps in the back-off it uses for an empty
    queue (up to the worker timeout) before it looks again, so threads idle while it sleeps
    unless the window is much larger than the threads; here it waits for the next
    acknowledgement instead, and fetches at once. A small window then costs little
    throughput, and a slow or cut-off process holds little work
    (``REMINDERS_PREFETCH_PER_THREAD``).

    A delay queue's consumer keeps the delayed messages it fetched in its thread's memory
    until they are due. When its connection is lost Dramatiq's consumer thread drops them
    and starts afresh, but Redis still counts them fetched by this live instance, which
    maintenance never gives back: they would wait for the process to end. The consumer that
    takes over (`_reclaim`, before its first fetch) puts them back on the delay queue.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._acks = self.broker.ack_group(self.queue_name)
        self._set_aside_script = _client(self.broker).register_script(_SET_ASIDE)
        self._room = threading.Event()  # set when an acknowledgement frees room in the window
        # A delay queue's consumer starts with its thread's delayed messages dropped.
        self._reclaim_script = _client(self.broker).register_script(_RECLAIM)
        self._reclaimed = not self.queue_name.endswith(".DQ")

    def __next__(self) -> MessageProxy | None:
        """The next message, or None after an idle wait; as Dramatiq's, except for bodies
        that do not decode: each is moved to the dead-letter set and the batch goes on."""
        sent_at = time.monotonic()
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # its body vanished between LPOP and HMGET: as Dramatiq
                        continue
                    self.misses = 0
                    try:
                        message = decode_message(data)
                    except DecodeError as error:
                        self._set_aside(data, error)
                        continue
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                self._room.clear()
                if self.outstanding_message_count >= self.prefetch:
                    # The window is full: fetch as soon as a thread frees room in it.
                    self._room.wait(self.timeout / 1000)
                    return None
                sent_at = time.monotonic()
                if not self._reclaimed:
                    self._reclaim()
                self.message_cache = fetched = self.broker.do_fetch(
                    self.queue_name, self.prefetch - self.outstanding_message_count
                )
                self.broker.reachability.answered()
                if not fetched:
                    self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                    time.sleep(backoff_ms / 1000)
                    return None
        except LOST_CONNECTION as error:
            self.broker.reachability.lost(error, sent_at)
            raise ConnectionClosed(error) from None

    def requeue(self, messages: Any) -> None:
        """As Dramatiq's, raising a lost connection as ``ConnectionClosed``: Dramatiq's consumer
        thread expects that from a requeue while it closes after a lost connection, and any
        other error would end the thread, leaving the process without a consumer."""
        sent_at = time.monotonic()
        try:
            super().requeue(messages)
        except LOST_CONNECTION as error:
            self.broker.reachability.lost(error, sent_at)
            raise ConnectionClosed(error) from None

    def _set_aside(self, data: bytes, error: DecodeError) -> None:
        """Dead-letter the fetched, unacknowledged entry holding ``data``, as it is.

        The fetch returned bodies, not broker ids: the script finds the id among this
        consumer's unacknowledged ones by its body, and moves it in the same call.
        """
        broker: RedisBroker = self.broker
        namespace = broker.namespace
        xq = xq_name(q_name(self.queue_name))
        broker_id = self._set_aside_script(
            keys=[
                f"{namespace}:__acks__.{broker.broker_id}.{self.queue_name}",
                f"{namespace}:{self.queue_name}.msgs",
                f"{namespace}:{xq}",
                f"{namespace}:{xq}.msgs",
            ],
            args=[data, current_millis()],
        )
        log.error(
            "message.undecodable",
            queue=self.queue_name,
            broker_id=broker_id.decode() if broker_id else None,
            dead_lettered=bool(broker_id),
            error=describe_decode_error(error),
            size=len(data),
        )

    def ack(self, message: MessageProxy) -> None:
        self.ack_many([message])

    def ack_many(self, messages: Sequence[MessageProxy]) -> None:
        """Acknowledge ``messages`` in a group (see `AckGroup.add`); ``ack_many([])`` sends
        again what a connection error kept waiting."""
        enqueues = []
        for message in messages:
            self.queued_message_ids.discard(message.message_id)
            first = getattr(message, _ENQUEUE_FIRST, None)
            if first is not None:
                enqueues.append(first)
                setattr(message, _ENQUEUE_FIRST, None)  # handed over once
        self._room.set()
        self._acks.add([message.options["redis_message_id"] for message in messages], enqueues)

    def nack(self, message: MessageProxy) -> None:
        try:
            super().nack(message)
        finally:
            self._room.set()

    def _reclaim(self) -> None:
        """Put back on this delay queue every message this instance fetched from it: none
        is held in memory any more (see the class). Raises what the script call raises."""
        broker: RedisBroker = self.broker
        namespace = broker.namespace
        count = self._reclaim_script(
            keys=[
                f"{namespace}:__acks__.{broker.broker_id}.{self.queue_name}",
                f"{namespace}:{self.queue_name}",
                f"{namespace}:{self.queue_name}.msgs",
            ]
        )
        self._reclaimed = True
        if count:
            log.info("broker.delayed_reclaimed", queue=self.queue_name, count=count)

    def close(self) -> None:
        """Send the acknowledgements still waiting (the worker is stopping, or this consumer
        is replaced after a lost connection)."""
        self._acks.flush()


# Dramatiq's requeue (dispatch.lua) of every id of a consumer's set of fetched, unacknowledged
# ids. KEYS: that set, the queue's list, the queue's messages hash. Returns how many went back.
_RECLAIM = """
local ids = redis.call("smembers", KEYS[1])
local count = 0
for _, broker_id in ipairs(ids) do
    if redis.call("hexists", KEYS[3], broker_id) > 0 then
        redis.call("rpush", KEYS[2], broker_id)
        count = count + 1
    end
end
redis.call("del", KEYS[1])
return count
"""


# Finds the entry of an undecodable body among a consumer's fetched, unacknowledged ids and
# moves it to the dead-letter set, as Dramatiq's nack does. KEYS: the consumer's acks set,
# the queue's messages hash, the dead-letter set and its hash. ARGV: the body, the time (ms).
# Returns the broker id, or nil if no such entry is held any more.
_SET_ASIDE = """
for _, broker_id in ipairs(redis.call("smembers", KEYS[1])) do
    if redis.call("hget", KEYS[2], broker_id) == ARGV[1] then
        redis.call("srem", KEYS[1], broker_id)
        redis.call("hdel", KEYS[2], broker_id)
        redis.call("zadd", KEYS[3], ARGV[2], broker_id)
        redis.call("hset", KEYS[4], broker_id, ARGV[1])
        return broker_id
    end
end
return false
"""


def pending_message_ids(broker: RedisBroker, queue_name: str) -> set[str]:
    """Message IDs the broker still holds for ``queue_name``: ready, in flight or delayed.

    A message fetched by a worker that then died stays here until `run_maintenance` gives
    it back, so it counts as held, not lost. Undecodable entries (a worker dead-letters
    them when it fetches them) are skipped and logged as a count.
    """
    ids: set[str] = set()
    undecodable: list[str] = []
    for name in (queue_name, dq_name(queue_name)):
        ids.update(
            message.message_id
            for _, message in _decoded(broker, _key(broker, f"{name}.msgs"), undecodable)
        )
    if undecodable:
        log.warning(
            "broker.undecodable_skipped",
            queue=queue_name,
            count=len(undecodable),
            broker_ids=undecodable[:10],
        )
    return ids


def run_maintenance(
    broker: RedisBroker, *queue_names: str, clock: Callable[[], int] = current_millis
) -> None:
    """Give back messages held by dead workers and expire old dead letters, now.

    Dramatiq does this only on a random 0.1% of broker calls, which can leave a SIGKILLed
    worker's messages stranded for many minutes; every worker process calls this each
    second (`shared.broker.heartbeat.Heartbeat`), and the producer on every scan. One call
    of Dramatiq's ``dispatch`` script with maintenance on per queue of ``queue_names`` and
    per delay queue, in one round trip; as every Dramatiq call, it also stamps ``broker``'s
    own heartbeat. ``clock`` (milliseconds since the epoch) is the time the heartbeats and
    dead letters' ages are judged at, and this instance stamped with; Dramatiq stamps both
    with the same clock.

    Raises:
        redis.RedisError: Redis did not answer (a lost connection among others).
    """
    dispatch = broker.scripts["dispatch"]
    now_ms = clock()
    with _client(broker).pipeline(transaction=False) as pipe:
        for queue_name in queue_names:
            for name in (queue_name, dq_name(queue_name)):
                dispatch(
                    keys=[broker.namespace],
                    args=[
                        "qsize",
                        now_ms,
                        name,
                        broker.broker_id,
                        broker.heartbeat_timeout,
                        broker.dead_message_ttl,
                        1,  # do maintenance
                        broker._max_unpack_size(),
                    ],
                    client=pipe,
                )
        pipe.execute()


@dataclass(frozen=True)
class DeadLetter:
    """A dead-lettered message as the broker keeps it.

    ``message`` is None for a body that does not decode (``decode_error`` says why).
    """

    broker_id: str
    message: Message[Any] | None
    failed_at_ms: int
    decode_error: str | None = None

    @property
    def undecodable(self) -> bool:
        return self.message is None

    @property
    def message_id(self) -> str | None:
        return self.message.message_id if self.message else None

    @property
    def traceback(self) -> str | None:
        value = self.message.options.get("traceback") if self.message else None
        return str(value) if value else None


def _dead_letter(broker_id: str, blob: bytes, score: float) -> DeadLetter:
    try:
        return DeadLetter(broker_id, decode_message(blob), int(score))
    except DecodeError as error:
        return DeadLetter(broker_id, None, int(score), describe_decode_error(error))


def dead_letters(broker: RedisBroker, queue_name: str) -> list[DeadLetter]:
    """Every dead letter of ``queue_name``, newest first."""
    xq = xq_name(queue_name)
    scored: list[tuple[bytes, float]] = _client(broker).zrevrange(
        _key(broker, xq), 0, -1, withscores=True
    )
    if not scored:
        return []
    ids = [member.decode() for member, _ in scored]
    blobs = _client(broker).hmget(_key(broker, f"{xq}.msgs"), ids)
    return [
        _dead_letter(broker_id, blob, score)
        for (broker_id, (_, score), blob) in zip(ids, scored, blobs, strict=True)
        if blob is not None
    ]


def dead_message_ids(broker: RedisBroker, queue_name: str) -> set[str]:
    """Message IDs of the decodable dead letters of ``queue_name``."""
    return {
        letter.message_id
        for letter in dead_letters(broker, queue_name)
        if letter.message_id is not None
    }


def remove_dead_letter(broker: RedisBroker, queue_name: str, broker_id: str) -> bool:
    """Delete one dead letter; False if it was already gone."""
    xq = xq_name(queue_name)
    with _client(broker).pipeline() as pipe:
        pipe.zrem(_key(broker, xq), broker_id)
        pipe.hdel(_key(broker, f"{xq}.msgs"), broker_id)
        removed, _ = pipe.execute()
    return bool(removed)


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    ready: int
    delayed: int
    in_flight: int
    dead: int


def queue_depth(broker: RedisBroker, queue_name: str) -> QueueDepth:
    """How many messages of ``queue_name`` are ready, delayed, fetched-unacked and dead."""
    client = _client(broker)
    ready = int(client.llen(_key(broker, queue_name)))
    held = int(client.hlen(_key(broker, f"{queue_name}.msgs")))
    delayed = int(client.hlen(_key(broker, f"{dq_name(queue_name)}.msgs")))
    dead = int(client.zcard(_key(broker, xq_name(queue_name))))
    return QueueDepth(
        queue=queue_name, ready=ready, delayed=delayed, in_flight=max(held - ready, 0), dead=dead
    )
