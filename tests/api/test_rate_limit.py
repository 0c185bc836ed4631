"""Per-token rate limit backed by Redis: 429 with Retry-After, per caller, fail-open (SPEC §6)."""

from __future__ import annotations

import secrets

from sqlalchemy import Engine

from api.app import create_app
from tests.conftest import REDIS_URL, create_account, make_settings


def client_for(engine: Engine, pg_url: str, namespace: str, **settings):
    app = create_app(
        make_settings(
            database_url=pg_url,
            redis_url=settings.pop("redis_url", REDIS_URL),
            redis_namespace=namespace,
            **settings,
        ),
        engine=engine,
    )
    return app.test_client()


def test_past_the_limit_a_token_gets_429_with_retry_after(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = client_for(pg_engine, pg_url, redis_namespace, rate_limit="3/minute")
    alice, bob = create_account(pg_engine, "alice"), create_account(pg_engine, "bob")

    statuses = [client.get("/tasks", headers=alice.headers).status_code for _ in range(4)]
    limited = client.get("/tasks", headers=alice.headers)

    assert statuses == [200, 200, 200, 429]
    assert limited.status_code == 429
    assert limited.content_type == "application/problem+json"
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.json["status"] == 429
    assert client.get("/tasks", headers=bob.headers).status_code == 200  # per token
    assert client.get("/healthz").status_code == 200  # probes are never limited


def test_the_limit_is_shared_by_every_api_process(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    first = client_for(pg_engine, pg_url, redis_namespace, rate_limit="2/minute")
    second = client_for(pg_engine, pg_url, redis_namespace, rate_limit="2/minute")
    alice = create_account(pg_engine, "alice")

    assert first.get("/tasks", headers=alice.headers).status_code == 200
    assert second.get("/tasks", headers=alice.headers).status_code == 200
    assert first.get("/tasks", headers=alice.headers).status_code == 429


def test_callers_without_a_token_are_limited_by_address(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = client_for(pg_engine, pg_url, redis_namespace, rate_limit="2/minute")

    statuses = [client.get("/tasks").status_code for _ in range(3)]

    assert statuses == [401, 401, 429]


def test_an_unreachable_limit_store_lets_requests_through(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = client_for(
        pg_engine, pg_url, redis_namespace, rate_limit="1/minute", redis_url="redis://127.0.0.1:1/0"
    )
    alice = create_account(pg_engine, "alice")

    assert [client.get("/tasks", headers=alice.headers).status_code for _ in range(3)] == [200] * 3


def test_one_token_is_limited_across_routes_not_per_route(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = client_for(pg_engine, pg_url, redis_namespace, rate_limit="4/minute")
    alice = create_account(pg_engine, "alice")

    statuses = [
        client.get(route, headers=alice.headers).status_code
        for route in ("/tasks", "/endpoints", "/tasks", "/endpoints", "/endpoints", "/tasks")
    ]

    assert statuses == [200, 200, 200, 200, 429, 429]


def test_random_bad_tokens_from_one_address_are_limited_by_address(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = client_for(
        pg_engine, pg_url, redis_namespace, rate_limit="600/minute", auth_failure_limit="5/minute"
    )
    alice = create_account(pg_engine, "alice")

    def with_random_token(address: str) -> int:
        headers = {"Authorization": f"Bearer rem_{secrets.token_urlsafe(32)}"}
        return client.get(
            "/tasks", headers=headers, environ_base={"REMOTE_ADDR": address}
        ).status_code

    statuses = [with_random_token("192.0.2.7") for _ in range(7)]

    assert statuses == [401] * 5 + [429] * 2
    # Past the limit the address is refused before any token is looked up, a good one too.
    from_there = client.get(
        "/tasks", headers=alice.headers, environ_base={"REMOTE_ADDR": "192.0.2.7"}
    )
    assert from_there.status_code == 429
    assert int(from_there.headers["Retry-After"]) > 0
    # Another address, and good tokens, are not held back by it.
    assert with_random_token("192.0.2.8") == 401
    assert client.get("/tasks", headers=alice.headers).status_code == 200


def test_refused_sign_ins_on_the_ops_page_count_as_failed_authentications(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = client_for(pg_engine, pg_url, redis_namespace, auth_failure_limit="3/minute")

    statuses = [
        client.post("/ops/sign-in", data={"token": secrets.token_urlsafe(32)}).status_code
        for _ in range(4)
    ]

    assert statuses == [401, 401, 401, 429]
