"""The ops page's sign-in is a server-side session: the cookie holds a random session ID,
never the token; signing out, the session's expiry and revoking its token each end it.

Real app, real PostgreSQL; the sessions' clock is injected to pass their expiry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update

from api.app import create_app
from shared.planning.keys import hash_token
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import ApiToken, OpsSession
from tests.conftest import REDIS_URL, Account, create_account, make_settings

COOKIE = "reminders_ops_session"
SIGN_IN = "http://localhost/ops/sign-in"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def page_client(engine: Engine, pg_url: str, namespace: str, clock: Clock | None = None) -> Any:
    settings = make_settings(database_url=pg_url, redis_url=REDIS_URL, redis_namespace=namespace)
    app = create_app(settings, engine=engine, **({"clock": clock} if clock else {}))
    return app.test_client()


def sign_in(client: Any, operator: Account) -> str:
    signed_in = client.post("/ops/sign-in", data={"token": operator.token})
    assert signed_in.status_code == 303
    cookie = client.get_cookie(COOKIE, path="/ops")
    assert cookie is not None
    return str(cookie.value)


def shows_the_page(client: Any) -> bool:
    answer = client.get("/ops")
    if answer.status_code == 303:
        assert answer.headers["Location"] in ("/ops/sign-in", SIGN_IN)
        return False
    assert answer.status_code == 200
    return True


def sessions_stored(engine: Engine) -> list[OpsSession]:
    with make_session_factory(engine)() as session:
        return list(session.scalars(select(OpsSession)))


def test_the_cookie_holds_a_session_id_that_is_no_token_and_sign_out_ends_it(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = page_client(pg_engine, pg_url, redis_namespace)
    olivia = create_account(pg_engine, "olivia", operator=True)

    session_id = sign_in(client, olivia)

    assert olivia.token not in session_id and session_id not in olivia.token
    assert shows_the_page(client)
    [stored] = sessions_stored(pg_engine)
    assert stored.id_hash == hash_token(session_id)  # the ID itself is not stored
    assert session_id not in stored.id_hash

    # The cookie's value is not a bearer token, for the API or for the page.
    as_bearer = {"Authorization": f"Bearer {session_id}"}
    refused = client.get("/ops/dead-letters", headers=as_bearer)
    assert refused.status_code == 401
    assert client.get("/tasks", headers=as_bearer).status_code == 401
    with page_client(pg_engine, pg_url, redis_namespace) as stranger:
        assert stranger.get("/ops", headers=as_bearer).status_code == 303

    signed_out = client.post("/ops/sign-out")
    assert signed_out.status_code == 303
    assert client.get_cookie(COOKIE, path="/ops") is None
    assert sessions_stored(pg_engine) == []

    # The cookie, replayed after sign-out, opens nothing.
    client.set_cookie(COOKIE, session_id, path="/ops")
    assert not shows_the_page(client)
    replayed = client.post("/ops/page/dead-letters/bulk", data={"action": "retry-matching"})
    assert replayed.status_code == 303 and replayed.headers["Location"].endswith("/ops/sign-in")


def test_a_session_ends_at_its_expiry(pg_engine: Engine, pg_url: str, redis_namespace: str) -> None:
    clock = Clock()
    client = page_client(pg_engine, pg_url, redis_namespace, clock)
    olivia = create_account(pg_engine, "olivia", operator=True)
    session_id = sign_in(client, olivia)
    [stored] = sessions_stored(pg_engine)
    assert stored.expires_at == clock.now + timedelta(hours=8)

    clock.now += timedelta(hours=8) - timedelta(seconds=1)
    assert shows_the_page(client)
    clock.now += timedelta(seconds=1)
    assert not shows_the_page(client)

    # Expired sessions are purged when someone signs in again.
    other = page_client(pg_engine, pg_url, redis_namespace, clock)
    sign_in(other, olivia)
    assert [s.id_hash for s in sessions_stored(pg_engine)] != [hash_token(session_id)]
    assert len(sessions_stored(pg_engine)) == 1


def test_revoking_the_token_ends_its_sessions(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = page_client(pg_engine, pg_url, redis_namespace)
    olivia = create_account(pg_engine, "olivia", operator=True)
    sign_in(client, olivia)
    assert shows_the_page(client)

    with unit_of_work(make_session_factory(pg_engine)) as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == hash_token(olivia.token))
            .values(revoked_at=func.now())
        )

    assert not shows_the_page(client)


def test_signing_in_again_replaces_the_browsers_session_and_drops_an_old_token_cookie(
    pg_engine: Engine, pg_url: str, redis_namespace: str
) -> None:
    client = page_client(pg_engine, pg_url, redis_namespace)
    olivia = create_account(pg_engine, "olivia", operator=True)
    client.set_cookie("reminders_ops_token", olivia.token, path="/ops")  # an older version's
    first = sign_in(client, olivia)
    assert client.get_cookie("reminders_ops_token", path="/ops") is None

    second = sign_in(client, olivia)

    assert first != second
    assert [s.id_hash for s in sessions_stored(pg_engine)] == [hash_token(second)]
