"""Per-token rate limiting (Flask-Limiter, counters in Redis so every API process shares them).

A caller is its bearer token (by hash), or its address when it sends none. Past the limit
the answer is a 429 problem document with ``Retry-After``. If Redis cannot be reached the
limiter lets requests through: the limit protects the service, it must not take it down.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flask import Flask, Response, request
from flask_limiter import HeaderNames, Limiter, RateLimitExceeded

from api.auth import bearer_token
from api.problems import problem
from shared.config import Settings
from shared.planning.keys import hash_token


def caller_key() -> str:
    token = bearer_token(request.headers.get("Authorization"))
    if token is not None:
        return "token:" + hash_token(token)[:32]
    return "addr:" + (request.remote_addr or "unknown")


def install_rate_limit(app: Flask, settings: Settings, exempt: Iterable[str]) -> Limiter | None:
    """Limit every endpoint but ``exempt`` ones to ``REMINDERS_RATE_LIMIT``; None when off."""
    if not settings.rate_limit:
        return None
    exempt_endpoints = frozenset(exempt)
    limiter = Limiter(
        key_func=caller_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
        key_prefix=f"{settings.redis_namespace}:ratelimit",
        default_limits=[settings.rate_limit],
        default_limits_exempt_when=lambda: request.endpoint in exempt_endpoints,
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
