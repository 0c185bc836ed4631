"""Error responses as RFC 9457 problem documents (``application/problem+json``).

Every error the API returns, from validation to a 404 raised deep in Werkzeug, leaves
through `problem()`, so clients parse one shape.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import redis
from flask import Response
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from api.field_messages import message
from api.json_body import MAX_DEPTH
from shared.planning.recurrence import RecurrenceError
from shared.store.db import database_unreachable

PROBLEM_MEDIA_TYPE = "application/problem+json"
VALIDATION_TYPE = "urn:reminders:problem:validation-error"

# Which part of the request a pydantic model validates, by the model's name.
_LOCATION_BY_MODEL_SUFFIX = {"Query": "query", "Path": "path", "Headers": "header"}

# OpenAPI: the headers that always come with a status, whichever operation answers it.
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": "The scheme to authenticate with: Bearer",
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer "},
    }
}
PROBLEM_HEADERS: dict[int, dict[str, Any]] = {
    401: WWW_AUTHENTICATE,
    409: RETRY_AFTER,
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}
BAD_BODY = f"The body is not JSON, or is nested more than {MAX_DEPTH} levels deep"
PROBLEM_DESCRIPTIONS = {
    400: BAD_BODY,
    401: "No valid bearer token",
    403: "The token is not an operator's",
    404: "No such resource",
    409: "A request with this Idempotency-Key is still in progress",
    413: "The body is over 64 KiB",
    415: "The body is not application/json",
    422: "Invalid fields, each named in errors",
    429: "Rate limit exceeded",
    503: "The database (or, for the operations that read it, the broker) cannot be reached; "
    "retry after Retry-After seconds",
}
# Seconds a client is asked to wait when a dependency is unreachable: a database restart or
# failover takes about that long, and an attempt that meets the outage again costs little.
UNAVAILABLE_RETRY_AFTER = "1"
# What the Redis client raises for a server it cannot reach or that stopped answering
# (refused, reset, timed out, still loading its data); an error Redis answered is not one.
BROKER_UNREACHABLE: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build a problem response; ``extra`` members are added to the document."""
    body = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extra,
    }
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MEDIA_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# A 409 that may or may not come with Retry-After (an operation whose 409 is either a key
# in flight, worth retrying, or a conflict that retrying will not resolve).
MAYBE_RETRY_AFTER = {"Retry-After": {**RETRY_AFTER["Retry-After"], "required": False}}


def problem_responses(
    *statuses: int,
    descriptions: dict[int, str] | None = None,
    headers: dict[int, dict[str, Any] | None] | None = None,
) -> dict[str | int, Any]:
    """OpenAPI entries for error statuses: a problem document, with the status's headers
    (``headers`` replaces them for this operation; None: none)."""
    content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    described = {**PROBLEM_DESCRIPTIONS, **(descriptions or {})}
    by_status = {**PROBLEM_HEADERS, **(headers or {})}
    entries: dict[str | int, Any] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "description": described.get(status, HTTPStatus(status).phrase),
            "content": content,
        }
        if by_status.get(status):
            entry["headers"] = by_status[status]
        entries[status] = entry
    return entries


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    """One entry per bad field: where it was, its dotted name, and what is wrong with it."""
    location = next(
        (
            where
            for suffix, where in _LOCATION_BY_MODEL_SUFFIX.items()
            if error.title.endswith(suffix)
        ),
        "body",
    )
    entries: dict[str, dict[str, str]] = {}
    for item in error.errors(include_url=False, include_input=False):
        # A union (e.g. "integer, or absent") reports one error per branch; name the field once,
        # preferring the branch that says what the value should have been.
        name = str(item["loc"][0]) if item["loc"] else location
        if name in entries and item["type"] == "none_required":
            continue
        if name not in entries or entries[name]["code"] == "none_required":
            entries[name] = {
                "in": location,
                "field": name,
                "message": message(item, location),
                "code": item["type"],
            }
    return list(entries.values())


def validation_problem(error: ValidationError) -> Response:
    """The 422 answer to a request that failed its schema (flask-openapi3's error callback)."""
    errors = field_errors(error)
    names = ", ".join(sorted({entry["field"] for entry in errors}))
    return problem(
        422,
        f"invalid fields: {names}",
        title="Validation failed",
        type_=VALIDATION_TYPE,
        errors=errors,
    )


def field_problem(field: str, message: str, code: str, location: str = "body") -> Response:
    """The 422 for one bad field that the request's schema could not judge alone."""
    entry = {"in": location, "field": field, "message": message, "code": code}
    return problem(
        422,
        f"invalid fields: {field}",
        title="Validation failed",
        type_=VALIDATION_TYPE,
        errors=[entry],
    )


def recurrence_problem(error: RecurrenceError) -> Response:
    """The 422 for a time zone or recurrence rule the schema could not judge alone (a rule
    that fires more often than the deployment allows, or yields no occurrence from due_at)."""
    return field_problem(error.field, str(error), "invalid_rule")


def bad_cursor_problem(error: Exception) -> Response:
    """The 422 for a ``cursor`` query parameter this API did not hand out."""
    return field_problem("cursor", str(error), "bad_cursor", location="query")


def http_problem(exc: HTTPException) -> Response:
    """Turn any Werkzeug HTTP error (404, 405, 413, ...) into a problem document."""
    if exc.response is not None:  # already a full response (e.g. flask-openapi3's 422)
        return exc.response  # type: ignore[return-value]
    status = exc.code or 500
    headers = dict(exc.get_headers())
    headers.pop("Content-Type", None)
    return problem(status, exc.description or HTTPStatus(status).phrase, headers=headers)


def bad_idempotency_key_problem(exc: ValueError) -> Response:
    """400 for an ``Idempotency-Key`` field that does not name one key (``BadKey``)."""
    return problem(400, str(exc), type_="urn:reminders:problem:bad-idempotency-key")


def database_unavailable_problem(exc: DBAPIError) -> Response:
    """503 with Retry-After when the database is unreachable
    (`shared.store.db.database_unreachable`).

    A connection that cannot be opened (the server is down, refusing, shutting down or
    starting up) is the same outage as one lost under the request; in both cases the pool
    has let go of the dead connections, so a retry opens fresh ones. Any other database
    error, one the server answered, stays a 500.
    """
    if not database_unreachable(exc):
        raise exc
    return problem(
        503,
        "the database cannot be reached; retry the request",
        headers={"Retry-After": UNAVAILABLE_RETRY_AFTER},
    )


def broker_unavailable_problem(exc: Exception) -> Response:
    """503 with Retry-After for a request that needs the broker (Redis) while it is unreachable.

    Registered for `BROKER_UNREACHABLE` only: any other Redis error stays a 500.
    """
    return problem(
        503,
        "the message broker cannot be reached; retry the request",
        headers={"Retry-After": UNAVAILABLE_RETRY_AFTER},
    )
