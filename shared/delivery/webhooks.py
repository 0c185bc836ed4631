"""Sending one signed webhook request, for the deployment channel, endpoints and pings.

`WebhookSender.post` makes one ``POST`` within a deadline (`shared.delivery.webhook_transport`) and
never raises for what the network or the receiver did: it answers an `Answer` — the status
code, how long it took, and for a failure an error that says whether a later attempt may
succeed (5xx, 408, 429, timeouts, connection errors) or not (other statuses, an address the
guard refused, a URL whose host is no host name or address). A sender for users' endpoints
checks every address it connects to (`shared.delivery.address_guard`); the deployment's own
channel, configured by its operator, is not.
"""

from __future__ import annotations

import email.utils
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from shared.config import Settings
from shared.delivery.address_guard import Resolver, system_resolver, valid_host
from shared.delivery.signing import signature_headers
from shared.delivery.webhook_transport import (
    AddressGuard,
    Deadline,
    deadline_client,
    refused_reason,
)
from shared.planning.rules import webhook_status_is_transient

# The answer's body means nothing to delivery; more than this of it is not read.
MAX_ANSWER_BYTES = 64 * 1024
INVALID_URL = "URL has an invalid host: not a host name or an IP address"
RETRY_AFTER_CAP_SECONDS = 3600  # a receiver's Retry-After is honoured up to an hour


@dataclass(frozen=True)
class Answer:
    """What one request got: a 2xx (``ok``), or an ``error`` to record and report."""

    status_code: int | None
    duration_ms: int
    error: str | None = None
    transient: bool = False
    # A 429's or 503's Retry-After: how long the receiver asked to be left alone.
    retry_after_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def signed_headers(
    message_id: str, timestamp: int, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """Every header of a webhook request: JSON, ``Idempotency-Key`` and the signatures."""
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": message_id,
        **signature_headers(message_id, timestamp, body, secrets),
    }


class WebhookSender:
    """POSTs within ``timeout_seconds`` for the whole call; thread-safe, pooled connections."""

    def __init__(
        self,
        timeout_seconds: float,
        guard: AddressGuard | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        """``client`` replaces the network (a test's `httpx.MockTransport` that must send
        nothing anywhere); by default a pooled client with the deadline and ``guard``."""
        self.timeout_seconds = timeout_seconds
        self._deadline = Deadline()
        self._client = client or deadline_client(self._deadline, timeout_seconds, guard=guard)

    @classmethod
    def for_endpoints(
        cls,
        settings: Settings,
        resolve: Resolver = system_resolver,
        *,
        timeout_seconds: float | None = None,
    ) -> WebhookSender:
        """The sender for users' endpoints: every address checked unless the deployment
        allows private ones. Its timeout is the delivery timeout unless given."""
        guard = AddressGuard(allow_private=settings.allow_private_endpoints, resolve=resolve)
        return cls(timeout_seconds or settings.webhook_timeout_seconds, guard)

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        started = time.monotonic()

        def took() -> int:
            return round((time.monotonic() - started) * 1000)

        if not _sendable(url):
            # No request can reach it, now or later: permanent (stored before the check
            # existed, or made by hand).
            return Answer(None, took(), INVALID_URL)
        try:
            with self._deadline.applies(self.timeout_seconds):
                status, retry_after = self._post(url, body, headers)
        except httpx.InvalidURL:  # a URL httpx reads otherwise than `valid_host` does
            return Answer(None, took(), INVALID_URL)
        except httpx.TimeoutException:
            error = f"timed out (no answer within {self.timeout_seconds:g} s)"
            return Answer(None, took(), error, transient=True)
        except httpx.TransportError as exc:
            reason = refused_reason(exc)
            if reason is not None:
                return Answer(None, took(), f"address refused: {reason}")
            return Answer(None, took(), f"unreachable ({type(exc).__name__})", transient=True)
        if 200 <= status < 300:
            return Answer(status, took())
        return Answer(
            status,
            took(),
            f"answered {status}",
            webhook_status_is_transient(status),
            retry_after if status in (429, 503) else None,
        )

    def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, float | None]:
        """POST and read at most ``MAX_ANSWER_BYTES`` of the answer; returns its status and
        its ``Retry-After`` in seconds."""
        with self._client.stream("POST", url, content=body, headers=dict(headers)) as response:
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read > MAX_ANSWER_BYTES:
                    break  # nobody reads it: the connection is closed rather than drained
            return response.status_code, retry_after_seconds(response.headers.get("Retry-After"))


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header's wait in seconds (delta-seconds or an HTTP date), capped at
    an hour; None when absent, unreadable or not in the future."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(int(value))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds <= 0:
        return None
    return min(seconds, RETRY_AFTER_CAP_SECONDS)


def _sendable(url: str) -> bool:
    """Whether ``url`` has a host a request can be sent to (`valid_host`)."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return False
    return host is not None and valid_host(host)
