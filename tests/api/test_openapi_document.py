"""``GET /openapi.json`` says what each operation can answer, with its headers (SPEC §6).

The statuses the app-wide hooks give (401, 403, 413, 415, 400, 429, 503) are documented on
every operation each hook guards, with ``WWW-Authenticate`` on 401 and ``Retry-After`` on
409, 429 and 503; ``Location`` on 201; and operations have readable IDs. That every answer
a request provokes is documented is checked with Schemathesis in tests/e2e/test_fuzz_api.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openapi_spec_validator import validate

from api.app import create_app
from api.schemas import PATTERN_SENTENCES
from tests.conftest import make_settings

OPERATION_IDS = {
    ("POST", "/tasks"): "createTask",
    ("GET", "/tasks"): "listTasks",
    ("GET", "/tasks/{task_id}"): "getTask",
    ("PATCH", "/tasks/{task_id}"): "updateTask",
    ("DELETE", "/tasks/{task_id}"): "deleteTask",
    ("GET", "/tasks/{task_id}/reminders"): "listTaskReminders",
    ("GET", "/tasks/{task_id}/occurrences"): "listTaskOccurrences",
    ("POST", "/tasks/{task_id}/complete"): "completeTask",
    ("POST", "/tasks/{task_id}/snooze"): "snoozeTask",
    ("POST", "/endpoints"): "createEndpoint",
    ("GET", "/endpoints"): "listEndpoints",
    ("GET", "/endpoints/{endpoint_id}"): "getEndpoint",
    ("PATCH", "/endpoints/{endpoint_id}"): "updateEndpoint",
    ("DELETE", "/endpoints/{endpoint_id}"): "deleteEndpoint",
    ("POST", "/endpoints/{endpoint_id}/rotate-secret"): "rotateEndpointSecret",
    ("POST", "/endpoints/{endpoint_id}/test"): "testEndpoint",
    ("GET", "/endpoints/{endpoint_id}/attempts"): "listEndpointAttempts",
    ("GET", "/ops/dead-letters"): "listDeadLetters",
    ("GET", "/ops/dead-letters/{message_id}"): "getDeadLetter",
    ("POST", "/ops/dead-letters/{message_id}/retry"): "retryDeadLetter",
    ("POST", "/ops/dead-letters/retry"): "retryDeadLetters",
    ("DELETE", "/ops/dead-letters/{message_id}"): "discardDeadLetter",
    ("GET", "/ops/queues"): "listQueues",
    ("GET", "/ops/receivers"): "listReceivers",
    ("GET", "/ops"): "showOpsPage",
    ("GET", "/ops/sign-in"): "showSignInForm",
    ("POST", "/ops/sign-in"): "signIn",
    ("POST", "/ops/sign-out"): "signOut",
    ("POST", "/ops/page/dead-letters/{message_id}/retry"): "retryDeadLetterFromPage",
    ("POST", "/ops/page/dead-letters/{message_id}/discard"): "discardDeadLetterFromPage",
    ("GET", "/ops/page/dead-letters/{message_id}"): "showDeadLetterPage",
    ("GET", "/ops/page/dead-letters/{message_id}/discard"): "confirmDiscardFromPage",
    ("POST", "/ops/page/dead-letters/bulk"): "bulkDeadLettersFromPage",
    ("POST", "/ops/page/endpoints/{endpoint_id}/enable"): "enableEndpointFromPage",
    ("GET", "/favicon.ico"): "getFavicon",
    ("GET", "/healthz"): "checkLiveness",
    ("GET", "/readyz"): "checkReadiness",
    ("GET", "/metrics"): "getMetrics",
    ("GET", "/openapi.json"): "getOpenApiDocument",
}
HTTP_METHODS = {"get", "put", "post", "patch", "delete"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The served document; building the app and serving it opens no connection."""
    app = create_app(make_settings(database_url="postgresql+psycopg://doc@127.0.0.1:1/x"))
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json)


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def statuses(document: dict[str, Any], method: str, path: str) -> set[int]:
    return {int(status) for status in operations(document)[(method, path)]["responses"]}


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_operations_have_readable_unique_ids(document: dict[str, Any]) -> None:
    ids = {key: operation["operationId"] for key, operation in operations(document).items()}

    assert ids == OPERATION_IDS


def test_every_authenticated_operation_documents_401_429_and_503(document: dict[str, Any]) -> None:
    for (method, path), operation in operations(document).items():
        if not path.startswith(
            ("/tasks", "/endpoints", "/ops/dead-letters", "/ops/queues", "/ops/receivers")
        ):
            continue
        assert {401, 429, 503} <= statuses(document, method, path), (method, path)
        if path.startswith("/ops"):
            assert 403 in statuses(document, method, path), (method, path)
        if method in {"POST", "PATCH"}:
            assert {400, 413, 415} <= statuses(document, method, path), (method, path)
        unauthorized = operation["responses"]["401"]
        assert unauthorized["headers"]["WWW-Authenticate"]["required"] is True


def test_create_documents_location_and_the_idempotency_answers(document: dict[str, Any]) -> None:
    create = operations(document)[("POST", "/tasks")]["responses"]

    assert create["201"]["headers"]["Location"]["required"] is True
    assert create["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskOut"
    }
    assert "Idempotency-Key" in create["400"]["description"]
    assert create["409"]["headers"]["Retry-After"]["required"] is True


# 409s that are not "a request with this key is in progress": retrying will not help, so
# Retry-After is absent (completing a done task) or optional (snoozing one, or a key in flight).
NOT_RETRYABLE_409 = {("POST", "/tasks/{task_id}/complete")}
MAYBE_RETRYABLE_409 = {("POST", "/tasks/{task_id}/snooze")}


def test_every_409_429_and_problem_503_carries_retry_after(document: dict[str, Any]) -> None:
    seen = 0
    for key, operation in operations(document).items():
        for status in ("409", "429", "503"):
            response = operation["responses"].get(status)
            if response is None or "application/problem+json" not in response.get("content", {}):
                continue
            if status == "409" and key in NOT_RETRYABLE_409:
                assert "Retry-After" not in response.get("headers", {}), key
                continue
            header = response["headers"]["Retry-After"]
            assert header["schema"]["type"] == "integer", key
            assert header["required"] is not (status == "409" and key in MAYBE_RETRYABLE_409)
            seen += 1
    assert seen >= len(OPERATION_IDS)  # 429 on nearly every operation, 503 on most


def test_rate_limit_and_health_exemptions(document: dict[str, Any]) -> None:
    for method, path in [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]:
        assert 429 not in statuses(document, method, path)
    # Beside what gunicorn answers before the app sees a request (414, 431).
    assert statuses(document, "GET", "/healthz") - {414, 431} == {200}
    assert statuses(document, "GET", "/readyz") - {414, 431} == {200, 503}
    assert 429 in statuses(document, "GET", "/openapi.json")
    # The sign-in form reads a token: the database, so 503; and a form over 64 KiB is a 413.
    assert {413, 429, 503} <= statuses(document, "POST", "/ops/sign-in")


def request_patterns(node: Any) -> Iterator[str]:
    """The ``pattern`` of every schema a request is checked against (responses skipped)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key != "responses":
                yield from request_patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from request_patterns(item)


def test_every_pattern_of_a_request_has_a_sentence_for_the_client(
    document: dict[str, Any],
) -> None:
    """A value refused by a pattern is explained in words, never by the expression."""
    found = set(request_patterns(document["paths"])) | set(
        request_patterns(document["components"]["schemas"])
    )

    assert found, "the document has patterns"
    assert found <= set(PATTERN_SENTENCES), found - set(PATTERN_SENTENCES)


def test_the_operator_page_forms_are_documented_in_both_encodings(document: dict[str, Any]) -> None:
    forms = {
        key: operation["requestBody"]["content"]
        for key, operation in operations(document).items()
        if "operator page" in operation.get("tags", []) and "requestBody" in operation
    }

    assert ("POST", "/ops/sign-in") in forms
    for key, content in forms.items():
        assert set(content) == {"application/x-www-form-urlencoded", "multipart/form-data"}, key


def test_every_redirect_documents_its_location(document: dict[str, Any]) -> None:
    redirects = [
        (key, operation["responses"]["303"])
        for key, operation in operations(document).items()
        if "303" in operation["responses"]
    ]

    assert redirects
    for key, response in redirects:
        assert response["headers"]["Location"]["required"] is True, key


def test_rate_limited_answers_document_the_rate_limit_headers(document: dict[str, Any]) -> None:
    names = {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    for (method, path), operation in operations(document).items():
        for status, response in operation["responses"].items():
            headers = set(response.get("headers", {}))
            if path in {"/healthz", "/readyz", "/metrics", "/favicon.ico"}:
                assert not names & headers, (method, path, status)
            else:
                assert names <= headers, (method, path, status)
    assert set(document["components"]["headers"]) >= names


def test_what_the_http_server_answers_first_is_documented(document: dict[str, Any]) -> None:
    for key, operation in operations(document).items():
        too_long = operation["responses"]["414"]
        assert "text/html" in too_long["content"], key
        assert "4094 bytes" in too_long["description"]
        assert "431" in operation["responses"], key
    assert "405" in document["info"]["description"]
    assert document["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"]


@pytest.mark.parametrize(
    ("schema", "fields"),
    [
        ("TaskOut", {"endpoint_id", "next_occurrence"}),
        ("ReminderOut", {"kind", "offset_seconds"}),
        ("DeadLetterOut", {"broker_id", "retryable"}),
        ("EndpointOut", {"max_concurrency", "max_per_second"}),
        ("ReceiverOut", {"endpoint_id", "owner", "backing_off_until", "slow"}),
    ],
)
def test_fields_always_returned_are_required(
    document: dict[str, Any], schema: str, fields: set[str]
) -> None:
    model = document["components"]["schemas"][schema]

    assert set(model["required"]) == set(model["properties"])
    assert fields <= set(model["required"])


def test_the_idempotency_key_pattern_is_the_server_s_rule(document: dict[str, Any]) -> None:
    from api.idempotency import KEY_FIELD

    for path, method in [("/tasks", "post"), ("/tasks/{task_id}/snooze", "post")]:
        [header] = [
            parameter
            for parameter in document["paths"][path][method]["parameters"]
            if parameter["name"] == "Idempotency-Key"
        ]
        assert header["schema"]["pattern"] == KEY_FIELD.pattern


def test_a_form_whose_fields_all_have_defaults_may_be_posted_empty(
    document: dict[str, Any],
) -> None:
    discard = operations(document)[("POST", "/ops/page/dead-letters/{message_id}/discard")]
    sign_in = operations(document)[("POST", "/ops/sign-in")]

    assert discard["requestBody"]["required"] is False
    assert sign_in["requestBody"]["required"] is True


def test_the_endpoint_limits_are_documented_with_their_bounds_and_default(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    concurrency = {"type": "integer", "minimum": 1, "maximum": 64}
    rate = {"type": "number", "exclusiveMinimum": 0, "maximum": 1000}
    for name in ("EndpointCreate", "EndpointPatch"):
        fields = schemas[name]["properties"]
        assert concurrency.items() <= fields["max_concurrency"].items(), name
        assert "max_concurrency" not in schemas[name].get("required", [])
        [number, null] = fields["max_per_second"]["anyOf"]
        assert rate.items() <= number.items() and null == {"type": "null"}, name
    assert schemas["EndpointCreate"]["properties"]["max_concurrency"]["default"] == 8
    assert schemas["EndpointCreate"]["properties"]["max_per_second"]["default"] is None
    assert "default" not in schemas["EndpointPatch"]["properties"]["max_concurrency"]
    shown = schemas["EndpointOut"]["properties"]
    assert shown["max_concurrency"]["type"] == "integer"
    assert {"type": "number"} in shown["max_per_second"]["anyOf"]
    assert {"type": "null"} in shown["max_per_second"]["anyOf"]
