"""The message queue: the Dramatiq Redis broker and the reminder message, built the same way
by every process that sends or consumes.

A reminder message carries the occurrence (task id and due date) and the occurrence's
deterministic message ID. Dramatiq's ``send_with_options`` cannot set a message ID, so
messages are built here and handed to ``broker.enqueue``. No broker deduplicates: the
database does (see ``workers.delivery``).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Retries

from shared.config import Settings
from shared.redis_broker import GroupAckRedisBroker

QUEUE_NAME = "reminders"
SCAN_QUEUE_NAME = "reminders.scan"
SEND_REMINDER = "send_reminder"
SCAN_DUE_TASKS = "scan_due_tasks"


def make_broker(settings: Settings, client: redis.Redis | None = None) -> RedisBroker:
    """A Redis broker with retries, backoff and dead-letter TTL taken from ``settings``.

    Passing ``client`` (e.g. a fakeredis client) replaces the connection to ``REDIS_URL``.
    """
    broker = GroupAckRedisBroker(
        url=None if client else settings.redis_url,
        client=client,
        namespace=settings.redis_namespace,
        heartbeat_timeout=settings.heartbeat_timeout_ms,
        dead_message_ttl=settings.dead_letter_ttl_seconds * 1000,
    )
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.max_retries = settings.max_retries
            middleware.min_backoff = settings.min_backoff_ms
            middleware.max_backoff = settings.max_backoff_ms
    broker.add_middleware(CurrentMessage())
    return broker


def reminder_message(task_id: uuid.UUID, due_at: datetime, message_id: uuid.UUID) -> Message:
    """The message that asks a worker to deliver one occurrence."""
    return Message(
        queue_name=QUEUE_NAME,
        actor_name=SEND_REMINDER,
        args=(str(task_id), due_at.isoformat()),
        kwargs={},
        options={},
        message_id=str(message_id),
    )


def ping(broker: RedisBroker) -> None:
    """Raises: redis.RedisError when the broker's server does not answer."""
    broker.client.ping()
