"""Delivery channels: where a reminder goes once a worker decides to send it.

``log`` (the default) writes a structured ``reminder.sent`` event; like the webhook it is
at-least-once (a crash between delivery and commit repeats it with the same message ID).
``webhook`` POSTs the reminder's body with the occurrence's message ID as
``Idempotency-Key`` and ``webhook-id``, signed with ``REMINDERS_WEBHOOK_SECRET`` in both
schemes of `shared.delivery.signing` (Standard Webhooks' ``webhook-signature`` and the Stripe-style
``X-Reminders-Signature``), so a receiver can check with an off-the-shelf library where it
came from, and drop repeats. The body is the same bytes on every attempt (`reminder_body`;
nothing per attempt inside it): only the signatures' timestamp changes, so a receiver
applying Idempotency-Key semantics (same key, same body) accepts a repeat.

A channel raises `TransientDeliveryError` for what may succeed later (5xx, 408, 429,
timeouts, connection errors) and `PermanentDeliveryError` for what will not.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from dramatiq import Message, Retry

from shared.broker.gate import WEBHOOK_RECEIVER, Limits, webhook_limits
from shared.config import Settings
from shared.delivery.webhooks import Answer, WebhookSender, signed_headers
from shared.logs import get_logger
from workers.admission import Admissions

log = get_logger("delivery")


class DeliveryError(Exception):
    """The channel did not accept the reminder."""


class TransientDeliveryError(DeliveryError, Retry):
    """Worth retrying: the receiver was unavailable, slow or rate limiting.

    A `dramatiq.Retry`, so Dramatiq retries it with the usual backoff without logging it as
    an unhandled exception with a traceback: it is expected, and ``RecordFailedAttempts``
    logs it as one ``reminder.retrying`` or ``reminder.dead_lettered`` event. It carries
    no delay of its own: the Retries middleware's backoff applies.
    """


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying: the receiver rejected the reminder or the message is malformed."""


@dataclass(frozen=True)
class ReminderPayload:
    """One reminder as handed to a channel.

    ``body`` is what a webhook receives, byte for byte (empty for a channel that sends no
    body); ``sent_at`` is this attempt's time, which is deliberately not in the body.
    """

    message_id: str
    task_id: str
    due_at: datetime
    remind_at: datetime
    sent_at: datetime
    body: bytes
    # The broker's message it came in, when a worker delivers it: what a receiver's limits
    # park or delay (`workers.admission`). None: delivered without limits (a direct call).
    message: Message[Any] | None = field(default=None, compare=False)


def reminder_body(
    *,
    message_id: str,
    task_id: str,
    owner: str,
    title: str,
    due_at: datetime,
    remind_at: datetime,
    time_zone: str = "UTC",
    offset_seconds: int | None = None,
) -> bytes:
    """The webhook body of one reminder: compact JSON, fixed key order, UTC whole seconds;
    ``local_due_at`` is the occurrence with its offset in the task's zone, ``offset_seconds``
    the reminder's (null for a snooze).

    A function of the occurrence alone, so every attempt and every redelivery sends the same
    bytes (SPEC §4.8). The delivery keeps the body of a failed attempt on the reminder row,
    so a title edited between attempts does not change what the retry sends.
    """
    document: dict[str, Any] = {
        "type": "reminder",
        "message_id": message_id,
        "task_id": task_id,
        "owner": owner,
        "title": title,
        "due_at": _rfc3339(due_at),
        "local_due_at": due_at.astimezone(ZoneInfo(time_zone)).isoformat(),
        "remind_at": _rfc3339(remind_at),
        "offset_seconds": offset_seconds,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Channel(Protocol):
    name: str
    # True when delivering *is* writing the ``reminder.sent`` log event (the log channel),
    # so the actor does not write a second one after the commit.
    announces_delivery: bool
    # False when the channel never reads ``ReminderPayload.body`` (the log channel): the
    # body is then not built.
    sends_body: bool

    def deliver(self, reminder: ReminderPayload) -> None:
        """Hand the reminder over. Raises: TransientDeliveryError, PermanentDeliveryError."""


class LogChannel:
    """Writes the reminder as a ``reminder.sent`` log event (identifiers only, never the title)."""

    name = "log"
    announces_delivery = True
    sends_body = False

    def deliver(self, reminder: ReminderPayload) -> None:
        log.info(
            "reminder.sent",
            channel=self.name,
            message_id=reminder.message_id,
            task_id=reminder.task_id,
            due_at=_rfc3339(reminder.due_at),
            lateness_ms=round((reminder.sent_at - reminder.remind_at).total_seconds() * 1000),
        )


class WebhookChannel:
    """POSTs each reminder to the deployment's URL, signed; the whole call ends within the
    timeout. The URL is the operator's: no address guard (`shared.delivery.webhooks`).

    With ``REMINDERS_WEBHOOK_MAX_CONCURRENCY`` or ``REMINDERS_WEBHOOK_MAX_PER_SECOND`` set,
    its requests go through the gate as an endpoint's do (receiver ``webhook``)."""

    name = "webhook"
    announces_delivery = False
    sends_body = True

    def __init__(
        self,
        url: str,
        secret: str,
        timeout_seconds: float,
        limits: Limits | None = None,
        admissions: Admissions | None = None,
    ) -> None:
        self.url = url
        self._secret = secret
        # One sender per process: its client is thread-safe and pools connections.
        self._sender = WebhookSender(timeout_seconds)
        self.limits = limits if limits is not None and limits.limited else None
        self.admissions = admissions

    def deliver(self, reminder: ReminderPayload) -> None:
        headers = signed_headers(
            reminder.message_id, int(time.time()), reminder.body, [self._secret]
        )
        if self.limits is None or self.admissions is None or reminder.message is None:
            raise_for_answer(self._sender.post(self.url, reminder.body, headers), "webhook")
            return
        with self.admissions.request(WEBHOOK_RECEIVER, self.limits, reminder.message) as request:
            request.answer = self._sender.post(self.url, reminder.body, headers)
        raise_for_answer(request.answer, "webhook")


def raise_for_answer(answer: Answer, receiver: str) -> None:
    """Nothing for a 2xx; else the error, transient or permanent, named for ``receiver``."""
    if answer.ok:
        return
    if answer.transient:
        # The back-off a receiver asked for (Retry-After) replaces the exponential one.
        wait = answer.retry_after_seconds
        raise TransientDeliveryError(
            f"{receiver} {answer.error}", delay=math.ceil(wait * 1000) if wait else None
        )
    raise PermanentDeliveryError(f"{receiver} {answer.error}")


def make_channel(settings: Settings, admissions: Admissions | None = None) -> Channel:
    if settings.webhook_url:
        return WebhookChannel(
            settings.webhook_url,
            settings.webhook_secret,
            settings.webhook_timeout_seconds,
            webhook_limits(settings),
            admissions,
        )
    return LogChannel()
