"""Every 4xx answer explains itself to the client, never with the server's internals.

Each ``detail``, and each ``errors[].message`` of a 422, is a sentence written for whoever
sent the request: what the field must be, not pydantic's phrasing ("Value error, ...",
"Input should be a valid dictionary or instance of TaskCreate"), not a regular expression
the value failed, not a Python exception's text ("'ascii' codec can't encode ..."). A broad
set of bad inputs is sent across the routes (task and endpoint bodies, snooze, the operator
API, query parameters, headers, bodies that are not objects, too large or not JSON) and
every answer is read.
"""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from api.app import create_app
from tests.conftest import REDIS_URL, Account, create_account, make_settings

DUE = "2030-01-31T09:00:00Z"
TASK = {"title": "t", "due_at": DUE}
# What a message must not show: pydantic's own phrasing and prefixes, Python's exception
# names and reprs, and the regular expressions of the schemas.
INTERNALS = re.compile(
    r"Value error|Assertion failed|Input should|instance of|pydantic|input_value|input_type"
    r"|Traceback|codec|ordinal not in range|object at 0x|<class|\b[A-Z]\w*(?:Error|Exception)\b"
    r"|\\[xsSdDwWu]|\^\[|\]\*|\]\+|\$$|\(\?"
)
MODEL_NAMES = re.compile(r"\b(?:Task|Endpoint|Snooze|BulkRetry|DeadLetter|Create|History)\w+\b")


@dataclass
class Walk:
    client: Any
    user: Account
    operator: Account
    task: str
    endpoint: str
    patterns: set[str]  # every regular expression of the OpenAPI document
    answers: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)

    def send(self, what: str, method: str, url: str, **options: Any) -> None:
        headers = options.pop("headers", None)
        if headers is None:
            headers = (self.operator if url.startswith("/ops") else self.user).headers
        response = self.client.open(url, method=method, headers=headers, **options)
        self.keep(what, response)

    def keep(self, what: str, response: Any) -> None:
        document = response.get_json(silent=True, force=True)
        assert isinstance(document, dict), (what, response.status_code, response.data[:200])
        self.answers.append((what, response.status_code, document))


@pytest.fixture
def walk(pg_engine: Engine, pg_url: str, redis_namespace: str) -> Iterator[Walk]:
    settings = make_settings(
        database_url=pg_url, redis_url=REDIS_URL, redis_namespace=redis_namespace
    )
    app = create_app(settings, engine=pg_engine)
    app.testing = False  # an exception is a 500 answer, as in production
    client = app.test_client()
    user = create_account(pg_engine, "alice")
    operator = create_account(pg_engine, "olga", operator=True)
    task = client.post("/tasks", json=TASK, headers=user.headers)
    # An address, not a host name: saving it sends no DNS query.
    endpoint = client.post(
        "/endpoints", json={"url": "https://93.184.215.14/hook"}, headers=user.headers
    )
    assert task.status_code == 201 and endpoint.status_code == 201, endpoint.data
    yield Walk(
        client, user, operator, task.json["id"], endpoint.json["id"], set(patterns(app.api_doc))
    )


def patterns(document: Any) -> Iterator[str]:
    """The value of every ``pattern`` keyword in ``document``."""
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from patterns(value)
    elif isinstance(document, list):
        for item in document:
            yield from patterns(item)


def bad_bodies(walk: Walk) -> Iterator[tuple[str, str, str, Any]]:
    """(what, method, url, JSON body) of requests whose body is wrong."""
    tasks, task, endpoint = "/tasks", f"/tasks/{walk.task}", f"/endpoints/{walk.endpoint}"
    for name, body in {
        "title with NUL": {**TASK, "title": "a\u0000b"},
        "blank title": {**TASK, "title": "   "},
        "empty title": {**TASK, "title": ""},
        "long title": {**TASK, "title": "x" * 201},
        "numeric title": {**TASK, "title": 5},
        "null title": {**TASK, "title": None},
        "no title, no due_at": {},
        "notes with NUL": {**TASK, "notes": "\u0000"},
        "long notes": {**TASK, "notes": "x" * 10_001},
        "due_at a year": {**TASK, "due_at": "2030"},
        "due_at a number": {**TASK, "due_at": 1_900_000_000},
        "naive due_at": {**TASK, "due_at": "2030-01-31T09:00:00"},
        "due_at February 30": {**TASK, "due_at": "2030-02-30T09:00:00Z"},
        "due_at in year 1": {**TASK, "due_at": "0001-01-01T00:00:00Z"},
        "due_at bad hour": {**TASK, "due_at": "2030-01-31T25:00:00Z"},
        "unknown zone": {**TASK, "time_zone": "Mars/Olympus"},
        "empty zone": {**TASK, "time_zone": ""},
        "null zone": {**TASK, "time_zone": None},
        "bad rule": {**TASK, "recurrence": "FREQ=SOMETIMES"},
        "rule with prefix": {**TASK, "recurrence": "RRULE:FREQ=DAILY"},
        "too frequent rule": {**TASK, "recurrence": "FREQ=SECONDLY"},
        "no reminders": {**TASK, "reminders": []},
        "short offset": {**TASK, "reminders": [1]},
        "repeated offsets": {**TASK, "reminders": [600, 600]},
        "six offsets": {**TASK, "reminders": [60, 120, 180, 240, 300, 360]},
        "offset as text": {**TASK, "reminders": ["600"]},
        "reminders not a list": {**TASK, "reminders": 600},
        "both offset forms": {**TASK, "reminders": [600], "remind_before_seconds": 600},
        "fractional offset": {**TASK, "remind_before_seconds": 3600.5},
        "boolean offset": {**TASK, "remind_before_seconds": True},
        "offset too long": {**TASK, "remind_before_seconds": 10**12},
        "endpoint not a UUID": {**TASK, "endpoint_id": "nope"},
        "unknown endpoint": {**TASK, "endpoint_id": str(uuid.uuid4())},
        "unknown field": {**TASK, "colour": "red"},
    }.items():
        yield f"POST /tasks {name}", "POST", tasks, body
    for name, body in {
        "unknown status": {"status": "maybe"},
        "null title": {"title": None},
        "null due_at": {"due_at": None},
        "title with NUL": {"title": "\u0000"},
        "unknown field": {"id": str(uuid.uuid4())},
    }.items():
        yield f"PATCH /tasks/{{id}} {name}", "PATCH", task, body
    for name, body in {
        "neither": {},
        "both": {"until": DUE, "seconds": 600},
        "too soon": {"seconds": 10},
        "too late": {"seconds": 30 * 86400},
        "until not a time": {"until": "tomorrow"},
        "until too far": {"until": DUE},
        "seconds as text": {"seconds": "600"},
    }.items():
        yield f"POST /tasks/{{id}}/snooze {name}", "POST", f"{task}/snooze", body
    for name, body in {
        "ftp URL": {"url": "ftp://hooks.example/x"},
        "empty URL": {"url": ""},
        "URL with a space": {"url": "https://hooks.example/a b"},
        "URL without host": {"url": "https:///path"},
        "URL on loopback": {"url": "https://127.0.0.1/hook"},
        "URL with credentials": {"url": "https://me:pw@93.184.215.14/hook"},
        "URL too long": {"url": "https://93.184.215.14/" + "x" * 2048},
        "description with NUL": {"url": "https://93.184.215.14/", "description": "\u0000"},
        "no URL": {},
        "unknown field": {"url": "https://93.184.215.14/", "secret": "mine"},
        "concurrency as text": {"url": "https://93.184.215.14/", "max_concurrency": "8"},
        "fractional concurrency": {"url": "https://93.184.215.14/", "max_concurrency": 1.5},
        "rate as a boolean": {"url": "https://93.184.215.14/", "max_per_second": True},
        "rate not finite": {"url": "https://93.184.215.14/", "max_per_second": float("nan")},
        "rate too high": {"url": "https://93.184.215.14/", "max_per_second": 1001},
    }.items():
        yield f"POST /endpoints {name}", "POST", "/endpoints", body
    for name, body in {
        "enabled as text": {"enabled": "yes"},
        "null URL": {"url": None},
        "ftp URL": {"url": "ftp://x"},
        "null concurrency": {"max_concurrency": None},
        "no concurrency": {"max_concurrency": 0},
        "rate of zero": {"max_per_second": 0},
        "rate as text": {"max_per_second": "0.5"},
    }.items():
        yield f"PATCH /endpoints/{{id}} {name}", "PATCH", endpoint, body
    for name, body in {
        "everything wrong": {
            "dry_run": "yes",
            "error_type": "not a type",
            "older_than_seconds": -1.5,
            "extra": 1,
        },
        "error type starting with a digit": {"error_type": "1Error"},
    }.items():
        yield f"POST /ops/dead-letters/retry {name}", "POST", "/ops/dead-letters/retry", body
    for shape, body in {"an array": [], "a string": "abc", "JSON text in a string": '{"a": 1}',
                        "a number": 5, "null": None}.items():  # fmt: skip
        yield f"POST /tasks with {shape} as the body", "POST", tasks, body
        yield f"POST /endpoints with {shape} as the body", "POST", "/endpoints", body
        yield f"snooze with {shape} as the body", "POST", f"{task}/snooze", body


def bad_queries(walk: Walk) -> Iterator[tuple[str, str]]:
    """(what, URL with a bad query string)."""
    task, endpoint = f"/tasks/{walk.task}", f"/endpoints/{walk.endpoint}"
    for query in [
        "limit=abc",
        "limit=0",
        "limit=201",
        "limit=%2B5",
        "limit=1.5",
        "limit=",
        "status=maybe",
        "due_after=yesterday",
        "due_after=2030-01-31T09:00:00",
        "due_before=2030-02-30T00:00:00Z",
        "cursor=garbage",
        "cursor=" + "x" * 201,
        "colour=red",
    ]:
        yield f"GET /tasks?{query}", f"/tasks?{query}"
    yield "occurrences", f"{task}/occurrences?after=soon&limit=101"
    yield "reminders", f"{task}/reminders?cursor=nope&limit=-1"
    yield "endpoints", "/endpoints?limit=x&cursor=%00"
    yield "attempts", f"{endpoint}/attempts?cursor=!"
    yield (
        "dead letters",
        "/ops/dead-letters?error_type=1abc&older_than_seconds=-5&newer_than_seconds=x",
    )
    yield "dead letters cursor", "/ops/dead-letters?cursor=nope"


IDEMPOTENCY_KEYS = [
    "\u00e9t\u00e9",  # non-ASCII, bare
    '"\u00e9t\u00e9"',  # non-ASCII, quoted
    '"abc',  # unterminated string
    '"a\\x"',  # a backslash before a letter
    '"a" b',  # something after the string
    '"a";;',  # a stray delimiter
    "a, b",  # two keys (two header lines arrive joined)
    '""',  # empty string
    "k" * 256,  # too long, bare
    '"' + "k" * 256 + '"',  # too long, quoted
    "a\u007fb",  # DEL
]


def chunked(body: bytes, headers: dict[str, str]) -> Request:
    """What a server that decodes chunked framing hands the app: no length, a terminated input."""
    environ = EnvironBuilder(
        path="/tasks",
        method="POST",
        headers={**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})
    return Request(environ)


def test_no_4xx_answer_shows_internals(walk: Walk) -> None:
    for what, method, url, body in bad_bodies(walk):
        walk.send(what, method, url, data=json.dumps(body), content_type="application/json")
    for what, url in bad_queries(walk):
        walk.send(what, "GET", url)
    for key in IDEMPOTENCY_KEYS:
        headers = {**walk.user.headers, "Idempotency-Key": key}
        walk.send(
            f"POST /tasks Idempotency-Key {key!r}", "POST", "/tasks", json=TASK, headers=headers
        )
        walk.send(
            f"snooze Idempotency-Key {key!r}",
            "POST",
            f"/tasks/{walk.task}/snooze",
            json={"seconds": 600},
            headers=headers,
        )
    big = json.dumps({**TASK, "notes": "x" * 70_000}).encode()
    walk.send(
        "a body over 64 KiB with a length",
        "POST",
        "/tasks",
        data=big,
        content_type="application/json",
    )
    walk.keep("a chunked body over 64 KiB", walk.client.open(chunked(big, walk.user.headers)))
    for what, data, content_type in [
        ("not JSON", b'{"title": ', "application/json"),
        ("not UTF-8", b'{"title": "\xff"}', "application/json"),
        ("text/plain", b"{}", "text/plain"),
        ("nested too deep", b"[" * 5_000 + b"]" * 5_000, "application/json"),
    ]:
        walk.send(what, "POST", "/tasks", data=data, content_type=content_type)
    walk.send("no token", "GET", "/tasks", headers={})
    walk.send("a user on /ops", "GET", "/ops/queues", headers=walk.user.headers)
    walk.send("no such route", "GET", "/nowhere")
    walk.send("a method the route lacks", "PUT", "/tasks")
    walk.send("no such task", "GET", f"/tasks/{uuid.uuid4()}")

    shown = []
    for what, status, document in walk.answers:
        assert 400 <= status < 500, (what, status, document)
        texts = [document["detail"]] + [error["message"] for error in document.get("errors", [])]
        for text in texts:
            assert isinstance(text, str) and text.strip(), (what, document)
            if (
                INTERNALS.search(text)
                or MODEL_NAMES.search(text)
                or any(pattern in text for pattern in walk.patterns)
            ):
                shown.append((what, text))
    assert not shown, "\n".join(f"{what}: {text}" for what, text in shown)
