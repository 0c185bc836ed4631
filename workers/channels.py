"""Delivery channels: where a reminder goes once a worker decides to send it.

``log`` (the default) writes a structured ``reminder.sent`` event; like the webhook it is
at-least-once (a crash between delivery and commit repeats it with the same message ID).
``webhook`` POSTs the reminder as JSON with the occurrence's message ID as
``Idempotency-Key`` and an HMAC signature (``X-Reminders-Signature: t=<unix>,v1=<hex>``
over ``"<t>.<body>"``), so a receiver can check where it came from and drop repeats.

A channel raises `TransientDeliveryError` for what may succeed later (5xx, 408, 429,
timeouts, connection errors) and `PermanentDeliveryError` for what will not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx

from shared.config import Settings
from shared.logs import get_logger
from shared.rules import webhook_status_is_transient

log = get_logger("delivery")


class DeliveryError(Exception):
    """The channel did not accept the reminder."""


class TransientDeliveryError(DeliveryError):
    """Worth retrying: the receiver was unavailable, slow or rate limiting."""


class PermanentDeliveryError(DeliveryError):
    """Not worth retrying: the receiver rejected the reminder or the message is malformed."""


@dataclass(frozen=True)
class ReminderPayload:
    message_id: str
    task_id: str
    owner: str
    title: str
    due_at: datetime
    remind_at: datetime
    sent_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "task_id": self.task_id,
            "owner": self.owner,
            "title": self.title,
            "due_at": _rfc3339(self.due_at),
            "remind_at": _rfc3339(self.remind_at),
            "sent_at": _rfc3339(self.sent_at),
        }


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class Channel(Protocol):
    name: str
    # True when delivering *is* writing the ``reminder.sent`` log event (the log channel),
    # so the actor does not write a second one after the commit.
    announces_delivery: bool

    def deliver(self, reminder: ReminderPayload) -> None:
        """Hand the reminder over. Raises: TransientDeliveryError, PermanentDeliveryError."""


class LogChannel:
    """Writes the reminder as a ``reminder.sent`` log event (identifiers only, never the title)."""

    name = "log"
    announces_delivery = True

    def deliver(self, reminder: ReminderPayload) -> None:
        log.info(
            "reminder.sent",
            channel=self.name,
            message_id=reminder.message_id,
            task_id=reminder.task_id,
            due_at=_rfc3339(reminder.due_at),
            lateness_ms=round((reminder.sent_at - reminder.remind_at).total_seconds() * 1000),
        )


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Reminders-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookChannel:
    """POSTs each reminder to one URL, signed, with a bounded timeout."""

    name = "webhook"
    announces_delivery = False

    def __init__(self, url: str, secret: str, timeout_seconds: float) -> None:
        self.url = url
        self._secret = secret
        # One client per process: httpx clients are thread-safe and pool connections.
        self._client = httpx.Client(timeout=timeout_seconds, follow_redirects=False)

    def deliver(self, reminder: ReminderPayload) -> None:
        body = json.dumps(reminder.as_json(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": reminder.message_id,
            "X-Reminders-Signature": sign(self._secret, int(time.time()), body),
        }
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientDeliveryError(f"webhook timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientDeliveryError(f"webhook unreachable ({type(exc).__name__})") from None
        if response.is_success:
            return
        if webhook_status_is_transient(response.status_code):
            raise TransientDeliveryError(f"webhook answered {response.status_code}")
        raise PermanentDeliveryError(f"webhook answered {response.status_code}")


def make_channel(settings: Settings) -> Channel:
    if settings.webhook_url:
        return WebhookChannel(
            settings.webhook_url, settings.webhook_secret, settings.webhook_timeout_seconds
        )
    return LogChannel()
