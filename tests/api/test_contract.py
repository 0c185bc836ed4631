"""What a third-party client reads in ``/openapi.json`` is what the server does.

Each test sends a request and checks the answer against the rule the served document
states: the operator page's forms as browsers post them, the ``Idempotency-Key`` pattern,
integer query parameters, and what a replayed idempotent answer says about itself.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest

from tests.conftest import ApiHarness

BODY = {"title": "file taxes", "due_at": "2031-04-15T09:00:00+02:00"}


def served_document(api: ApiHarness) -> dict[str, Any]:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json)


def idempotency_key_pattern(api: ApiHarness) -> str:
    [parameter] = [
        parameter
        for parameter in served_document(api)["paths"]["/tasks"]["post"]["parameters"]
        if parameter["name"] == "Idempotency-Key"
    ]
    schema = parameter["schema"]
    [pattern] = [
        branch["pattern"] for branch in [schema, *schema.get("anyOf", [])] if "pattern" in branch
    ]
    return str(pattern)


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
@pytest.mark.parametrize("token", ["0", "1.5", "true", "null", '"rem_x"', "[]"])
def test_sign_in_with_a_token_that_reads_as_json_is_an_unknown_token(
    api: ApiHarness, token: str, encoding: str
) -> None:
    """A form value is text: ``token=0`` is a token like ``token=abc``, refused with 401."""
    content_type = (
        "application/x-www-form-urlencoded" if encoding == "urlencoded" else "multipart/form-data"
    )

    response = api.client.post("/ops/sign-in", data={"token": token}, content_type=content_type)

    assert response.status_code == 401, response.get_data(as_text=True)[:300]
    assert "That token is not valid." in response.get_data(as_text=True)


def test_sign_in_takes_an_operator_token_urlencoded_as_browsers_send_it(api: ApiHarness) -> None:
    operator = api.account("root", operator=True)
    document = served_document(api)
    content = document["paths"]["/ops/sign-in"]["post"]["requestBody"]["content"]

    response = api.client.post(
        "/ops/sign-in",
        data={"token": operator.token},
        content_type="application/x-www-form-urlencoded",
    )

    assert "application/x-www-form-urlencoded" in content
    assert response.status_code == 303
    assert response.headers["Location"] == "/ops"


# Values the pattern once admitted that the server refused, and the reverse.
PROBES = ["a,b", "a;b", 'a"b', '"a b"', "a b", "abc", '"abc"', '"abc";version=2', '""', "k;p=1"]


@pytest.mark.parametrize("value", PROBES)
def test_the_document_and_the_server_agree_on_each_idempotency_key(
    api: ApiHarness, value: str
) -> None:
    alice = api.account("alice")
    admitted = re.search(idempotency_key_pattern(api), value) is not None

    response = api.client.post(
        "/tasks", json=BODY, headers={**alice.headers, "Idempotency-Key": value}
    )

    assert response.status_code == (201 if admitted else 400), response.get_data(as_text=True)


@pytest.mark.parametrize("text", ["50.0", "5e1", "50.5"])
def test_an_integer_query_parameter_is_digits_as_the_document_says(
    api: ApiHarness, text: str
) -> None:
    alice = api.account("alice")
    [limit] = [
        parameter
        for parameter in served_document(api)["paths"]["/tasks"]["get"]["parameters"]
        if parameter["name"] == "limit"
    ]

    response = api.client.get(f"/tasks?limit={text}", headers=alice.headers)

    assert limit["schema"]["type"] == "integer"
    assert response.status_code == 422, response.get_data(as_text=True)
    [error] = response.json["errors"]
    assert error["field"] == "limit"
    assert error["code"] == "int_digits"
    assert error["message"].startswith("must be an integer written with digits only")
    assert api.client.get("/tasks?limit=50", headers=alice.headers).status_code == 200


def test_a_replay_says_it_is_one_and_stays_the_stored_answer_after_a_delete(
    api: ApiHarness,
) -> None:
    alice = api.account("alice")
    headers = {**alice.headers, "Idempotency-Key": "k-1"}
    first = api.client.post("/tasks", json=BODY, headers=headers)
    deleted = api.client.delete(first.headers["Location"], headers=alice.headers)

    replay = api.client.post("/tasks", json=BODY, headers=headers)

    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    assert deleted.status_code == 204
    assert replay.status_code == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.headers["Location"] == first.headers["Location"]
    assert replay.json == first.json
    # The document says so, on the header and on the Location it names.
    created = served_document(api)["paths"]["/tasks"]["post"]["responses"]["201"]["headers"]
    assert "deleted" in created["Location"]["description"]
    assert "deleted" in created["Idempotent-Replayed"]["description"]


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"seconds": 600}, True),
        ({"until": "2030-01-01T00:00:00Z"}, True),
        ({}, False),
        ({"seconds": 600, "until": "2030-01-01T00:00:00Z"}, False),
    ],
)
def test_snooze_takes_exactly_one_of_until_and_seconds_by_the_document(
    api: ApiHarness, body: dict[str, Any], valid: bool
) -> None:
    alice = api.account("alice")
    task = api.client.post("/tasks", json=BODY, headers=alice.headers).json
    document = served_document(api)
    schema = document["components"]["schemas"]["SnoozeRequest"]

    by_document = jsonschema.Draft202012Validator(schema).is_valid(body)
    response = api.client.post(f"/tasks/{task['id']}/snooze", json=body, headers=alice.headers)

    assert by_document is valid
    if not valid:
        assert response.status_code == 422, response.get_data(as_text=True)
