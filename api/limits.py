"""Rate limiting (Flask-Limiter, counters in Redis so every API process shares them).

Two limits, each shared by every route (an application limit, not one count per route):

- ``REMINDERS_RATE_LIMIT`` per caller: its bearer token (by hash), its ops page session
  (by hash), or its address when it sends neither.
- ``REMINDERS_AUTH_FAILURE_LIMIT`` failed authentications per client address, whatever
  token was presented: a fresh random token on each request is a fresh per-caller key, so
  without this a flood of made-up tokens would never be limited, and each would cost an
  authentication query. Past it, every request from that address gets 429 before any
  lookup, until the window moves on.

Past a limit the answer is a 429 problem document with ``Retry-After``. If Redis cannot be
reached the limiter lets requests through: the limit protects the service, it must not
take it down. The counters live where ``REDIS_URL`` says, on the primary of a Sentinel set
(`shared.broker.connection`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flask import Flask, Response, g, request
from flask_limiter import ApplicationLimit, HeaderNames, Limiter, RateLimitExceeded

from api.auth import bearer_token
from api.ops_sessions import COOKIE as OPS_COOKIE
from api.problems import problem
from shared.broker.connection import redis_options, redis_pool
from shared.config import Settings
from shared.planning.keys import hash_token


def caller_key() -> str:
    """Who a request counts against: its token, its ops page session, or its address."""
    token = bearer_token(request.headers.get("Authorization"))
    if token is not None:
        return "token:" + hash_token(token)[:32]
    session_id = request.cookies.get(OPS_COOKIE)
    if session_id and request.blueprint == "ops_page":
        return "session:" + hash_token(session_id)[:32]
    return address_key()


def address_key() -> str:
    return "addr:" + (request.remote_addr or "unknown")


def authentication_failed() -> None:
    """Count this request against its address's failed authentications (after it answers)."""
    g.authentication_failed = True


def install_rate_limit(app: Flask, settings: Settings, exempt: Iterable[str]) -> Limiter | None:
    """Limit every endpoint but ``exempt`` ones; None when ``REMINDERS_RATE_LIMIT`` is off.

    Must be installed before authentication, so an address past its failed
    authentications is refused before its token is looked up.
    """
    if not settings.rate_limit:
        return None
    exempt_endpoints = frozenset(exempt)

    def is_exempt() -> bool:
        return request.endpoint in exempt_endpoints

    limits: list[str | Callable[[], str] | ApplicationLimit] = [
        ApplicationLimit(settings.rate_limit, key_function=caller_key, exempt_when=is_exempt)
    ]
    if settings.auth_failure_limit:
        limits.append(
            ApplicationLimit(
                settings.auth_failure_limit,
                key_function=address_key,
                scope="failed-authentication",
                exempt_when=is_exempt,
                # Checked before every request, counted only after one whose
                # authentication failed.
                deduct_when=lambda response: bool(g.get("authentication_failed")),
            )
        )
    # The counters' pool is built as the broker's (`redis_pool`), so with a Sentinel set
    # they follow its primary too. (limits' own redis+sentinel:// storage would take the
    # path "/<service>/<db>" for one service name, and read counters from a replica.)
    # A request waits at most a second for its count (swallow_errors: then it passes).
    counters = redis_pool(
        settings.redis_url,
        **{
            **redis_options(settings.redis_url, settings.peer_timeout_seconds),
            "socket_connect_timeout": 1,
            "socket_timeout": 1,
        },
    )
    limiter = Limiter(
        key_func=caller_key,
        app=app,
        storage_uri="redis://",  # the kind of storage; the pool below says where it is
        # Passed on to limits' RedisStorage, which takes a pool (Flask-Limiter types these
        # options as strings and numbers only).
        storage_options={"connection_pool": counters},  # type: ignore[dict-item]
        key_prefix=f"{settings.redis_namespace}:ratelimit",
        application_limits=limits,
        headers_enabled=True,
        # Flask-Limiter would stamp Retry-After on every response; keep that for the 429.
        header_name_mapping={HeaderNames.RETRY_AFTER: "X-RateLimit-Retry-After"},
        swallow_errors=True,
    )

    def too_many_requests(exc: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        wait = max(1, int(current.reset_at - time.time())) if current else 1
        return problem(
            429, f"rate limit exceeded: {exc.description}", headers={"Retry-After": str(wait)}
        )

    app.register_error_handler(RateLimitExceeded, too_many_requests)
    return limiter
