"""Users' own webhook endpoints: keeping them, their secrets, their health and attempt log.

An endpoint is a URL checked by the address guard (`shared.delivery.address_guard`) and a secret
shown once, kept encrypted (`shared.delivery.secret_box`). Rotating the secret keeps the previous
one signing beside the new one for `ROTATION_OVERLAP`. Every delivery attempt (a reminder
or a ``ping``) is recorded (`record_attempt`): the attempt log the owner reads, and the
endpoint's health — a success clears ``failing_since``, and an endpoint whose attempts have
all failed for ``REMINDERS_ENDPOINT_DISABLE_AFTER`` is disabled with a reason. Each endpoint
also carries its delivery limits (`shared.broker.gate.Limits`): how many of its requests may
be in flight at once, across every worker process and host, and how many it takes per
second. Everything here is scoped to one owner: another user's endpoint is simply not found.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.delivery.address_guard import Resolver, check_url, system_resolver
from shared.delivery.secret_box import SecretBox
from shared.delivery.signing import new_endpoint_secret
from shared.delivery.webhooks import Answer
from shared.logs import get_logger
from shared.store.db import unit_of_work, utcnow
from shared.store.models import Endpoint, EndpointAttempt, OperatorAction, Task, User

log = get_logger("endpoints")

ROTATION_OVERLAP = timedelta(hours=24)
MAX_ERROR_CHARS = 500

# An endpoint's limits as its owner may set them (SPEC §4.9). Enough requests in flight for a
# receiver that answers slowly, few enough that one endpoint cannot hold every worker thread.
DEFAULT_MAX_CONCURRENCY = 8
MAX_CONCURRENCY_RANGE = (1, 64)
MAX_PER_SECOND_MAX = 1000.0


@dataclass(frozen=True)
class UrlPolicy:
    """What an endpoint URL may be: `shared.delivery.address_guard`'s rules, lifted for local
    setups."""

    allow_private: bool
    resolve: Resolver = system_resolver

    def check(self, url: str) -> None:
        """Raises: AddressRefused, naming why."""
        check_url(url, allow_private=self.allow_private, resolve=self.resolve)


def owned(session: Session, owner_id: uuid.UUID, endpoint_id: uuid.UUID) -> Endpoint | None:
    """The owner's endpoint, or None (missing, or another user's: the same answer)."""
    return session.scalars(
        select(Endpoint).where(Endpoint.id == endpoint_id, Endpoint.owner_id == owner_id)
    ).one_or_none()


def create(
    session: Session,
    box: SecretBox,
    owner_id: uuid.UUID,
    url: str,
    description: str | None,
    now: datetime,
    *,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_per_second: float | None = None,
) -> tuple[Endpoint, str]:
    """A new endpoint and its secret in clear (to show once). The URL and the limits are
    checked already."""
    secret = new_endpoint_secret()
    endpoint = Endpoint(
        owner_id=owner_id,
        url=url,
        description=description,
        enabled=True,
        secret=box.encrypt(secret),
        max_concurrency=max_concurrency,
        max_per_second=max_per_second,
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def rotate_secret(box: SecretBox, endpoint: Endpoint, now: datetime) -> str:
    """A new secret (returned in clear); the current one keeps signing for the overlap.

    Rotating again within the overlap drops the oldest: at most two secrets sign.
    """
    secret = new_endpoint_secret()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = now + ROTATION_OVERLAP
    endpoint.secret = box.encrypt(secret)
    endpoint.updated_at = now
    return secret


def enable(endpoint: Endpoint, now: datetime) -> None:
    """Enabled again by its owner: a fresh start, with no failure history counted."""
    endpoint.enabled = True
    endpoint.disabled_reason = None
    endpoint.disabled_at = None
    endpoint.failing_since = None
    endpoint.updated_at = now


def disable(endpoint: Endpoint, reason: str, now: datetime) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = reason
    endpoint.disabled_at = now
    endpoint.updated_at = now


def enable_by_operator(
    sessions: sessionmaker[Session], endpoint_id: uuid.UUID, operator: str
) -> bool:
    """An operator enables a disabled endpoint again (recorded as an operator action).
    Returns False when it is not disabled, or does not exist."""
    now = utcnow()
    with unit_of_work(sessions) as session:
        endpoint = session.get(Endpoint, endpoint_id, with_for_update=True)
        if endpoint is None or endpoint.enabled:
            return False
        enable(endpoint, now)
        session.add(
            OperatorAction(
                id=uuid.uuid4(),
                at=now,
                operator=operator,
                action="enable_endpoint",
                message_id=None,
                detail=f"endpoint {endpoint_id}",
            )
        )
    log.info("ops.enable_endpoint", operator=operator, endpoint_id=str(endpoint_id))
    return True


def remove(session: Session, endpoint: Endpoint) -> None:
    """Delete the endpoint and its attempt log; tasks naming it fall back to the deployment
    channel (their ``endpoint_id`` becomes NULL here, and by the foreign key as well)."""
    session.execute(update(Task).where(Task.endpoint_id == endpoint.id).values(endpoint_id=None))
    session.execute(delete(EndpointAttempt).where(EndpointAttempt.endpoint_id == endpoint.id))
    session.delete(endpoint)


class Secrets(Protocol):
    """An endpoint's encrypted secrets: an `Endpoint`, or a row of its columns."""

    @property
    def secret(self) -> str: ...
    @property
    def previous_secret(self) -> str | None: ...
    @property
    def previous_secret_expires_at(self) -> datetime | None: ...


def signing_secrets(box: SecretBox, endpoint: Secrets, now: datetime) -> list[str]:
    """The (decrypted) secrets that sign a delivery now, newest first."""
    secrets = [box.decrypt(endpoint.secret)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret is not None and expires is not None and now < expires:
        secrets.append(box.decrypt(endpoint.previous_secret))
    return secrets


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt's outcome, as the owner sees it in the attempt log."""

    kind: str  # "reminder" or "ping"
    message_id: str
    ok: bool
    status_code: int | None
    duration_ms: int
    error: str | None
    at: datetime

    @classmethod
    def of(cls, kind: str, message_id: str, answer: Answer, at: datetime) -> Attempt:
        """The attempt that got ``answer``."""
        return cls(
            kind=kind,
            message_id=message_id,
            ok=answer.ok,
            status_code=answer.status_code,
            duration_ms=answer.duration_ms,
            error=answer.error,
            at=at,
        )


@dataclass(frozen=True)
class Health:
    """What an attempt did to its endpoint."""

    disabled_now: bool
    reason: str | None = None


# ``last_success_at`` is moved on at most once a second while an endpoint keeps succeeding.
SUCCESS_RESOLUTION = timedelta(seconds=1)

# A successful attempt, recorded in the transaction that marks its reminder sent (no commit of
# its own): the endpoint's row is touched only when it says something new — every thread
# delivering to one endpoint would otherwise update its row and wait for the others'
# commits in turn — and the attempt is logged. Both return a row (a driver cursor needs one).
SUCCESS_HEALTH = (
    update(Endpoint)
    .where(
        Endpoint.id == bindparam("b_endpoint"),
        or_(
            Endpoint.failing_since.is_not(None),
            Endpoint.last_success_at.is_(None),
            Endpoint.last_success_at < bindparam("b_stale"),
        ),
    )
    .values(failing_since=None, last_success_at=bindparam("b_at"))
    .returning(Endpoint.id)
)
SUCCESS_LOGGED = (
    insert(EndpointAttempt)
    .values(
        id=bindparam("b_id"),
        endpoint_id=bindparam("b_endpoint"),
        at=bindparam("b_at"),
        kind=bindparam("b_kind"),
        message_id=bindparam("b_message"),
        ok=True,
        status_code=bindparam("b_status"),
        duration_ms=bindparam("b_duration"),
        error=None,
    )
    .returning(EndpointAttempt.id)
)


def success_params(endpoint_id: uuid.UUID, attempt: Attempt) -> dict[str, object]:
    """The parameters of `SUCCESS_HEALTH` and `SUCCESS_LOGGED` for a successful attempt."""
    return {
        "b_endpoint": endpoint_id,
        "b_stale": attempt.at - SUCCESS_RESOLUTION,
        "b_at": attempt.at,
        "b_id": uuid.uuid4(),
        "b_kind": attempt.kind,
        "b_message": attempt.message_id,
        "b_status": attempt.status_code,
        "b_duration": attempt.duration_ms,
    }


def record_attempt(
    engine: Engine,
    endpoint_id: uuid.UUID,
    attempt: Attempt,
    disable_after: timedelta,
) -> Health:
    """Log the attempt and update the endpoint's health, in a transaction of its own.

    A success clears ``failing_since``; a failure starts it (if not started) and disables
    the endpoint once every attempt since it has failed for ``disable_after``. An endpoint
    deleted meanwhile records nothing.
    """
    error = None if attempt.error is None else attempt.error[:MAX_ERROR_CHARS]
    with engine.begin() as db:
        if attempt.ok:
            params = success_params(endpoint_id, attempt)
            if (
                db.execute(SUCCESS_HEALTH, params).first()
                or db.execute(select(Endpoint.id).where(Endpoint.id == endpoint_id)).first()
            ):
                db.execute(SUCCESS_LOGGED, params)
            return Health(disabled_now=False)
        found = db.execute(
            update(Endpoint)
            .where(Endpoint.id == endpoint_id)
            .values(
                failing_since=func.coalesce(Endpoint.failing_since, attempt.at),
                last_failure_at=attempt.at,
                last_error=error,
            )
            .returning(Endpoint.id)
        ).first()
        if found is None:
            return Health(disabled_now=False)
        db.execute(
            insert(EndpointAttempt).values(
                id=uuid.uuid4(),
                endpoint_id=endpoint_id,
                at=attempt.at,
                kind=attempt.kind,
                message_id=attempt.message_id,
                ok=attempt.ok,
                status_code=attempt.status_code,
                duration_ms=attempt.duration_ms,
                error=error,
            )
        )
        failing = db.execute(
            select(Endpoint.failing_since).where(Endpoint.id == endpoint_id)
        ).scalar_one()
        if failing is None or attempt.at - failing < disable_after:
            return Health(disabled_now=False)
        reason = (
            f"every delivery attempt failed since {failing:%Y-%m-%dT%H:%M:%SZ} "
            f"(last: {error or 'unknown error'})"
        )[:MAX_ERROR_CHARS]
        disabled = db.execute(
            update(Endpoint)
            .where(Endpoint.id == endpoint_id, Endpoint.enabled.is_(True))
            .values(enabled=False, disabled_reason=reason, disabled_at=attempt.at)
            .returning(Endpoint.id)
        ).first()
    return Health(disabled_now=disabled is not None, reason=reason)


def purge_attempts(engine: Engine, keep: timedelta, clock: Callable[[], datetime] = utcnow) -> int:
    """Delete attempts older than ``keep``, 5,000 per transaction; returns how many."""
    cutoff = clock() - keep
    purged = 0
    while True:
        with engine.begin() as db:
            ids = db.scalars(
                select(EndpointAttempt.id).where(EndpointAttempt.at < cutoff).limit(5000)
            ).all()
            if not ids:
                return purged
            db.execute(delete(EndpointAttempt).where(EndpointAttempt.id.in_(ids)))
            purged += len(ids)


@dataclass(frozen=True)
class EndpointHealth:
    """One endpoint as operators see it: whose, where, how it is doing, and its delivery
    limits (no secret)."""

    id: uuid.UUID
    owner: str
    url: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    max_concurrency: int
    max_per_second: float | None  # None: no rate limit


def user_exists(session: Session, name: str) -> bool:
    return session.scalar(select(User.id).where(User.name == name)) is not None


def health(
    session: Session, owner: str | None = None, *, failing_only: bool = False
) -> list[EndpointHealth]:
    """Every endpoint (of ``owner``, a user name), disabled and failing ones first.

    ``failing_only``: only endpoints that are disabled or whose last attempts failed.
    """
    statement = select(
        Endpoint.id,
        User.name,
        Endpoint.url,
        Endpoint.enabled,
        Endpoint.disabled_reason,
        Endpoint.failing_since,
        Endpoint.last_success_at,
        Endpoint.last_failure_at,
        Endpoint.last_error,
        Endpoint.max_concurrency,
        Endpoint.max_per_second,
    ).join(User, User.id == Endpoint.owner_id)
    if owner is not None:
        statement = statement.where(User.name == owner)
    if failing_only:
        statement = statement.where(
            or_(Endpoint.enabled.is_(False), Endpoint.failing_since.is_not(None))
        )
    statement = statement.order_by(
        Endpoint.enabled, Endpoint.failing_since.is_(None), Endpoint.failing_since, User.name
    )
    return [EndpointHealth(*row) for row in session.execute(statement)]
