"""What operators see of the receivers' limits (SPEC §4.9): per receiver, its requests in
flight, the reminders parked waiting for a slot, the back-off it asked for, whether it is
slow, and its counts, beside its limits and owner.

The gate's state in Redis (`shared.broker.gate.Gate.receivers`: every receiver with requests
in flight or reminders parked, and every one the gate has counted) is joined in one query
to the endpoints it names; the deployment's webhook takes its limits from the settings.
Operators see identifiers and owners, as on the other operator views: never an endpoint's
URL, headers or secret.

Listed troubled first: backing off, then most reminders parked, then slow, then most
requests in flight, then by receiver name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.broker.gate import (
    ENDPOINT_RECEIVER_PREFIX,
    WEBHOOK_RECEIVER,
    Gate,
    Limits,
    ReceiverState,
)
from shared.store.db import unit_of_work
from shared.store.models import Endpoint, User


@dataclass(frozen=True)
class ReceiverView:
    """One receiver as operators see it."""

    receiver: str  # "webhook", or "endpoint:<endpoint ID>"
    endpoint_id: uuid.UUID | None  # None: the deployment's webhook
    owner: str | None  # the endpoint's owner (user name); None: the webhook, or a deleted one
    max_concurrency: int | None  # None: no limit (or the endpoint was deleted)
    max_per_second: float | None  # None: no rate limit (or the endpoint was deleted)
    in_flight: int
    parked: int
    backing_off_until: datetime | None  # the end of the Retry-After it asked for, if to come
    slow: bool  # its requests go through the slow lane
    average_ms: int | None  # running average of its requests' time; None: none ended yet
    deferred: int  # reminders held back by its limits, since the gate first saw it
    throttled: int  # its 429 and 503 answers, since the gate first saw it

    @property
    def endpoint_deleted(self) -> bool:
        return self.endpoint_id is not None and self.owner is None


def receivers(gate: Gate, sessions: sessionmaker[Session], webhook: Limits) -> list[ReceiverView]:
    """Every receiver the gate keeps state for, troubled first (see the module).

    ``webhook``: the deployment webhook's limits, from the settings.

    Raises:
        redis.RedisError: Redis failed (the API answers 503, as for the queue depths).
    """
    states = gate.receivers()
    ids = {state.receiver: _endpoint_id(state.receiver) for state in states}
    wanted = {endpoint_id for endpoint_id in ids.values() if endpoint_id is not None}
    endpoints: dict[uuid.UUID, tuple[str, int, float | None]] = {}
    if wanted:
        with unit_of_work(sessions) as session:
            rows = session.execute(
                select(Endpoint.id, User.name, Endpoint.max_concurrency, Endpoint.max_per_second)
                .join(User, User.id == Endpoint.owner_id)
                .where(Endpoint.id.in_(wanted))
            )
            endpoints = {row[0]: (row[1], row[2], row[3]) for row in rows}
    views = []
    for state in states:
        endpoint_id = ids[state.receiver]
        owner, limits = None, Limits(None, None)
        if endpoint_id is not None and endpoint_id in endpoints:
            owner, concurrency, rate = endpoints[endpoint_id]
            limits = Limits(concurrency, rate)
        elif state.receiver == WEBHOOK_RECEIVER:
            limits = webhook
        views.append(_view(state, endpoint_id, owner, limits))
    return sorted(views, key=_trouble)


def _endpoint_id(receiver: str) -> uuid.UUID | None:
    if not receiver.startswith(ENDPOINT_RECEIVER_PREFIX):
        return None
    try:
        return uuid.UUID(receiver.removeprefix(ENDPOINT_RECEIVER_PREFIX))
    except ValueError:
        return None


def _view(
    state: ReceiverState, endpoint_id: uuid.UUID | None, owner: str | None, limits: Limits
) -> ReceiverView:
    until = state.backing_off_until_ms
    return ReceiverView(
        receiver=state.receiver,
        endpoint_id=endpoint_id,
        owner=owner,
        max_concurrency=limits.max_concurrency,
        max_per_second=limits.max_per_second,
        in_flight=state.in_flight,
        parked=state.parked,
        backing_off_until=datetime.fromtimestamp(until / 1000, UTC) if until else None,
        slow=state.slow,
        average_ms=state.average_ms,
        deferred=state.deferred,
        throttled=state.throttled,
    )


def _trouble(view: ReceiverView) -> tuple[bool, int, bool, int, str]:
    return (
        view.backing_off_until is None,
        -view.parked,
        not view.slow,
        -view.in_flight,
        view.receiver,
    )
