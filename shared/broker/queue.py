"""The message queue: the Dramatiq Redis broker and the reminder message, built the same way
by every process that sends or consumes.

A reminder message carries the occurrence (task id and due date) and the occurrence's
deterministic message ID. Dramatiq's ``send_with_options`` cannot set a message ID, so
messages are built here and handed to ``broker.enqueue``. No broker deduplicates: the
database does (see ``workers.delivery``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import CurrentMessage, Retries, TimeLimit
from sqlalchemy import Engine, update

from shared.broker.connection import redis_client, redis_options
from shared.broker.heartbeat import Heartbeat
from shared.broker.reachability import LOST_CONNECTION
from shared.broker.redis_broker import (
    ENDPOINT,
    OWNER,
    BatchedDelayHandOver,
    GroupAckRedisBroker,
    enqueue_batch,
    enqueue_before_ack,
    interleave_owners,
)
from shared.config import Settings
from shared.logs import get_logger
from shared.store.db import database_unreachable, utcnow
from shared.store.models import Reminder

log = get_logger("queue")

QUEUE_NAME = "reminders"
SCAN_QUEUE_NAME = "reminders.scan"
SEND_REMINDER = "send_reminder"
SCAN_DUE_TASKS = "scan_due_tasks"


class OutageAwareRetries(Retries):
    """Dramatiq's Retries, except for an attempt that failed because the database is down,
    and a retry that cannot reach Redis.

    An attempt that met a database outage says nothing about the reminder, so it is put
    back on the queue after ``min_backoff`` without counting against ``max_retries``; the
    worker's ``workers.outage.DatabaseGate`` meanwhile holds every message until the
    database answers. Every other failure is counted and backed off as Dramatiq does.

    The retry is enqueued before the attempt's message is acknowledged. Dramatiq's Retries
    lets a lost Redis connection escape from that enqueue (logged, nothing more), and the
    message is then acknowledged once Redis answers: the retry is lost, and the reminder
    waits for the producer's lost-message check (``REMINDERS_REQUEUE_AFTER``). Here such a
    retry goes with the acknowledgement instead (`enqueue_before_ack`): both wait for Redis
    to answer, the retry first; the worker thread goes on (a host cut off from both its
    database and Redis retries its attempts in flight once it is back).
    """

    def after_process_message(
        self,
        broker: Any,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        retrying = _RetryEnqueue(broker, message)
        if not database_unreachable(exception):
            super().after_process_message(retrying, message, result=result, exception=exception)
            return
        message.options["requeue_timestamp"] = int(time.time() * 1000)
        retrying.enqueue(message, delay=self.min_backoff)


_REDIS_UNREACHABLE: tuple[type[Exception], ...] = (*LOST_CONNECTION, BrokerConnectionError)


class _RetryEnqueue:
    """``broker`` whose ``enqueue`` of the retry of ``attempt`` is left to the attempt's
    acknowledgement when Redis cannot be reached (see `OutageAwareRetries`); everything
    else is the broker's."""

    def __init__(self, broker: Any, attempt: MessageProxy) -> None:
        self._broker = broker
        self._attempt = attempt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        if not broker_down(self._broker):  # else no connection attempt to wait out first
            try:
                return self._broker.enqueue(message, delay=delay)
            except _REDIS_UNREACHABLE:
                pass
        enqueue_before_ack(self._attempt, message.copy(), delay)
        return None


def broker_down(broker: Any) -> bool:
    """Whether ``broker``'s consumers have lost Redis and not reached it again since."""
    reachability = getattr(broker, "reachability", None)
    return reachability is not None and reachability.down


def make_broker(
    settings: Settings, client: redis.Redis | None = None, *, ack_linger_seconds: float = 0.0
) -> RedisBroker:
    """A Redis broker with retries, backoff and dead-letter TTL taken from ``settings``.

    Of Dramatiq's default middleware only what the service uses: TimeLimit (a hung delivery
    is interrupted) and Retries (as `OutageAwareRetries`). AgeLimit, ShutdownNotifications,
    Callbacks and Pipelines act only on options no actor or message here sets (``max_age``,
    ``notify_shutdown``, ``on_success``/``on_failure``, ``pipe_target``), yet each ran its
    hooks on every message. `BatchedDelayHandOver` moves due delayed messages to their
    queue in batches (Dramatiq's worker does it one round trip at a time). `Heartbeat`
    beats a worker process's heartbeat every second, however busy its threads, and gives
    back what silent processes held (Dramatiq leaves both to chance). The broker's
    client is `redis_client`'s for ``REDIS_URL`` (a Sentinel set's follows its primary; a
    silent server is given up after ``REMINDERS_PEER_TIMEOUT``);
    passing ``client`` (e.g. a fakeredis client) replaces it; ``ack_linger_seconds`` lets
    acknowledgements gather before they are sent (`GroupAckRedisBroker`).
    """
    retries = OutageAwareRetries(
        max_retries=settings.max_retries,
        min_backoff=settings.min_backoff_ms,
        max_backoff=settings.max_backoff_ms,
    )
    broker = GroupAckRedisBroker(
        client=client
        or redis_client(
            settings.redis_url, **redis_options(settings.redis_url, settings.peer_timeout_seconds)
        ),
        namespace=settings.redis_namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        dead_message_ttl=settings.dead_letter_ttl_seconds * 1000,
        middleware=[TimeLimit(), retries],
        ack_linger_seconds=ack_linger_seconds,
    )
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(BatchedDelayHandOver())
    broker.add_middleware(Heartbeat())
    return broker


def reminder_message(
    task_id: uuid.UUID,
    due_at: datetime,
    message_id: uuid.UUID,
    eta: datetime | None = None,
    owner: uuid.UUID | None = None,
    endpoint: uuid.UUID | None = None,
) -> Message:
    """The message that asks a worker to deliver one occurrence.

    With ``eta`` it is a delayed message, as ``RedisBroker.enqueue`` with a delay makes one
    (on the delay queue, ``eta`` in epoch milliseconds): a worker holds it until then.
    ``owner`` (the task's owner) goes in the `OWNER` option: messages released together are
    interleaved by it (`interleave_owners`). ``endpoint`` (the task's, if it names one) goes
    in the `ENDPOINT` option.
    """
    options: dict[str, Any] = {} if owner is None else {OWNER: str(owner)}
    if endpoint is not None:
        options[ENDPOINT] = str(endpoint)
    if eta is None:
        return Message(
            queue_name=QUEUE_NAME,
            actor_name=SEND_REMINDER,
            args=(str(task_id), due_at.isoformat()),
            kwargs={},
            options=options,
            message_id=str(message_id),
        )
    options["eta"] = round(eta.timestamp() * 1000)
    return Message(
        queue_name=dq_name(QUEUE_NAME),
        actor_name=SEND_REMINDER,
        args=(str(task_id), due_at.isoformat()),
        kwargs={},
        options=options,
        message_id=str(message_id),
    )


@dataclass(frozen=True)
class SoonDue:
    """A pending reminder to enqueue: just planned by a client (created, rescheduled,
    reopened), or claimed by the producer."""

    task_id: uuid.UUID
    due_at: datetime
    message_id: uuid.UUID
    remind_at: datetime
    owner: uuid.UUID | None = None  # the task's owner, when known
    endpoint: uuid.UUID | None = None  # the task's endpoint, when known and it names one


def message_for(reminder: SoonDue, now: datetime) -> Message:
    """The message of a pending reminder: at once if it is due, else delayed to its time."""
    eta = reminder.remind_at if reminder.remind_at > now else None
    return reminder_message(
        reminder.task_id,
        reminder.due_at,
        reminder.message_id,
        eta=eta,
        owner=reminder.owner,
        endpoint=reminder.endpoint,
    )


def enqueue_if_due_soon(
    engine: Engine, broker: RedisBroker, reminders: Sequence[SoonDue], lookahead_seconds: int
) -> int:
    """Enqueue just-planned reminders now if the next scan might come after their remind time.

    The producer only looks ``lookahead_seconds`` ahead on each scan, so a reminder planned
    inside that window is enqueued here (delayed to its remind time) and its row marked
    ``queued``. If Redis cannot be reached the rows stay ``waiting`` and the next scan takes
    them: the client's request succeeds either way. Returns how many were enqueued.
    """
    now = utcnow()
    horizon = now + timedelta(seconds=lookahead_seconds)
    soon = [reminder for reminder in reminders if reminder.remind_at <= horizon]
    if not soon:
        return 0
    messages = interleave_owners([message_for(reminder, now) for reminder in soon])
    try:
        enqueue_batch(broker, messages)
    except redis.RedisError as exc:
        log.warning(
            "reminder.enqueue_deferred",
            message_ids=[str(reminder.message_id) for reminder in soon],
            error_type=type(exc).__name__,
        )
        return 0
    # A message whose row is still ``waiting`` would be enqueued again by the next scan;
    # harmless (the delivery suppresses it), but this spares it.
    with engine.begin() as connection:
        for reminder in soon:
            connection.execute(
                update(Reminder)
                .where(
                    Reminder.message_id == reminder.message_id,
                    Reminder.state == "waiting",
                    Reminder.remind_at == reminder.remind_at,
                )
                .values(state="queued", updated_at=now)
            )
    return len(soon)


def ping(broker: RedisBroker) -> None:
    """Raises: redis.RedisError when the broker's server does not answer."""
    broker.client.ping()
