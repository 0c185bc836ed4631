"""Property-based fuzzing of every operation in ``/openapi.json`` (Schemathesis).

SPEC §6: the API speaks JSON, errors are ``application/problem+json``, and ``GET
/openapi.json`` is "the OpenAPI 3 document of all of the above": a client generated from
the document must be able to trust it. For every operation the document lists,
Schemathesis generates requests from the document itself, valid ones (positive) and ones
the document calls invalid (negative), sends them to the real app (PostgreSQL and Redis,
a fresh schema and namespace per test) with a valid token (a user's for ``/tasks``, an
operator's for ``/ops``), and checks every answer:

- no 5xx (``not_a_server_error``);
- the status code is documented for the operation (``status_code_conformance``);
- the content type is documented for that status (``content_type_conformance``);
- the headers documented as required are there and match (``response_headers_conformance``);
- the body validates against the documented schema (``response_schema_conformance``).

Data is seeded first (the caller's tasks, one of them done, and a dead letter made by a
real worker whose webhook is unreachable), and a share of the positive cases aim at those
ids, so reads, updates, deletes, retries and discards that *hit* are fuzzed, not only 404s.

Generation is bounded (``MAX_EXAMPLES`` per operation and mode) and derandomized, so a run
is reproducible and a failure names the operation and the request (as ``curl``).

Answers that generated requests rarely or never provoke, because the app-wide hooks give
them before an operation runs (401, 403, 429, 413, 415, 400, and 503 when the database
connection is lost), are provoked on every operation and checked the same way.

Last, Schemathesis's own runner makes a whole run against the app served on 127.0.0.1, with
every check and every phase, stateful sequences included (`FULL_RUN_CONFIG` says which
documented answers two of its checks must accept, and why).

What fuzzing found is pinned by the targeted tests at the end, each with the exact input:
date-times at the edge of the representable range and NUL characters (both once 500s),
and operator-page answers the document did not describe.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import psycopg
import pytest
import schemathesis
from dramatiq import Worker
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import Engine, select
from werkzeug.serving import make_server

from shared.broker.queue import make_broker
from shared.delivery.webhooks import WebhookSender
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import Reminder
from tests.conftest import PG_URL, REDIS_URL, Account, create_account, make_settings
from workers.actors import Pipeline, declare_actors
from workers.channels import make_channel
from workers.producer import scan_due_tasks

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

MAX_EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Nothing listens on the discard port: the delivery fails and, with no retries, the seeded
# reminder is dead-lettered for real (row ``failed``, broker entry with a traceback).
UNREACHABLE_WEBHOOK = "http://127.0.0.1:9/hook"
HTTP_METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}
SIGN_IN = ("POST", "/ops/sign-in")
PAGE_RETRY = ("POST", "/ops/page/dead-letters/{message_id}/retry")
PAGE_DISCARD = ("POST", "/ops/page/dead-letters/{message_id}/discard")


# -- the document's operations, read at collection time ----------------------------------


def _document_operations() -> list[tuple[str, str, bool]]:
    """(method, path, has inputs) of every operation in the document.

    Building the app opens no connection (the engine and the Redis client connect
    lazily), so the list comes from the same code that serves ``/openapi.json``.
    """
    from api.app import create_app

    app = create_app(
        make_settings(database_url="postgresql+psycopg://collect@127.0.0.1:1/x", rate_limit="")
    )
    return sorted(
        (method.upper(), path, bool(operation.get("parameters") or operation.get("requestBody")))
        for path, item in app.api_doc["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    )


OPERATIONS = _document_operations()


# -- the app and its seed data -----------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    app: Any
    user: Account
    operator: Account
    task_ids: list[str]
    dead_letter_ids: list[str]
    endpoint_ids: list[str]

    def headers_for(self, path: str) -> dict[str, str]:
        return (self.operator if path.startswith("/ops") else self.user).headers


@pytest.fixture
def app(pg_engine: Engine, pg_url: str, redis_namespace: str) -> Any:
    """The real app, on this test's schema and Redis namespace, rate limit off."""
    from api.app import create_app

    settings = make_settings(
        database_url=pg_url,
        redis_url=REDIS_URL,
        redis_namespace=redis_namespace,
        rate_limit="",
        allow_private_endpoints=True,  # so that generated URLs can be saved
    )
    # Generated endpoint URLs are never resolved (every name is 127.0.0.1) nor called: a
    # test ping goes to a transport that answers without any network.
    offline = httpx.Client(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(204, stream=httpx.ByteStream(b""))
        )
    )
    return create_app(
        settings,
        engine=pg_engine,
        resolve=lambda host, port: ["127.0.0.1"],
        endpoint_sender=WebhookSender(1.0, client=offline),
    )


def _dead_letter(engine: Engine, database_url: str, namespace: str) -> str:
    """Dead-letter the one due reminder with a real worker (webhook unreachable, no retry)."""
    settings = make_settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_namespace=namespace,
        webhook_url=UNREACHABLE_WEBHOOK,
        webhook_secret="fuzz-secret",
        webhook_timeout_seconds=1,
        max_retries=0,
        min_backoff_ms=10,
        max_backoff_ms=20,
    )
    sessions = make_session_factory(engine)
    broker = make_broker(settings)
    pipeline = Pipeline(sessions=sessions, channel=make_channel(settings), settings=settings)
    declare_actors(broker, pipeline)
    try:
        # The API enqueued it as it created it (due at once); a scan finds it queued.
        scan_due_tasks(sessions, broker, settings)
        with unit_of_work(sessions) as session:
            [message_id] = session.scalars(
                select(Reminder.message_id).where(Reminder.state == "queued")
            ).all()
        worker = Worker(broker, worker_threads=1, worker_timeout=100)
        worker.start()
        try:
            deadline = time.monotonic() + 30
            states: list[str] = []
            while time.monotonic() < deadline:
                with unit_of_work(sessions) as session:
                    states = list(session.scalars(select(Reminder.state)))
                if "failed" in states:
                    break
                time.sleep(0.05)
            assert states.count("failed") == 1, states
        finally:
            worker.stop()
    finally:
        broker.close()
    return str(message_id)


@pytest.fixture
def seeded(app: Any, pg_engine: Engine, pg_url: str, redis_namespace: str) -> Seeded:
    user = create_account(pg_engine, "fuzz-user")
    operator = create_account(pg_engine, "fuzz-operator", operator=True)
    client = app.test_client()
    now = datetime.now(UTC).replace(microsecond=0)
    bodies: list[dict[str, Any]] = [
        # Due in 30 minutes, reminded an hour before: due now, it becomes the dead letter.
        {"title": "due now", "due_at": f"{now + timedelta(minutes=30):%Y-%m-%dT%H:%M:%SZ}",
         "remind_before_seconds": 3600},
        {"title": "next week", "notes": "n", "due_at": (now + timedelta(days=7)).isoformat()},
        {"title": "next month", "due_at": (now + timedelta(days=30)).isoformat(),
         "remind_before_seconds": 600},
    ]  # fmt: skip
    task_ids = []
    for body in bodies:
        response = client.post("/tasks", json=body, headers=user.headers)
        assert response.status_code == 201, response.get_data(as_text=True)
        task_ids.append(response.json["id"])
    endpoint = client.post("/endpoints", json={"url": "https://hooks.fuzz/x"}, headers=user.headers)
    assert endpoint.status_code == 201, endpoint.get_data(as_text=True)
    dead = _dead_letter(pg_engine, pg_url, redis_namespace)
    done = client.patch(f"/tasks/{task_ids[2]}", json={"status": "done"}, headers=user.headers)
    assert done.status_code == 200, done.get_data(as_text=True)
    return Seeded(app, user, operator, task_ids, [dead], [endpoint.json["id"]])


# -- the fuzz run ------------------------------------------------------------------------


def _strategy(operation: Any, mode: GenerationMode, seeded: Seeded) -> Any:
    """Generated cases; in positive mode also cases whose path names a seeded id."""
    strategies = [operation.as_strategy(generation_mode=mode)]
    if mode is GenerationMode.POSITIVE:
        names = {parameter.name for parameter in operation.path_parameters}
        seeds = {
            "task_id": seeded.task_ids,
            "message_id": seeded.dead_letter_ids,
            "endpoint_id": seeded.endpoint_ids,
        }
        for name, ids in seeds.items():
            if name in names:
                strategies += [
                    operation.as_strategy(generation_mode=mode, path_parameters={name: value})
                    for value in ids
                ]
    return st.one_of(strategies)


def _params() -> list[Any]:
    params = []
    for method, path, has_inputs in OPERATIONS:
        # An operation without parameters or body has no invalid input to send.
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_inputs else [])
        params += [
            pytest.param(method, path, mode, id=f"{method} {path} {mode.value}") for mode in modes
        ]
    return params


@pytest.mark.parametrize(("method", "path", "mode"), _params())
def test_operation_answers_as_documented(
    seeded: Seeded, method: str, path: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", seeded.app)
    operation = schema[path][method]
    headers = seeded.headers_for(path)
    statuses: dict[int, int] = {}

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=_strategy(operation, mode, seeded))
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    run()

    # The run was not vacuous: requests were answered, and valid ones with a valid token
    # reached the operation (2xx/3xx at least once, never refused for the token).
    assert sum(statuses.values()) > 0
    if mode is GenerationMode.POSITIVE and (method, path) != SIGN_IN:
        assert any(200 <= status < 400 for status in statuses), statuses
        assert not {401, 403} & set(statuses), statuses


def test_every_operation_of_the_document_is_fuzzed() -> None:
    operations = {(method, path) for method, path, _ in OPERATIONS}
    expected = {
        ("POST", "/tasks"),
        ("GET", "/tasks"),
        ("GET", "/tasks/{task_id}"),
        ("PATCH", "/tasks/{task_id}"),
        ("DELETE", "/tasks/{task_id}"),
        ("GET", "/tasks/{task_id}/reminders"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/ops/dead-letters"),
        ("GET", "/ops/dead-letters/{message_id}"),
        ("POST", "/ops/dead-letters/{message_id}/retry"),
        ("POST", "/ops/dead-letters/retry"),
        ("DELETE", "/ops/dead-letters/{message_id}"),
        ("GET", "/ops/queues"),
        ("GET", "/ops/receivers"),
        ("GET", "/ops"),
        ("POST", "/endpoints"),
        ("GET", "/endpoints/{endpoint_id}/attempts"),
        ("POST", "/endpoints/{endpoint_id}/test"),
    }
    assert expected <= operations, sorted(expected - operations)


# -- the hooks' answers, provoked on every operation -------------------------------------

PUBLIC = {
    ("GET", "/favicon.ico"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/ops/sign-in"),
    ("POST", "/ops/sign-in"),
    ("POST", "/ops/sign-out"),
}
NOT_RATE_LIMITED = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/favicon.ico"),
}
OPERATOR_JSON = ("/ops/dead-letters", "/ops/queues", "/ops/receivers")
OVER_64_KIB = b'{"title": "' + b"t" * 70_000 + b'"}'
# A provoked 503 is the answer asked for: every check but "no 5xx".
HOOK_CHECKS = [check for check in CHECKS if check is not not_a_server_error]


@dataclass(frozen=True)
class Hooked:
    """The app twice on one schema: as configured for fuzzing, and limited to 1 request."""

    app: Any
    limited_app: Any
    user: Account
    operator: Account
    schema: str  # the PostgreSQL schema, also the application_name of the app's connections

    def headers_for(self, path: str) -> dict[str, str]:
        return (self.operator if path.startswith("/ops") else self.user).headers


@pytest.fixture
def hooked(pg_engine: Engine, pg_url: str, redis_namespace: str) -> Hooked:
    from api.app import create_app

    def build(rate_limit: str) -> Any:
        settings = make_settings(
            database_url=pg_url,
            redis_url=REDIS_URL,
            redis_namespace=redis_namespace,
            rate_limit=rate_limit,
        )
        return create_app(settings, engine=pg_engine)

    return Hooked(
        app=build(""),
        limited_app=build("1/hour"),
        user=create_account(pg_engine, "hooked-user"),
        operator=create_account(pg_engine, "hooked-operator", operator=True),
        schema=pg_url.rsplit("application_name=", 1)[1],
    )


def _with_database_connection_lost(schema: str, send: Callable[[], Any]) -> Any:
    """``send()``'s answer when every connection it uses dies under it.

    The token lookup, every guarded request's first query, waits on a lock held here and its
    connection is then terminated, as a database restart would; so is the one fresh
    connection authentication retries on.
    """
    answers: list[Any] = []
    with psycopg.connect(PG_URL, options=f"-csearch_path={schema}") as blocker:
        blocker.execute("LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE")
        request = threading.Thread(target=lambda: answers.append(send()))
        request.start()
        deadline = time.monotonic() + 20
        while request.is_alive() and time.monotonic() < deadline:
            with psycopg.connect(PG_URL, autocommit=True) as killer:
                killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (schema,),
                )
            request.join(timeout=0.05)
        blocker.rollback()
    request.join(timeout=10)
    [answer] = answers
    return answer


@pytest.mark.parametrize(
    ("method", "path"), [pytest.param(m, p, id=f"{m} {p}") for m, p, _ in OPERATIONS]
)
def test_every_answer_of_the_app_wide_hooks_is_documented(
    hooked: Hooked, method: str, path: str
) -> None:
    """401/303, 403, 429, 413, 415, 400 and 503, where each applies: as documented."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", hooked.app)
    names = [parameter.name for parameter in schema[path][method].path_parameters]
    path_parameters = {name: str(uuid.uuid4()) for name in names}
    case = schema[path][method].Case(path_parameters=path_parameters)
    url = path.format(**path_parameters)
    json_api = path.startswith(("/tasks", "/endpoints", *OPERATOR_JSON))
    guarded = (method, path) not in PUBLIC
    takes_body = method in {"POST", "PATCH", "PUT"}
    own = hooked.headers_for(path)

    def send(app: Any = hooked.app, headers: dict[str, str] = own, **options: Any) -> Any:
        return app.test_client().open(url, method=method, headers=headers, **options)

    provoked: list[tuple[str, int, Any, dict[str, str]]] = []
    if guarded:
        provoked.append(("no token", 401 if json_api else 303, send(headers={}), {}))
        lost = _with_database_connection_lost(hooked.schema, send)
        provoked.append(("database connection lost", 503, lost, own))
    if path.startswith("/ops") and guarded:
        provoked.append(("a user's token", 403, send(headers=hooked.user.headers), {}))
    if (method, path) == ("POST", "/ops/sign-in"):
        form = {"data": {"token": hooked.operator.token}}
        lost = _with_database_connection_lost(hooked.schema, lambda: send(headers={}, **form))
        provoked.append(("database connection lost", 503, lost, {}))
    if (method, path) not in NOT_RATE_LIMITED:
        send(app=hooked.limited_app)
        provoked.append(("over the rate limit", 429, send(app=hooked.limited_app), own))
    if takes_body:
        big = send(data=OVER_64_KIB, content_type="application/json")
        provoked.append(("a body over 64 KiB", 413, big, own))
    if takes_body and json_api:
        text = send(data="{}", content_type="text/plain")
        provoked.append(("a text/plain body", 415, text, own))
        broken = send(data='{"title": ', content_type="application/json")
        provoked.append(("malformed JSON", 400, broken, own))

    assert provoked or (method, path) in {
        ("GET", "/favicon.ico"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
    }
    for what, status, response, headers in provoked:
        assert response.status_code == status, (what, response.get_data(as_text=True)[:300])
        try:
            case.validate_response(response, checks=HOOK_CHECKS, headers=headers)
        except Exception as exc:
            raise AssertionError(f"{method} {path}, {what}: {exc}") from exc


# -- findings, pinned with the exact input -----------------------------------------------

DUE = "2030-01-31T09:00:00Z"
DATES = {"due_at", "due_after", "due_before"}


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "fields"),
    [
        # FINDING 1
        pytest.param(
            "POST", "/tasks", {}, {"title": "t", "due_at": "0001-01-01T00:00:00Z"}, DATES,
            id="POST /tasks due_at=0001-01-01T00:00:00Z",
        ),
        pytest.param(
            "POST", "/tasks", {}, {"title": "t", "due_at": "9999-12-31T23:59:59-01:00"}, DATES,
            id="POST /tasks due_at=9999-12-31T23:59:59-01:00",
        ),
        pytest.param(
            "PATCH", "/tasks/{task_id}", {}, {"due_at": "0001-01-01T00:00:00Z"}, DATES,
            id="PATCH /tasks/{id} due_at=0001-01-01T00:00:00Z",
        ),
        pytest.param(
            "PATCH", "/tasks/{task_id}", {}, {"due_at": "9999-12-31T23:59:59-01:00"}, DATES,
            id="PATCH /tasks/{id} due_at=9999-12-31T23:59:59-01:00",
        ),
        pytest.param(
            "GET", "/tasks", {"due_after": "0001-01-01T00:00:00+01:00"}, None, DATES,
            id="GET /tasks due_after=0001-01-01T00:00:00+01:00",
        ),
        pytest.param(
            "GET", "/tasks", {"due_before": "9999-12-31T23:59:59-01:00"}, None, DATES,
            id="GET /tasks due_before=9999-12-31T23:59:59-01:00",
        ),
        # FINDING 5
        pytest.param(
            "POST", "/tasks", {}, {"title": "a\u0000b", "due_at": DUE}, {"title"},
            id="POST /tasks title with U+0000",
        ),
        pytest.param(
            "POST", "/tasks", {}, {"title": "t", "notes": "\u0000", "due_at": DUE}, {"notes"},
            id="POST /tasks notes with U+0000",
        ),
        pytest.param(
            "PATCH", "/tasks/{task_id}", {}, {"title": "a\u0000b"}, {"title"},
            id="PATCH /tasks/{id} title with U+0000",
        ),
        pytest.param(
            "PATCH", "/tasks/{task_id}", {}, {"notes": "\u0000"}, {"notes"},
            id="PATCH /tasks/{id} notes with U+0000",
        ),
        # Controls: neighbouring inputs that work, answered as documented.
        pytest.param(
            "POST", "/tasks", {}, {"title": "t", "due_at": "9999-12-31T23:59:59Z",
                                   "remind_before_seconds": 60}, DATES,
            id="control POST /tasks due_at=9999-12-31T23:59:59Z",
        ),
        pytest.param(
            "GET", "/tasks", {"due_after": "0001-01-01T00:00:00Z"}, None, DATES,
            id="control GET /tasks due_after=0001-01-01T00:00:00Z",
        ),
        pytest.param(
            "PATCH", "/tasks/{task_id}", {}, {"notes": "tab\there, U+0001 \u0001"}, {"notes"},
            id="control PATCH /tasks/{id} notes with control characters",
        ),
    ],
)  # fmt: skip
def test_valid_input_is_answered_as_documented_not_500(
    seeded: Seeded,
    method: str,
    path: str,
    query: dict[str, str],
    body: dict[str, Any] | None,
    fields: set[str],
) -> None:
    """FINDINGS 1 and 5. Expected: 2xx, or a 422 problem naming the field; never 500."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", seeded.app)
    operation = schema[path][method]
    path_parameters = {"task_id": seeded.task_ids[1]} if "{task_id}" in path else {}
    case = operation.Case(
        path_parameters=path_parameters,
        query=query or None,
        **({"body": body} if body is not None else {}),
    )
    # Flask's own client, so a server error is seen as the 500 a client gets (Schemathesis
    # re-raises the server's exception instead).
    response = seeded.app.test_client().open(
        path.format(**path_parameters),
        method=method,
        query_string=query,
        json=body,
        headers=seeded.user.headers,
    )

    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    case.validate_response(response, checks=CHECKS, headers=seeded.user.headers)
    if response.status_code == 422:
        named = {error["field"] for error in response.json["errors"]}
        assert named & fields, response.json


@pytest.mark.parametrize(
    ("method", "path", "request_data", "status"),
    [
        pytest.param(
            "GET", "/ops", {"query": {"error_type": "9-not-an-error-type"}}, 422,
            id="GET /ops bad error_type -> 422",
        ),
        pytest.param(
            *SIGN_IN, {"body": {"token": ""}, "media_type": "multipart/form-data"}, 422,
            id="POST /ops/sign-in empty token -> 422",
        ),
        pytest.param(
            *SIGN_IN, {"body": {"token": "not-a-token"}, "media_type": "multipart/form-data"},
            401,
            id="POST /ops/sign-in unknown token -> 401",
        ),
        pytest.param(
            *PAGE_RETRY, {"path_parameters": {"message_id": "not-a-uuid"}}, 404,
            id="POST /ops/page/.../retry non-UUID -> 404",
        ),
        pytest.param(
            *PAGE_DISCARD, {"path_parameters": {"message_id": "not-a-uuid"}}, 404,
            id="POST /ops/page/.../discard non-UUID -> 404",
        ),
        # Controls: the JSON API's answers to the same kinds of mistakes conform.
        pytest.param(
            "GET", "/ops/dead-letters", {"query": {"error_type": "9-not-an-error-type"}}, 422,
            id="control GET /ops/dead-letters bad error_type -> 422",
        ),
        pytest.param(
            "GET", "/ops/dead-letters/{message_id}",
            {"path_parameters": {"message_id": "not-a-uuid"}}, 404,
            id="control GET /ops/dead-letters/non-UUID -> 404",
        ),
    ],
)  # fmt: skip
def test_operator_answers_as_documented(
    seeded: Seeded, method: str, path: str, request_data: dict[str, Any], status: int
) -> None:
    """FINDINGS 2-4: each answer's status and content type must be in the document."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", seeded.app)
    case = schema[path][method].Case(**request_data)

    response = case.call(headers=seeded.operator.headers)

    assert response.status_code == status, response.text[:300]
    case.validate_response(response, checks=CHECKS, headers=seeded.operator.headers)


# -- a whole Schemathesis run: every check, every phase, stateful included ---------------

FULL_RUN_EXAMPLES = 10
FULL_RUN_SECONDS = 600
# Two checks are told what this API's documented answers mean:
# - positive_data_acceptance: a request the schema admits may still be a 422 for a rule no
#   JSON Schema can state: a cursor this API did not hand out, a time zone that does not
#   exist, a recurrence that never fires, a snooze 60 s to 7 days from *now*, an endpoint
#   URL that does not resolve to an allowed address. Each is a documented 422 problem.
# - negative_data_rejection, on the operator page's forms: a form value is text, so a
#   "wrong type" Schemathesis generates (an object for a string) arrives as valid text.
FULL_RUN_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-path-regex = "^/ops/(page/|sign-)"
checks.negative_data_rejection.enabled = false
"""


def test_a_full_schemathesis_run_reports_no_failure(seeded: Seeded, tmp_path: Path) -> None:
    """Schemathesis's own runner, as a third party would run it, against the app served on
    127.0.0.1, with its default of every check (server errors, undocumented statuses,
    headers and bodies,
    positive data accepted and negative data refused, unsupported methods, use after
    free, resource availability, ignored authentication), in every phase (the document's
    examples, coverage, fuzzing, and stateful sequences along the links it infers from
    Location headers and ids). Bounded and seeded, so a failure reproduces."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(FULL_RUN_CONFIG)
    server = make_server("127.0.0.1", 0, seeded.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                f"--config-file={config}",
                "run",
                f"http://127.0.0.1:{server.server_port}/openapi.json",
                "--phases=examples,coverage,fuzzing,stateful",
                f"--header=Authorization: Bearer {seeded.operator.token}",
                f"--max-examples={FULL_RUN_EXAMPLES}",
                "--seed=1",
                "--no-color",
                "--request-timeout=30",
                f"--report-dir={tmp_path}",
            ],
            capture_output=True,
            text=True,
            timeout=FULL_RUN_SECONDS,
            check=False,
            cwd=tmp_path,  # where it keeps its own state
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-3_000:]
