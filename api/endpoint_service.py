"""Endpoint operations behind the HTTP API, each one transaction, each scoped to one owner.

Another user's endpoint is simply not found (404), as for tasks. A URL is checked by the
address guard before it is saved (`shared.delivery.endpoints.UrlPolicy`); the secret is shown only
by `create` and `rotate_secret`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.pagination import keyset, next_cursor
from api.pings import PingGate
from api.schemas import (
    AttemptOut,
    AttemptPage,
    EndpointCreate,
    EndpointCreated,
    EndpointOut,
    EndpointPage,
    EndpointPatch,
    HistoryQuery,
)
from api.service import Owner
from shared.delivery import endpoints
from shared.delivery.endpoints import Attempt, UrlPolicy
from shared.delivery.secret_box import SecretBox
from shared.delivery.webhooks import WebhookSender, signed_headers
from shared.store.db import unit_of_work, utcnow
from shared.store.models import Endpoint, EndpointAttempt


def _endpoint_out(endpoint: Endpoint) -> EndpointOut:
    return EndpointOut.model_validate(endpoint, from_attributes=True)


def _created(endpoint: Endpoint, secret: str) -> EndpointCreated:
    shown = EndpointOut.model_validate(endpoint, from_attributes=True).model_dump()
    return EndpointCreated(**shown, secret=secret)


@dataclass(frozen=True)
class EndpointService:
    """The endpoint use cases. ``sender`` makes the test ``ping``'s request, within the
    bounds ``pings`` sets (`api.pings`)."""

    sessions: sessionmaker[Session]
    box: SecretBox
    policy: UrlPolicy
    sender: WebhookSender
    disable_after: timedelta
    pings: PingGate
    clock: Callable[[], datetime] = utcnow

    def create(self, owner: Owner, data: EndpointCreate) -> EndpointCreated:
        """Raises: AddressRefused (the URL is not allowed)."""
        self.policy.check(data.url)
        now = self.clock()
        with unit_of_work(self.sessions) as session:
            endpoint, secret = endpoints.create(
                session,
                self.box,
                owner.id,
                data.url,
                data.description,
                now,
                max_concurrency=data.max_concurrency,
                max_per_second=data.max_per_second,
            )
            return _created(endpoint, secret)

    def list(self, owner: Owner, query: HistoryQuery) -> EndpointPage:
        """The owner's endpoints, oldest first, paged.

        Raises:
            BadCursor: the cursor does not decode.
        """
        statement = keyset(
            select(Endpoint).where(Endpoint.owner_id == owner.id),
            Endpoint.created_at,
            Endpoint.id,
            query.cursor,
            query.limit,
        )
        with self.sessions() as session:
            rows = list(session.scalars(statement))
            items = [_endpoint_out(row) for row in rows[: query.limit]]
            keys = [(row.created_at, row.id) for row in rows]
            session.rollback()
        return EndpointPage(items=items, next_cursor=next_cursor(keys, query.limit))

    def get(self, owner: Owner, endpoint_id: uuid.UUID) -> EndpointOut | None:
        with self.sessions() as session:
            endpoint = endpoints.owned(session, owner.id, endpoint_id)
            shown = _endpoint_out(endpoint) if endpoint else None
            session.rollback()
        return shown

    def update(
        self, owner: Owner, endpoint_id: uuid.UUID, patch: EndpointPatch
    ) -> EndpointOut | None:
        """Raises: AddressRefused (a new URL is not allowed)."""
        changes = patch.model_dump(exclude_unset=True)
        if "url" in changes:
            self.policy.check(changes["url"])
        now = self.clock()
        with unit_of_work(self.sessions) as session:
            endpoint = endpoints.owned(session, owner.id, endpoint_id)
            if endpoint is None:
                return None
            if "url" in changes:
                endpoint.url = changes["url"]
            if "description" in changes:
                endpoint.description = changes["description"]
            if "max_concurrency" in changes:
                endpoint.max_concurrency = changes["max_concurrency"]
            if "max_per_second" in changes:  # null: no rate limit any more
                endpoint.max_per_second = changes["max_per_second"]
            if changes.get("enabled") is True and not endpoint.enabled:
                endpoints.enable(endpoint, now)
            elif changes.get("enabled") is False and endpoint.enabled:
                endpoints.disable(endpoint, "disabled by its owner", now)
            endpoint.updated_at = now
            session.flush()
            return _endpoint_out(endpoint)

    def delete(self, owner: Owner, endpoint_id: uuid.UUID) -> bool:
        with unit_of_work(self.sessions) as session:
            endpoint = endpoints.owned(session, owner.id, endpoint_id)
            if endpoint is None:
                return False
            endpoints.remove(session, endpoint)
            return True

    def rotate_secret(self, owner: Owner, endpoint_id: uuid.UUID) -> EndpointCreated | None:
        now = self.clock()
        with unit_of_work(self.sessions) as session:
            endpoint = endpoints.owned(session, owner.id, endpoint_id)
            if endpoint is None:
                return None
            secret = endpoints.rotate_secret(self.box, endpoint, now)
            session.flush()
            return _created(endpoint, secret)

    def test(self, owner: Owner, endpoint_id: uuid.UUID) -> AttemptOut | None:
        """Send a signed ``ping`` now (also to a disabled endpoint, to check it before
        enabling it again) and record the attempt like any other.

        Raises:
            PingBusy: the owner has a ping in flight, or this process too many.
        """
        now = self.clock()
        with self.sessions() as session:
            endpoint = endpoints.owned(session, owner.id, endpoint_id)
            if endpoint is None:
                return None
            url = endpoint.url
            secrets = endpoints.signing_secrets(self.box, endpoint, now)
            session.rollback()
        ping_id = f"ping_{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "type": "ping",
                "message_id": ping_id,
                "endpoint_id": str(endpoint_id),
                "sent_at": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            separators=(",", ":"),
        ).encode()
        with self.pings.one_ping(owner.id):
            answer = self.sender.post(
                url, body, signed_headers(ping_id, int(time.time()), body, secrets)
            )
        attempt = Attempt.of("ping", ping_id, answer, now)
        endpoints.record_attempt(self.sessions.kw["bind"], endpoint_id, attempt, self.disable_after)
        return AttemptOut.model_validate(attempt, from_attributes=True)

    def attempts(
        self, owner: Owner, endpoint_id: uuid.UUID, query: HistoryQuery
    ) -> AttemptPage | None:
        """The endpoint's attempts, newest first, paged.

        Raises:
            BadCursor: the cursor does not decode.
        """
        with self.sessions() as session:
            if endpoints.owned(session, owner.id, endpoint_id) is None:
                return None
            statement = keyset(
                select(EndpointAttempt).where(EndpointAttempt.endpoint_id == endpoint_id),
                EndpointAttempt.at,
                EndpointAttempt.id,
                query.cursor,
                query.limit,
                newest_first=True,
            )
            rows = list(session.scalars(statement))
            items = [AttemptOut.model_validate(row, from_attributes=True) for row in rows]
            keys = [(row.at, row.id) for row in rows]
            session.rollback()
        return AttemptPage(items=items[: query.limit], next_cursor=next_cursor(keys, query.limit))
