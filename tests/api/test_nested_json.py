"""A JSON body nested deeper than any request needs is a 400 problem document, at any depth.

A 60 KiB body nested a thousand levels deep (``{"title": [[[...]]]}``) once exhausted the
interpreter's recursion limit in the JSON parser: a 500 and a ``RecursionError`` traceback
in the log, on every route that reads JSON. Here every such route of the app (listed from
its URL map, so a new one is covered) gets bodies nested past the limit, as arrays (up to
20,000 levels, 40 KB) and as objects (as deep as fits in 64 KiB), and must answer 400
without logging an error. The app runs as in production (not in testing mode), so an exception
would be a logged 500, not an error raised into the test.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine

from api.app import BODY_METHODS, FORM_BLUEPRINTS, MAX_BODY_BYTES, create_app
from api.json_body import MAX_DEPTH
from tests.conftest import REDIS_URL, Account, create_account, make_settings

PROBLEM = "application/problem+json"
DUE = "2030-01-31T09:00:00Z"
# The routes that read a JSON body today; the URL map must list at least these.
KNOWN_JSON_ROUTES = {
    "POST /tasks",
    "PATCH /tasks/<uuid:task_id>",
    "POST /tasks/<uuid:task_id>/complete",
    "POST /tasks/<uuid:task_id>/snooze",
    "POST /endpoints",
    "PATCH /endpoints/<uuid:endpoint_id>",
    "POST /endpoints/<uuid:endpoint_id>/rotate-secret",
    "POST /endpoints/<uuid:endpoint_id>/test",
    "POST /ops/dead-letters/retry",
    "POST /ops/dead-letters/<uuid:message_id>/retry",
}
_VARIABLE = re.compile(r"<uuid:([a-z_]+)>")


def nested_array(depth: int) -> str:
    """``{"title": [[...]]}``: ``depth`` levels in all, the object counted."""
    return '{"title": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def nested_object(depth: int) -> str:
    """``{"":{"":...{}}}``: ``depth`` objects (5 bytes a level: 13,000 levels fit in 64 KiB)."""
    return '{"":' * (depth - 1) + "{}" + "}" * (depth - 1)


@dataclass
class App:
    client: Any
    json_routes: list[tuple[str, str]]  # (method, rule)
    user: Account
    operator: Account
    ids: dict[str, str]

    def send(self, method: str, rule: str, body: str) -> Any:
        url = _VARIABLE.sub(lambda match: self.ids[match.group(1)], rule)
        who = self.operator if rule.startswith("/ops") else self.user
        return self.client.open(
            url, method=method, data=body, content_type="application/json", headers=who.headers
        )


@pytest.fixture
def app(pg_engine: Engine, pg_url: str, redis_namespace: str) -> Iterator[App]:
    settings = make_settings(
        database_url=pg_url,
        redis_url=REDIS_URL,
        redis_namespace=redis_namespace,
        allow_private_endpoints=True,
    )
    flask_app = create_app(settings, engine=pg_engine)
    flask_app.testing = False  # an exception is answered 500 and logged, as in production
    client = flask_app.test_client()
    user = create_account(pg_engine, "alice")
    operator = create_account(pg_engine, "olga", operator=True)
    task = client.post("/tasks", json={"title": "t", "due_at": DUE}, headers=user.headers)
    # Nothing listens on the discard port: were a ping sent, it would fail on 127.0.0.1.
    endpoint = client.post(
        "/endpoints", json={"url": "http://127.0.0.1:9/hook"}, headers=user.headers
    )
    assert task.status_code == 201 and endpoint.status_code == 201
    routes = sorted(
        (method, rule.rule)
        for rule in flask_app.url_map.iter_rules()
        for method in rule.methods or ()
        if method in BODY_METHODS and rule.endpoint.rpartition(".")[0] not in FORM_BLUEPRINTS
    )
    yield App(
        client,
        routes,
        user,
        operator,
        {
            "task_id": task.json["id"],
            "endpoint_id": endpoint.json["id"],
            "message_id": str(uuid.uuid4()),
        },
    )


def test_every_route_that_reads_json_is_checked(app: App) -> None:
    assert {f"{method} {rule}" for method, rule in app.json_routes} >= KNOWN_JSON_ROUTES


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 1_000, 20_000])
def test_a_body_nested_past_the_limit_is_a_400_on_every_json_route(
    app: App, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    answers = {}
    bodies = {shape.__name__: shape(depth) for shape in (nested_array, nested_object)}
    fitting = {name: body for name, body in bodies.items() if len(body) <= MAX_BODY_BYTES}
    assert "nested_array" in fitting
    for name, body in fitting.items():
        for method, rule in app.json_routes:
            response = app.send(method, rule, body)
            answers[f"{method} {rule} {name}"] = (
                response.status_code,
                response.mimetype,
                response.get_json(silent=True, force=True) or {},
            )

    wrong = {
        what: answer
        for what, answer in answers.items()
        if answer[:2] != (400, PROBLEM) or f"{MAX_DEPTH} levels" not in answer[2].get("detail", "")
    }
    assert not wrong, wrong
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, errors[:3]


def test_a_body_at_the_limit_is_validated_as_usual(app: App) -> None:
    """``MAX_DEPTH`` levels is still read: the schema, not the depth, refuses the title."""
    at_limit = app.send("POST", "/tasks", nested_array(MAX_DEPTH))
    past_limit = app.send("POST", "/tasks", nested_array(MAX_DEPTH + 1))

    assert at_limit.status_code == 422, at_limit.get_data(as_text=True)
    assert {error["field"] for error in at_limit.json["errors"]} == {"title", "due_at"}
    assert past_limit.status_code == 400, past_limit.get_data(as_text=True)


def test_a_deep_value_in_a_valid_task_is_refused_and_creates_nothing(app: App) -> None:
    deep = nested_array(1_000)[len('{"title": ') : -1]
    body = f'{{"title": "t", "due_at": "{DUE}", "notes": {deep}}}'

    response = app.send("POST", "/tasks", body)

    assert response.status_code == 400, response.get_data(as_text=True)
    listed = app.client.get("/tasks", headers=app.user.headers).json["items"]
    assert len(listed) == 1  # only the fixture's task
