"""Delivering a reminder to its task's endpoint: the user's own URL, signed with their secret.

The endpoint is read when the reminder is delivered, so a changed URL, a rotated secret or
a disabled endpoint applies to the next attempt. A disabled endpoint fails the reminder at
once with ``endpoint disabled`` (a dead letter an operator can retry once it is enabled
again), never dropping it. Each request is an attempt in the endpoint's log. A successful
one is recorded in the delivery's own transaction, with the reminder marked sent: one commit
per reminder, as through the deployment's webhook. A failed one is recorded after that
transaction has rolled back (`deliver_occurrence` calls `settle`), in one of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import SQLAlchemyError

from shared.broker.gate import Limits, endpoint_receiver
from shared.config import Settings
from shared.delivery import endpoints
from shared.delivery.address_guard import Resolver, system_resolver
from shared.delivery.endpoints import Attempt
from shared.delivery.secret_box import SecretBox, SecretKeyMismatch
from shared.delivery.webhooks import Answer, WebhookSender, signed_headers
from shared.logs import get_logger
from shared.store.db import Rows, utcnow
from shared.store.models import Endpoint
from workers import metrics
from workers.admission import Admissions
from workers.channels import PermanentDeliveryError, ReminderPayload, raise_for_answer

log = get_logger("delivery")


_ENDPOINT = select(
    Endpoint.url,
    Endpoint.enabled,
    Endpoint.disabled_reason,
    Endpoint.secret,
    Endpoint.previous_secret,
    Endpoint.previous_secret_expires_at,
    Endpoint.max_concurrency,
    Endpoint.max_per_second,
).where(Endpoint.id == bindparam("b_endpoint"))


@dataclass(frozen=True)
class _Endpoint:
    url: str
    enabled: bool
    disabled_reason: str | None
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    max_concurrency: int
    max_per_second: float | None


@dataclass(frozen=True)
class Made:
    """A request made to an endpoint, to be recorded once the delivery's transaction ends."""

    endpoint_id: uuid.UUID
    attempt: Attempt


class EndpointChannel:
    """Sends reminders to users' endpoints (`shared.delivery.endpoints`)."""

    name = "endpoint"

    def __init__(
        self,
        engine: Engine,
        box: SecretBox,
        sender: WebhookSender,
        disable_after: timedelta,
        clock: Callable[[], datetime] = utcnow,
        admissions: Admissions | None = None,
    ) -> None:
        self.engine = engine
        self.box = box
        self.sender = sender
        self.disable_after = disable_after
        self.clock = clock
        # The endpoints' limits (SPEC §4.9); None: no limits (a channel used without a broker).
        self.admissions = admissions

    def deliver(
        self, reminder: ReminderPayload, endpoint_id: uuid.UUID, made: list[Made], rows: Rows
    ) -> bool:
        """Send ``reminder`` to the endpoint; the request is appended to ``made``. The
        endpoint is read through ``rows``, in the delivery's own transaction.

        Returns False when the endpoint no longer exists (deleted meanwhile): the caller
        uses the deployment's channel, as for a task that names none.

        Raises:
            PermanentDeliveryError: the endpoint is disabled, its secret cannot be read, or
                it refused the reminder (4xx, an address the guard refuses).
            TransientDeliveryError: worth retrying (5xx, 408, 429, timeout, unreachable).
            Deferred: the endpoint's limits hold the reminder back (no request, no attempt).
        """
        found = rows(_ENDPOINT, {"b_endpoint": endpoint_id})
        endpoint = _Endpoint(*found[0]) if found else None
        if endpoint is None:
            return False
        if not endpoint.enabled:
            metrics.ENDPOINT_ATTEMPTS.labels("disabled").inc()
            raise PermanentDeliveryError(f"endpoint disabled: {endpoint.disabled_reason}")
        now = self.clock()
        try:
            secrets = endpoints.signing_secrets(self.box, endpoint, now)
        except SecretKeyMismatch as exc:
            raise PermanentDeliveryError(str(exc)) from None
        headers = signed_headers(reminder.message_id, int(time.time()), reminder.body, secrets)
        if self.admissions is None or reminder.message is None:
            answer = self.sender.post(endpoint.url, reminder.body, headers)
        else:
            limits = Limits(endpoint.max_concurrency, endpoint.max_per_second)
            receiver = endpoint_receiver(endpoint_id)
            with self.admissions.request(receiver, limits, reminder.message) as request:
                answer = request.answer = self.sender.post(endpoint.url, reminder.body, headers)
        attempt = Attempt.of("reminder", reminder.message_id, answer, now)
        metrics.ENDPOINT_ATTEMPTS.labels(_outcome(answer)).inc()
        if not answer.ok:
            made.append(Made(endpoint_id, attempt))
            raise_for_answer(answer, "endpoint")
        params = endpoints.success_params(endpoint_id, attempt)
        rows(endpoints.SUCCESS_HEALTH, params)
        rows(endpoints.SUCCESS_LOGGED, params)
        return True

    def settle(self, made: list[Made]) -> None:
        """Record the requests made: the endpoints' attempt logs and health.

        Best effort: when the database is what failed, the attempt goes unrecorded (logged)
        rather than hiding the delivery's own outcome.
        """
        for request in made:
            try:
                health = endpoints.record_attempt(
                    self.engine, request.endpoint_id, request.attempt, self.disable_after
                )
            except SQLAlchemyError as exc:
                log.warning(
                    "endpoint.attempt_not_recorded",
                    endpoint_id=str(request.endpoint_id),
                    message_id=request.attempt.message_id,
                    error_type=type(exc).__name__,
                )
                continue
            if health.disabled_now:
                metrics.ENDPOINTS_DISABLED.inc()
                log.warning(
                    "endpoint.disabled", endpoint_id=str(request.endpoint_id), reason=health.reason
                )


def make_endpoint_channel(
    settings: Settings,
    engine: Engine,
    resolve: Resolver = system_resolver,
    clock: Callable[[], datetime] = utcnow,
    admissions: Admissions | None = None,
) -> EndpointChannel:
    """The endpoint channel the settings describe; ``clock`` stamps each attempt (and so
    decides when an endpoint has been failing long enough to be disabled)."""
    return EndpointChannel(
        engine,
        SecretBox.from_setting(settings.secret_key, settings.data_dir),
        WebhookSender.for_endpoints(settings, resolve),
        timedelta(seconds=settings.endpoint_disable_after_seconds),
        clock,
        admissions,
    )


def _outcome(answer: Answer) -> str:
    if answer.ok:
        return "accepted"
    return "transient" if answer.transient else "rejected"
