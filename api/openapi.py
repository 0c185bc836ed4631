"""``GET /openapi.json``: flask-openapi3's document, with the answers of the app-wide hooks.

An operation's decorator documents what its view answers: its result, 404, 409, the 422 of
its fields. What the hooks every request passes through answer is added here, to each
operation a hook guards, from the same sets the hooks are configured with, so the document
cannot drift from them:

- authentication: 401 with ``WWW-Authenticate`` (403 for a non-operator on operator
  operations), and 503 with ``Retry-After`` when the database cannot be reached (every
  authenticated request queries the database; the operator operations that read the
  broker answer the same 503 when it cannot be reached);
- the rate limit: 429 with ``Retry-After`` on every operation that is not exempt;
- the body: 413 on every operation that takes one, and 415 and 400 (not JSON, or nested
  too deep: `api.json_body`) on the JSON ones;
- the rate limit's ``X-RateLimit-*`` headers (Flask-Limiter's), on every answer of a
  limited operation.

Also documented here: the forms of the operator page in both encodings browsers send
(urlencoded, and multipart, which flask-openapi3 writes alone); the answers gunicorn gives
before the app sees a request (414 for a request line over ``LIMIT_REQUEST_LINE`` bytes, 431
for header fields over its limits: an HTML page, which gunicorn offers no hook to replace);
and, in the document's description, the 405 of a method a path does not list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from flask import Response
from flask_openapi3 import OpenAPI

from api.problems import problem_responses

# Flask's rule syntax to OpenAPI's: /tasks/<uuid:task_id> -> /tasks/{task_id}
_RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


@dataclass(frozen=True)
class Guards:
    """Which operations the app-wide hooks guard, as the hooks are configured."""

    public_endpoints: frozenset[str]  # no authentication
    unlimited_endpoints: frozenset[str]  # no rate limit
    operator_blueprints: frozenset[str]  # operator tokens only
    form_blueprints: frozenset[str]  # HTML forms: no JSON body checks, sign-in instead of 401
    body_methods: frozenset[str]  # methods whose body is read and checked


@dataclass(frozen=True)
class Operation:
    endpoint: str
    blueprint: str
    method: str  # upper case
    path: str  # as the document writes it
    document: dict[str, Any]  # the operation object, for reading and completing


def operations(app: OpenAPI) -> Iterator[Operation]:
    """Every operation of the app's document, with the Flask endpoint that serves it."""
    paths = app.api_doc["paths"]
    for rule in app.url_map.iter_rules():
        path = _RULE_VARIABLE.sub(r"{\1}", rule.rule)
        for method in sorted(rule.methods or ()):
            document = paths.get(path, {}).get(method.lower())
            if isinstance(document, dict):
                blueprint = rule.endpoint.rpartition(".")[0]
                yield Operation(rule.endpoint, blueprint, method, path, document)


def hook_answers(operation: Operation, guards: Guards) -> dict[str | int, Any]:
    """The responses the hooks may give to ``operation`` instead of its view."""
    statuses: list[int] = []
    if operation.endpoint not in guards.unlimited_endpoints:
        statuses.append(429)
    on_form = operation.blueprint in guards.form_blueprints
    if operation.endpoint not in guards.public_endpoints:
        statuses.append(503)
        if not on_form:  # the page redirects to its sign-in form (303) instead
            statuses.append(401)
            if operation.blueprint in guards.operator_blueprints:
                statuses.append(403)
    if operation.method in guards.body_methods:
        statuses.append(413)
        if not on_form:
            statuses += [415, 400]
    return problem_responses(*statuses)


# gunicorn's defaults (``--limit-request-line``, ``--limit-request-field_size``), which the
# Procfile keeps.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELD_SIZE = 8190
FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": ("Requests allowed per window (REMINDERS_RATE_LIMIT)", "integer"),
    "X-RateLimit-Remaining": ("Requests left in the current window", "integer"),
    "X-RateLimit-Reset": ("When the window resets: Unix time, in seconds", "integer"),
    "X-RateLimit-Retry-After": ("Seconds until the window resets", "integer"),
}
SERVER_ANSWERS = {
    "414": {
        "description": "The request line (method, path and query) is over "
        f"{LIMIT_REQUEST_LINE} bytes: answered by the HTTP server (gunicorn) before the API "
        "reads the request, as an HTML page, and the connection is closed",
        "content": {"text/html": {"schema": {"type": "string"}}},
    },
    "431": {
        "description": f"A header field is over {LIMIT_REQUEST_FIELD_SIZE} bytes, or there "
        "are over 100 of them: answered by the HTTP server (gunicorn), as an HTML page",
        "content": {"text/html": {"schema": {"type": "string"}}},
    },
}
METHOD_NOT_ALLOWED = (
    "A method a path does not list answers 405 Method Not Allowed: a problem document "
    "(application/problem+json), with Allow naming the methods it does list."
)


def rate_limit_headers() -> dict[str, Any]:
    """The headers Flask-Limiter adds to every answer of a limited operation: absent when
    the limit is off (REMINDERS_RATE_LIMIT empty) or Redis cannot be reached."""
    return {
        name: {"description": description, "required": False, "schema": {"type": kind}}
        for name, (description, kind) in RATE_LIMIT_HEADERS.items()
    }


def complete_document(app: OpenAPI, guards: Guards) -> None:
    """Complete the app's document (``app.api_doc``, in place) with the hooks' answers.

    Call it once every route is registered.
    """
    components = app.api_doc.setdefault("components", {})
    components.setdefault("headers", {}).update(rate_limit_headers())
    limits = {name: {"$ref": f"#/components/headers/{name}"} for name in RATE_LIMIT_HEADERS}
    for operation in operations(app):
        responses = operation.document.setdefault("responses", {})
        # flask-openapi3 documents a 422 on every operation, as a JSON array. Ours is a
        # problem document, and only an operation with parameters or a body can answer it.
        if "422" in responses:
            if operation.document.get("parameters") or operation.document.get("requestBody"):
                responses["422"] = problem_responses(422)[422]
            else:
                del responses["422"]
        for status, entry in hook_answers(operation, guards).items():
            responses.setdefault(str(status), entry)
        for status, entry in SERVER_ANSWERS.items():
            responses.setdefault(status, entry)
        if operation.endpoint not in guards.unlimited_endpoints:
            for status, entry in responses.items():
                responses[status] = {**entry, "headers": {**entry.get("headers", {}), **limits}}
        body = operation.document.get("requestBody", {}).get("content", {})
        if operation.blueprint in guards.form_blueprints and FORM_MEDIA_TYPES[1] in body:
            # Browsers post forms urlencoded; the server reads both encodings alike.
            form = body[FORM_MEDIA_TYPES[1]]
            operation.document["requestBody"]["content"] = {
                FORM_MEDIA_TYPES[0]: {"schema": form["schema"]},
                FORM_MEDIA_TYPES[1]: form,
            }
            # A form whose every field has a default may be posted empty (a button alone).
            name = form["schema"].get("$ref", "").rpartition("/")[2]
            if not app.api_doc["components"]["schemas"].get(name, {}).get("required"):
                operation.document["requestBody"]["required"] = False
    info = app.api_doc.setdefault("info", {})
    info["description"] = f"{info.get('description', '')} {METHOD_NOT_ALLOWED}".strip()
    components.setdefault("responses", {})["MethodNotAllowed"] = {
        "description": METHOD_NOT_ALLOWED,
        "headers": {
            "Allow": {"required": True, "schema": {"type": "string"}},
        },
        "content": problem_responses(405)[405]["content"],
    }


def install_openapi_document(app: OpenAPI) -> None:
    """Serve the app's document at ``/openapi.json``; see `complete_document`."""

    @app.get(
        "/openapi.json",
        summary="This OpenAPI document",
        operation_id="getOpenApiDocument",
        responses={
            200: {
                "description": "OpenAPI 3 document",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    def openapi_document() -> Response:
        return Response(document_json(), mimetype="application/json")

    @cache
    def document_json() -> str:
        return json.dumps(app.api_doc)


def endpoints_taking_header(app: OpenAPI, name: str) -> frozenset[str]:
    """The endpoints whose operation documents the request header ``name``."""
    return frozenset(
        operation.endpoint
        for operation in operations(app)
        for parameter in operation.document.get("parameters", [])
        if parameter.get("in") == "header" and parameter.get("name", "").lower() == name.lower()
    )
