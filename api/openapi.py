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
  too deep: `api.json_body`) on the JSON ones.
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


def complete_document(app: OpenAPI, guards: Guards) -> None:
    """Complete the app's document (``app.api_doc``, in place) with the hooks' answers.

    Call it once every route is registered.
    """
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
