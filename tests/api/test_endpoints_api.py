"""Users' own webhook endpoints over HTTP, on real PostgreSQL and Redis (SPEC §5, §6).

Host names are resolved by a table in the test (``hooks.example`` is public, ``evil.example``
is loopback), so saving an endpoint never asks a DNS server; pings go to a receiver on
127.0.0.1 only, through an app that allows private addresses, as a local setup would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import standardwebhooks
import stripe
from sqlalchemy import Engine, select, text

from api.app import create_app
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import Endpoint, Task
from tests.conftest import REDIS_URL, Account, ApiHarness, make_settings
from tests.pipeline.conftest import Receipt, Receiver

PROBLEM = "application/problem+json"
NAMES = {
    "hooks.example": ["93.184.215.14"],
    "v6.example": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "evil.example": ["127.0.0.1"],
    "mixed.example": ["93.184.215.14", "10.1.2.3"],
}


def table_resolver(host: str, port: int) -> list[str]:
    if host not in NAMES:
        raise OSError(f"{host} does not resolve")
    return NAMES[host]


AppFactory = Callable[..., ApiHarness]


@pytest.fixture
def make_api(pg_engine: Engine, pg_url: str, redis_namespace: str) -> AppFactory:
    def build(**settings: Any) -> ApiHarness:
        config = make_settings(
            database_url=pg_url, redis_url=REDIS_URL, redis_namespace=redis_namespace, **settings
        )
        app = create_app(config, engine=pg_engine, resolve=table_resolver)
        app.testing = True
        return ApiHarness(client=app.test_client(), engine=pg_engine, settings=config)

    return build


@pytest.fixture
def guarded(make_api: AppFactory) -> ApiHarness:
    """As production runs: https only, public addresses only."""
    return make_api()


@pytest.fixture
def local(make_api: AppFactory) -> ApiHarness:
    """A local setup: REMINDERS_ALLOW_PRIVATE_ENDPOINTS=true, so 127.0.0.1 can be pinged."""
    return make_api(allow_private_endpoints=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def create_endpoint(api: ApiHarness, account: Account, url: str, **fields: Any) -> dict[str, Any]:
    response = api.client.post("/endpoints", json={"url": url, **fields}, headers=account.headers)
    assert response.status_code == 201, response.json
    return dict(response.json)


def verify_both(receipt: Receipt, secret: str) -> dict[str, Any]:
    """Verify a request as a receiver would, with the two off-the-shelf libraries."""
    headers = {name.lower(): value for name, value in receipt.headers.items()}
    verified = standardwebhooks.Webhook(secret).verify(receipt.body, headers)
    stripe.WebhookSignature.verify_header(
        receipt.body.decode(), headers["x-reminders-signature"], secret, tolerance=300
    )
    return dict(verified)


def refused_by_both(receipt: Receipt, secret: str) -> bool:
    headers = {name.lower(): value for name, value in receipt.headers.items()}
    try:
        standardwebhooks.Webhook(secret).verify(receipt.body, headers)
        return False
    except standardwebhooks.WebhookVerificationError:
        pass
    try:
        stripe.WebhookSignature.verify_header(
            receipt.body.decode(), headers["x-reminders-signature"], secret, tolerance=300
        )
        return False
    except stripe.SignatureVerificationError:
        return True


def test_an_endpoint_is_created_with_its_secret_shown_once_and_kept_encrypted(
    guarded: ApiHarness,
) -> None:
    alice = guarded.account("alice")
    made = create_endpoint(guarded, alice, "https://hooks.example/reminders", description="prod")
    assert made["secret"].startswith("whsec_")
    assert made["enabled"] is True and made["description"] == "prod"
    shown = guarded.client.get(f"/endpoints/{made['id']}", headers=alice.headers)
    assert shown.status_code == 200
    assert "secret" not in shown.json and shown.json["url"] == "https://hooks.example/reminders"
    listed = guarded.client.get("/endpoints", headers=alice.headers)
    assert [item["id"] for item in listed.json["items"]] == [made["id"]]
    assert all("secret" not in item for item in listed.json["items"])
    # The database alone does not reveal it: neither the secret nor the key bytes it encodes.
    with guarded.engine.connect() as db:
        stored = db.execute(
            text("SELECT secret FROM endpoints WHERE id = :id"), {"id": made["id"]}
        ).scalar_one()
    assert made["secret"] not in stored and made["secret"][6:] not in stored


def test_every_endpoint_route_is_a_404_for_another_user(guarded: ApiHarness) -> None:
    alice, bob = guarded.account("alice"), guarded.account("bob")
    theirs = create_endpoint(guarded, alice, "https://hooks.example/a")["id"]
    calls = [
        ("get", f"/endpoints/{theirs}", None),
        ("patch", f"/endpoints/{theirs}", {"description": "mine now"}),
        ("post", f"/endpoints/{theirs}/rotate-secret", None),
        ("post", f"/endpoints/{theirs}/test", None),
        ("get", f"/endpoints/{theirs}/attempts", None),
        ("delete", f"/endpoints/{theirs}", None),
    ]
    for method, path, body in calls:
        response = getattr(guarded.client, method)(path, json=body, headers=bob.headers)
        assert response.status_code == 404, (method, path, response.json)
        assert response.content_type == PROBLEM
    assert guarded.client.get("/endpoints", headers=bob.headers).json["items"] == []
    # Untouched by any of it.
    still = guarded.client.get(f"/endpoints/{theirs}", headers=alice.headers).json
    assert still["description"] is None
    # A task may not name another user's endpoint, nor one that does not exist.
    for endpoint_id in (theirs, str(uuid.uuid4())):
        created = guarded.client.post(
            "/tasks",
            json={"title": "t", "due_at": "2030-01-01T09:00:00Z", "endpoint_id": endpoint_id},
            headers=bob.headers,
        )
        assert created.status_code == 422, created.json
        assert created.json["errors"][0]["field"] == "endpoint_id"
    task = guarded.client.post(
        "/tasks", json={"title": "t", "due_at": "2030-01-01T09:00:00Z"}, headers=bob.headers
    ).json
    patched = guarded.client.patch(
        f"/tasks/{task['id']}", json={"endpoint_id": theirs}, headers=bob.headers
    )
    assert patched.status_code == 422 and patched.json["errors"][0]["field"] == "endpoint_id"
    assert (
        guarded.client.get(f"/tasks/{task['id']}", headers=bob.headers).json["endpoint_id"] is None
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example/plain-http",
        "https://127.0.0.1/hook",
        "https://10.0.0.5/hook",
        "https://172.16.3.4/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[fd12::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://evil.example/hook",
        "https://mixed.example/hook",
        "https://nowhere.example/hook",
        "ftp://hooks.example/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "https://user:pw@hooks.example/hook",
    ],
)
def test_a_url_that_is_not_https_on_a_public_address_is_refused_naming_the_field(
    guarded: ApiHarness, url: str
) -> None:
    alice = guarded.account("alice")
    response = guarded.client.post("/endpoints", json={"url": url}, headers=alice.headers)
    assert response.status_code == 422, response.json
    assert response.content_type == PROBLEM
    assert response.json["errors"][0]["field"] == "url"
    assert guarded.client.get("/endpoints", headers=alice.headers).json["items"] == []


@pytest.mark.parametrize(
    ("url", "code_point"),
    [
        ("https://hooks.example/\u009b31m", "U+009B"),  # C1 control (CSI)
        ("https://hooks.example/\u202egnp.exe", "U+202E"),  # right-to-left override
        ("https://\ufeffhooks.example/hook", "U+FEFF"),  # byte-order mark
        ("https://hooks.example/a\u200bb", "U+200B"),  # zero-width space
    ],
)
def test_a_url_with_an_invisible_or_control_character_is_refused_with_a_sentence(
    guarded: ApiHarness, url: str, code_point: str
) -> None:
    alice = guarded.account("alice")
    response = guarded.client.post("/endpoints", json={"url": url}, headers=alice.headers)
    assert response.status_code == 422, response.json
    [error] = response.json["errors"]
    assert error["field"] == "url"
    assert error["message"] == (
        f"endpoint URL contains an invisible or control character ({code_point}): "
        "remove it and send the URL again"
    )
    assert guarded.client.get("/endpoints", headers=alice.headers).json["items"] == []

    made = create_endpoint(guarded, alice, "https://hooks.example/hook")
    patched = guarded.client.patch(
        f"/endpoints/{made['id']}", json={"url": url}, headers=alice.headers
    )
    assert patched.status_code == 422 and patched.json["errors"][0]["field"] == "url"


def test_changing_the_url_to_a_private_address_is_refused_and_changes_nothing(
    guarded: ApiHarness,
) -> None:
    alice = guarded.account("alice")
    made = create_endpoint(guarded, alice, "https://v6.example/hook")
    response = guarded.client.patch(
        f"/endpoints/{made['id']}",
        json={"url": "https://169.254.169.254/"},
        headers=alice.headers,
    )
    assert response.status_code == 422 and response.json["errors"][0]["field"] == "url"
    shown = guarded.client.get(f"/endpoints/{made['id']}", headers=alice.headers).json
    assert shown["url"] == "https://v6.example/hook"


@pytest.mark.parametrize(
    "host",
    ["\u00b6", "\u2603.example", "-hooks.example", "hooks..example", "xn--zz.example", "999.1.2.3"],
)
@pytest.mark.parametrize("setup", ["guarded", "local"])
def test_a_url_whose_host_is_no_host_name_is_refused_at_create_and_patch(
    make_api: AppFactory, setup: str, host: str
) -> None:
    """Also where private addresses are allowed (nothing is resolved there): a host no
    request could be sent to is a 422 naming the field, never an endpoint that fails later."""
    api = make_api(allow_private_endpoints=setup == "local")
    alice = api.account("alice")
    made = create_endpoint(api, alice, "https://hooks.example/hook")
    url = f"https://{host}/hook"

    created = api.client.post("/endpoints", json={"url": url}, headers=alice.headers)
    patched = api.client.patch(f"/endpoints/{made['id']}", json={"url": url}, headers=alice.headers)

    for response in (created, patched):
        assert response.status_code == 422, response.json
        assert response.content_type == PROBLEM
        assert response.json["errors"] == [
            {
                "in": "body",
                "field": "url",
                "message": "endpoint URL has an invalid host: not a host name or an IP address",
                "code": "address_refused",
            }
        ]
    assert [
        item["url"] for item in api.client.get("/endpoints", headers=alice.headers).json["items"]
    ] == ["https://hooks.example/hook"]


def test_the_flag_lets_a_local_setup_use_http_on_loopback_but_never_other_schemes(
    local: ApiHarness,
) -> None:
    alice = local.account("alice")
    create_endpoint(local, alice, "http://127.0.0.1:9/hook")
    for url in ("ftp://127.0.0.1/x", "file:///etc/passwd"):
        response = local.client.post("/endpoints", json={"url": url}, headers=alice.headers)
        assert response.status_code == 422, url


def test_a_ping_is_signed_and_verifies_with_both_libraries_through_a_rotation(
    local: ApiHarness, receiver: Receiver
) -> None:
    alice = local.account("alice")
    made = create_endpoint(local, alice, receiver.url)
    ping = local.client.post(f"/endpoints/{made['id']}/test", headers=alice.headers)
    assert ping.status_code == 200, ping.json
    assert ping.json["ok"] is True and ping.json["status_code"] == 200
    assert ping.json["kind"] == "ping" and ping.json["error"] is None
    first = receiver.receipts[0]
    verified = verify_both(first, made["secret"])
    assert verified["type"] == "ping" and verified["endpoint_id"] == made["id"]
    assert first.headers["webhook-id"] == ping.json["message_id"]

    rotated = local.client.post(f"/endpoints/{made['id']}/rotate-secret", headers=alice.headers)
    assert rotated.status_code == 200
    new_secret = rotated.json["secret"]
    assert new_secret.startswith("whsec_") and new_secret != made["secret"]
    expires = datetime.fromisoformat(rotated.json["previous_secret_expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(expires.tzinfo) <= timedelta(hours=24)
    local.client.post(f"/endpoints/{made['id']}/test", headers=alice.headers)
    during = receiver.receipts[1]
    verify_both(during, made["secret"])  # either secret verifies while they overlap
    verify_both(during, new_secret)

    # After the overlap only the new secret signs.
    with unit_of_work(make_session_factory(local.engine)) as session:
        endpoint = session.get(Endpoint, uuid.UUID(made["id"]))
        assert endpoint is not None
        endpoint.previous_secret_expires_at = datetime.now(expires.tzinfo) - timedelta(seconds=1)
    local.client.post(f"/endpoints/{made['id']}/test", headers=alice.headers)
    after = receiver.receipts[2]
    verify_both(after, new_secret)
    assert refused_by_both(after, made["secret"])
    # A tampered body fails both libraries.
    tampered = Receipt(after.at, after.headers, after.body.replace(b"ping", b"pong"))
    assert refused_by_both(tampered, new_secret)


def test_failed_pings_are_in_the_attempt_log_newest_first_and_paged(
    local: ApiHarness, receiver: Receiver
) -> None:
    receiver.script = lambda n: [200, 503, 404][n % 3]
    alice = local.account("alice")
    made = create_endpoint(local, alice, receiver.url)
    for _ in range(3):
        local.client.post(f"/endpoints/{made['id']}/test", headers=alice.headers)
    page = local.client.get(
        f"/endpoints/{made['id']}/attempts", query_string={"limit": 2}, headers=alice.headers
    ).json
    assert [item["status_code"] for item in page["items"]] == [404, 503]
    assert [item["ok"] for item in page["items"]] == [False, False]
    assert page["items"][0]["error"] == "answered 404"
    rest = local.client.get(
        f"/endpoints/{made['id']}/attempts",
        query_string={"limit": 2, "cursor": page["next_cursor"]},
        headers=alice.headers,
    ).json
    assert [item["status_code"] for item in rest["items"]] == [200]
    assert rest["next_cursor"] is None
    shown = local.client.get(f"/endpoints/{made['id']}", headers=alice.headers).json
    assert shown["last_error"] == "answered 404" and shown["failing_since"] is not None
    assert shown["last_success_at"] is not None


def test_a_ping_to_a_closed_port_is_recorded_as_unreachable(local: ApiHarness) -> None:
    alice = local.account("alice")
    made = create_endpoint(local, alice, "http://127.0.0.1:9/hook")  # discard: nothing listens
    ping = local.client.post(f"/endpoints/{made['id']}/test", headers=alice.headers).json
    assert ping["ok"] is False and ping["status_code"] is None
    assert ping["error"].startswith("unreachable")


def test_deleting_an_endpoint_sends_its_tasks_back_to_the_deployment_channel(
    guarded: ApiHarness,
) -> None:
    alice = guarded.account("alice")
    made = create_endpoint(guarded, alice, "https://hooks.example/a")
    task = guarded.client.post(
        "/tasks",
        json={"title": "t", "due_at": "2030-01-01T09:00:00Z", "endpoint_id": made["id"]},
        headers=alice.headers,
    ).json
    assert task["endpoint_id"] == made["id"]
    gone = guarded.client.delete(f"/endpoints/{made['id']}", headers=alice.headers)
    assert gone.status_code == 204
    assert guarded.client.get(f"/endpoints/{made['id']}", headers=alice.headers).status_code == 404
    assert (
        guarded.client.get(f"/tasks/{task['id']}", headers=alice.headers).json["endpoint_id"]
        is None
    )
    with unit_of_work(make_session_factory(guarded.engine)) as session:
        assert session.scalars(select(Task.endpoint_id)).all() == [None]


def test_disabling_and_enabling_an_endpoint_by_patch(guarded: ApiHarness) -> None:
    alice = guarded.account("alice")
    made = create_endpoint(guarded, alice, "https://hooks.example/a")
    off = guarded.client.patch(
        f"/endpoints/{made['id']}", json={"enabled": False}, headers=alice.headers
    ).json
    assert off["enabled"] is False and off["disabled_reason"] == "disabled by its owner"
    on = guarded.client.patch(
        f"/endpoints/{made['id']}", json={"enabled": True}, headers=alice.headers
    ).json
    assert on["enabled"] is True and on["disabled_reason"] is None and on["disabled_at"] is None
    bad = guarded.client.patch(
        f"/endpoints/{made['id']}", json={"enabled": "yes"}, headers=alice.headers
    )
    assert bad.status_code == 422


@pytest.mark.parametrize("url", ["https://\U00080d2b", "https://a\u0080b.example/hook"])
def test_a_url_the_webhook_client_cannot_send_to_is_refused_when_saved(
    local: ApiHarness, url: str
) -> None:
    """Found by Schemathesis: such a URL was saved, then its test ping was a 500."""
    alice = local.account("alice")

    response = local.client.post("/endpoints", json={"url": url}, headers=alice.headers)

    assert response.status_code == 422, response.get_data(as_text=True)
    [error] = response.json["errors"]
    assert (error["field"], error["code"]) == ("url", "address_refused")
    assert error["message"].startswith(
        ("endpoint URL has an invalid host", "endpoint URL contains an invisible or control")
    )


def endpoint_row(api: ApiHarness, endpoint_id: str) -> Endpoint:
    with unit_of_work(make_session_factory(api.engine)) as session:
        row = session.get_one(Endpoint, uuid.UUID(endpoint_id))
        session.expunge(row)
    return row


def test_an_endpoint_made_without_limits_takes_8_in_flight_and_has_no_rate_limit(
    guarded: ApiHarness,
) -> None:
    alice = guarded.account("alice")
    made = create_endpoint(guarded, alice, "https://hooks.example/a")
    assert (made["max_concurrency"], made["max_per_second"]) == (8, None)
    shown = guarded.client.get(f"/endpoints/{made['id']}", headers=alice.headers).json
    assert (shown["max_concurrency"], shown["max_per_second"]) == (8, None)
    [listed] = guarded.client.get("/endpoints", headers=alice.headers).json["items"]
    assert (listed["max_concurrency"], listed["max_per_second"]) == (8, None)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ({"max_concurrency": 2, "max_per_second": 0.5}, (2, 0.5)),
        ({"max_concurrency": 1, "max_per_second": 1000}, (1, 1000.0)),
        ({"max_concurrency": 64.0, "max_per_second": 0.001}, (64, 0.001)),  # 64.0 is an integer
        ({"max_per_second": 20}, (8, 20.0)),
        ({"max_concurrency": 3, "max_per_second": None}, (3, None)),
    ],
)
def test_limits_given_at_creation_are_kept_and_shown(
    guarded: ApiHarness, given: dict[str, Any], kept: tuple[int, float | None]
) -> None:
    alice = guarded.account("alice")
    made = create_endpoint(guarded, alice, "https://hooks.example/a", **given)
    assert (made["max_concurrency"], made["max_per_second"]) == kept
    shown = guarded.client.get(f"/endpoints/{made['id']}", headers=alice.headers).json
    assert (shown["max_concurrency"], shown["max_per_second"]) == kept
    row = endpoint_row(guarded, made["id"])
    assert (row.max_concurrency, row.max_per_second) == kept


def test_patch_changes_the_limits_and_null_removes_the_rate_limit(guarded: ApiHarness) -> None:
    alice = guarded.account("alice")
    made = create_endpoint(guarded, alice, "https://hooks.example/a")
    path = f"/endpoints/{made['id']}"

    changed = guarded.client.patch(
        path, json={"max_concurrency": 2, "max_per_second": 0.5}, headers=alice.headers
    )
    assert changed.status_code == 200, changed.json
    assert (changed.json["max_concurrency"], changed.json["max_per_second"]) == (2, 0.5)
    # Other changes leave the limits as they are.
    described = guarded.client.patch(path, json={"description": "prod"}, headers=alice.headers)
    assert (described.json["max_concurrency"], described.json["max_per_second"]) == (2, 0.5)
    # One limit at a time.
    faster = guarded.client.patch(path, json={"max_per_second": 50}, headers=alice.headers)
    assert (faster.json["max_concurrency"], faster.json["max_per_second"]) == (2, 50.0)
    cleared = guarded.client.patch(path, json={"max_per_second": None}, headers=alice.headers)
    assert cleared.status_code == 200, cleared.json
    assert (cleared.json["max_concurrency"], cleared.json["max_per_second"]) == (2, None)
    shown = guarded.client.get(path, headers=alice.headers).json
    assert (shown["max_concurrency"], shown["max_per_second"]) == (2, None)
    row = endpoint_row(guarded, made["id"])
    assert (row.max_concurrency, row.max_per_second) == (2, None)


BAD_LIMITS = [
    ("max_concurrency", 0, "must be at least 1"),
    ("max_concurrency", 65, "must be at most 64"),
    ("max_concurrency", 1.5, "must be an integer"),
    ("max_concurrency", True, "must be an integer"),
    ("max_concurrency", "8", "must be an integer"),
    ("max_concurrency", None, "may not be null; leave the field out instead"),
    ("max_per_second", -1, "must be more than 0"),
    ("max_per_second", 0, "must be more than 0"),
    ("max_per_second", 1001, "must be at most 1000"),
    ("max_per_second", 1000.5, "must be at most 1000"),
    ("max_per_second", True, "must be a number"),
    ("max_per_second", "8", "must be a number"),
    ("max_per_second", float("nan"), "must be a finite number"),
    ("max_per_second", float("inf"), "must be a finite number"),
]


@pytest.mark.parametrize(("field", "value", "sentence"), BAD_LIMITS)
def test_a_bad_limit_is_refused_naming_the_field_at_create_and_patch(
    guarded: ApiHarness, field: str, value: Any, sentence: str
) -> None:
    alice = guarded.account("alice")
    body = {"url": "https://hooks.example/a", field: value}

    created = guarded.client.post("/endpoints", json=body, headers=alice.headers)

    assert created.status_code == 422, created.json
    assert created.content_type == PROBLEM
    assert [
        (error["in"], error["field"], error["message"]) for error in created.json["errors"]
    ] == [("body", field, sentence)]
    assert guarded.client.get("/endpoints", headers=alice.headers).json["items"] == []

    made = create_endpoint(guarded, alice, "https://hooks.example/a", max_per_second=5)
    patched = guarded.client.patch(
        f"/endpoints/{made['id']}", json={field: value}, headers=alice.headers
    )
    assert patched.status_code == 422, patched.json
    assert [(error["field"], error["message"]) for error in patched.json["errors"]] == [
        (field, sentence)
    ]
    row = endpoint_row(guarded, made["id"])
    assert (row.max_concurrency, row.max_per_second) == (8, 5.0)


def test_another_user_cannot_change_an_endpoint_s_limits(guarded: ApiHarness) -> None:
    alice, bob = guarded.account("alice"), guarded.account("bob")
    theirs = create_endpoint(
        guarded, alice, "https://hooks.example/a", max_concurrency=4, max_per_second=2
    )

    response = guarded.client.patch(
        f"/endpoints/{theirs['id']}",
        json={"max_concurrency": 64, "max_per_second": None},
        headers=bob.headers,
    )

    assert response.status_code == 404 and response.content_type == PROBLEM
    row = endpoint_row(guarded, theirs["id"])
    assert (row.max_concurrency, row.max_per_second) == (4, 2.0)
