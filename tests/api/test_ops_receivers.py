"""Operators see each receiver's limits state (SPEC §4.9): ``GET /ops/receivers`` and the
page's Receivers table show what the gate keeps in Redis — requests in flight, reminders
parked, a Retry-After back-off, the slow lane, the counts — beside each receiver's limits
and owner, troubled first; operator tokens only; 503 when Redis cannot be reached.

Real app, real PostgreSQL and Redis. The gate that workers use is driven directly, and the
app reads it, at one injected clock: no worker and no waiting.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
import redis
from dramatiq import Message
from dramatiq.common import current_millis
from sqlalchemy import Engine, delete

from api.app import RECEIVERS_SHOWN, create_app
from shared.broker.gate import Gate, Limits, Verdict, make_gate
from shared.broker.queue import make_broker
from shared.config import Settings
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import Endpoint
from tests.conftest import REDIS_URL, Account, create_account, make_settings

PROBLEM = "application/problem+json"
WEBHOOK = Limits(max_concurrency=4, max_per_second=0.5)
BACK_OFF_MS = 120_000


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass
class Deployment:
    client: Any
    engine: Engine
    settings: Settings
    gate: Gate  # the workers' gate, on the same Redis and namespace, at the injected clock
    clock: Clock
    operator: Account

    def endpoint(self, owner: Account, limits: Limits) -> uuid.UUID:
        endpoint_id = uuid.uuid4()
        with unit_of_work(make_session_factory(self.engine)) as session:
            session.add(
                Endpoint(
                    id=endpoint_id,
                    owner_id=owner.id,
                    url="https://receiver.example/hook",
                    secret="not read here",
                    max_concurrency=limits.max_concurrency,
                    max_per_second=limits.max_per_second,
                )
            )
        return endpoint_id


@pytest.fixture
def deployment(pg_engine: Engine, pg_url: str, redis_namespace: str) -> Iterator[Deployment]:
    settings = make_settings(
        database_url=pg_url,
        redis_url=REDIS_URL,
        redis_namespace=redis_namespace,
        webhook_url="https://hooks.example/reminders",
        webhook_secret="s",
        webhook_max_concurrency=WEBHOOK.max_concurrency,
        webhook_max_per_second=WEBHOOK.max_per_second,
    )
    clock = Clock(current_millis())
    app = create_app(
        settings, engine=pg_engine, clock=lambda: datetime.fromtimestamp(clock.now / 1000, UTC)
    )
    app.testing = True
    workers_gate = make_gate(settings, make_broker(settings))
    gate = Gate(
        workers_gate.client,
        workers_gate.namespace,
        "reminders",
        lease_ms=workers_gate.lease_ms,
        clock_ms=clock,
    )
    yield Deployment(
        app.test_client(),
        pg_engine,
        settings,
        gate,
        clock,
        create_account(pg_engine, "olga", operator=True),
    )
    workers_gate.client.close()


def reminder() -> Message[Any]:
    return Message(
        queue_name="reminders",
        actor_name="send_reminder",
        args=(str(uuid.uuid4()), "2030-01-31T09:00:00+00:00"),
        kwargs={},
        options={"redis_message_id": uuid.uuid4().hex},
        message_id=str(uuid.uuid4()),
    )


@dataclass
class Scene:
    full: uuid.UUID  # ada's: both slots busy, two reminders parked
    throttled: uuid.UUID  # bob's: answered 429 with Retry-After, backing off
    deleted: uuid.UUID  # an endpoint deleted since its last request
    back_off_until: datetime


def set_the_scene(deployment: Deployment) -> Scene:
    """Four receivers, each in one of the states operators need to tell apart."""
    gate, clock = deployment.gate, deployment.clock
    start = clock.now
    ada = create_account(deployment.engine, "ada")
    bob = create_account(deployment.engine, "bob")
    two = Limits(max_concurrency=2, max_per_second=None)
    full = deployment.endpoint(ada, two)
    probe = reminder()  # its first request answered: proven, both slots open to it
    assert gate.admit(f"endpoint:{full}", two, probe).verdict is Verdict.ADMITTED
    gate.release(f"endpoint:{full}", probe.message_id, duration_ms=30)
    verdicts = [gate.admit(f"endpoint:{full}", two, reminder()).verdict for _ in range(4)]
    assert verdicts == [Verdict.ADMITTED] * 2 + [Verdict.PARKED] * 2

    rated = Limits(max_concurrency=8, max_per_second=5.0)
    throttled = deployment.endpoint(bob, rated)
    asked = reminder()
    assert gate.admit(f"endpoint:{throttled}", rated, asked).verdict is Verdict.ADMITTED
    gate.release(
        f"endpoint:{throttled}",
        asked.message_id,
        duration_ms=30,
        back_off_ms=BACK_OFF_MS,
        throttled=True,
    )
    held = gate.admit(f"endpoint:{throttled}", rated, reminder())
    assert held.verdict is Verdict.BACKING_OFF

    # The webhook: one request still going after a second and a half — slow before it ends.
    clock.now = start - 1_500
    assert gate.admit("webhook", WEBHOOK, reminder()).verdict is Verdict.ADMITTED
    clock.now = start

    deleted = deployment.endpoint(ada, two)
    done = reminder()
    assert gate.admit(f"endpoint:{deleted}", two, done).verdict is Verdict.ADMITTED
    gate.release(f"endpoint:{deleted}", done.message_id, duration_ms=12)
    with unit_of_work(make_session_factory(deployment.engine)) as session:
        session.execute(delete(Endpoint).where(Endpoint.id == deleted))
    return Scene(
        full, throttled, deleted, datetime.fromtimestamp((start + BACK_OFF_MS) / 1000, UTC)
    )


def test_operators_see_each_receiver_s_limits_state_troubled_first(
    deployment: Deployment,
) -> None:
    scene = set_the_scene(deployment)

    response = deployment.client.get("/ops/receivers", headers=deployment.operator.headers)

    assert response.status_code == 200
    items = response.json["items"]
    assert [item["receiver"] for item in items] == [
        f"endpoint:{scene.throttled}",  # backing off
        f"endpoint:{scene.full}",  # reminders parked
        "webhook",  # slow
        f"endpoint:{scene.deleted}",
    ]
    throttled, full, webhook, deleted = items
    backing_off_until = throttled.pop("backing_off_until")
    assert datetime.fromisoformat(backing_off_until) == scene.back_off_until
    assert throttled == {
        "receiver": f"endpoint:{scene.throttled}",
        "endpoint_id": str(scene.throttled),
        "owner": "bob",
        "max_concurrency": 8,
        "max_per_second": 5.0,
        "in_flight": 0,
        "parked": 0,
        "slow": False,
        "average_ms": 30,
        "deferred": 1,
        "throttled": 1,
    }
    assert full == {
        "receiver": f"endpoint:{scene.full}",
        "endpoint_id": str(scene.full),
        "owner": "ada",
        "max_concurrency": 2,
        "max_per_second": None,
        "in_flight": 2,
        "parked": 2,
        "backing_off_until": None,
        "slow": False,
        "average_ms": 30,
        "deferred": 2,
        "throttled": 0,
    }
    assert webhook == {
        "receiver": "webhook",
        "endpoint_id": None,
        "owner": None,
        "max_concurrency": 4,
        "max_per_second": 0.5,
        "in_flight": 1,
        "parked": 0,
        "backing_off_until": None,
        "slow": True,
        "average_ms": None,  # its one request has not ended
        "deferred": 0,
        "throttled": 0,
    }
    assert (deleted["endpoint_id"], deleted["owner"]) == (str(scene.deleted), None)
    assert (deleted["max_concurrency"], deleted["max_per_second"]) == (None, None)
    assert (deleted["in_flight"], deleted["average_ms"]) == (0, 12)
    # Identifiers and owners only: never where an endpoint is.
    assert "receiver.example" not in response.get_data(as_text=True)

    # Two minutes on, nobody having released anything: the back-off is over, and requests
    # whose lease lapsed (their workers died) are no longer in flight; the parked still wait.
    deployment.clock.now += BACK_OFF_MS
    later = deployment.client.get("/ops/receivers", headers=deployment.operator.headers).json
    by_name = {item["receiver"]: item for item in later["items"]}
    assert by_name[f"endpoint:{scene.throttled}"]["backing_off_until"] is None
    assert (
        by_name[f"endpoint:{scene.full}"]["in_flight"],
        by_name[f"endpoint:{scene.full}"]["parked"],
    ) == (0, 2)
    assert (by_name["webhook"]["in_flight"], by_name["webhook"]["slow"]) == (0, False)
    assert later["items"][0]["receiver"] == f"endpoint:{scene.full}"  # now the most troubled


class Table(HTMLParser):
    """The rows of one table of a page: each row's attributes and its cells' text."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.depth = 0  # > 0 inside the table
        self.rows: list[tuple[dict[str, str | None], list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.table_id):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append((dict(attrs), []))
        elif self.depth and tag == "td":
            self.cell = []
        elif self.depth and tag == "br" and self.cell is not None:
            self.cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag == "td" and self.cell is not None:
            self.rows[-1][1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


COLUMNS = [
    "receiver",
    "owner",
    "limits",
    "in flight",
    "parked",
    "backing off until",
    "slow lane",
    "average",
    "deferred",
    "throttled",
]


def receivers_table(html: str) -> dict[str, dict[str, str]]:
    table = Table("receivers")
    table.feed(html)
    return {
        str(attrs.get("data-receiver") or attrs.get("id")): dict(zip(COLUMNS, cells, strict=False))
        for attrs, cells in table.rows
        if cells
    }


def signed_in(deployment: Deployment) -> Any:
    answer = deployment.client.post("/ops/sign-in", data={"token": deployment.operator.token})
    assert answer.status_code == 303
    return deployment.client


def test_the_page_shows_the_same_receivers_in_a_table(deployment: Deployment) -> None:
    scene = set_the_scene(deployment)

    page = signed_in(deployment).get("/ops")

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    rows = receivers_table(html)
    assert list(rows) == [
        f"endpoint:{scene.throttled}",
        f"endpoint:{scene.full}",
        "webhook",
        f"endpoint:{scene.deleted}",
    ]
    throttled = rows[f"endpoint:{scene.throttled}"]
    assert throttled == {
        "receiver": str(scene.throttled),
        "owner": "bob",
        "limits": "8 at once, 5/s",
        "in flight": "0",
        "parked": "0",
        "backing off until": scene.back_off_until.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "slow lane": "no",
        "average": "30 ms",
        "deferred": "1",
        "throttled": "1",
    }
    full = rows[f"endpoint:{scene.full}"]
    assert (full["owner"], full["limits"]) == ("ada", "2 at once, no rate limit")
    assert (full["in flight"], full["parked"], full["backing off until"]) == ("2", "2", "")
    webhook = rows["webhook"]
    assert (webhook["receiver"], webhook["limits"]) == ("deployment webhook", "4 at once, 0.5/s")
    assert (webhook["in flight"], webhook["slow lane"]) == ("1", "yes")
    deleted = rows[f"endpoint:{scene.deleted}"]
    assert deleted["receiver"] == f"{scene.deleted}\nendpoint deleted"
    assert (deleted["owner"], deleted["limits"], deleted["average"]) == ("", "", "12 ms")
    assert "receiver.example" not in html


def test_with_no_receiver_state_the_api_lists_none_and_the_page_says_so(
    deployment: Deployment,
) -> None:
    listed = deployment.client.get("/ops/receivers", headers=deployment.operator.headers)
    page = signed_in(deployment).get("/ops").get_data(as_text=True)

    assert listed.status_code == 200 and listed.json == {"items": []}
    assert receivers_table(page) == {
        "no-receivers": {
            "receiver": "None: no receiver has requests in flight, reminders parked or counts."
        }
    }


def test_what_the_page_shows_of_a_receiver_is_escaped(deployment: Deployment) -> None:
    odd = '<img src=x onerror="alert(1)">'
    limits = Limits(max_concurrency=1, max_per_second=None)
    assert deployment.gate.admit(odd, limits, reminder()).verdict is Verdict.ADMITTED

    html = signed_in(deployment).get("/ops").get_data(as_text=True)

    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=" in html
    assert list(receivers_table(html)) == [odd]


def test_a_non_operator_token_is_refused_and_no_token_is_asked_for_one(
    deployment: Deployment,
) -> None:
    set_the_scene(deployment)
    user = create_account(deployment.engine, "ursula")

    refused = deployment.client.get("/ops/receivers", headers=user.headers)
    anonymous = deployment.client.get("/ops/receivers")

    assert (refused.status_code, refused.content_type) == (403, PROBLEM)
    assert "items" not in refused.json
    assert (anonymous.status_code, anonymous.content_type) == (401, PROBLEM)
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")


def test_with_redis_unreachable_the_receivers_answer_503_as_the_queues_do(
    pg_engine: Engine, pg_url: str
) -> None:
    settings = make_settings(database_url=pg_url, redis_url="redis://127.0.0.1:1/0")
    client = create_app(settings, engine=pg_engine).test_client()
    operator = create_account(pg_engine, "olga", operator=True)

    answers = {
        path: client.get(path, headers=operator.headers)
        for path in ("/ops/receivers", "/ops/queues")
    }

    for path, answer in answers.items():
        assert (answer.status_code, answer.content_type) == (503, PROBLEM), path
        assert int(answer.headers["Retry-After"]) >= 1, path
    assert answers["/ops/receivers"].json["detail"] == answers["/ops/queues"].json["detail"]


def test_the_api_reads_the_workers_namespace(deployment: Deployment) -> None:
    """A receiver of another deployment (another namespace on the same Redis) is not listed."""
    other = f"{deployment.settings.redis_namespace}-other"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        elsewhere = Gate(client, other, "reminders", lease_ms=15_000)
        elsewhere.admit("webhook", WEBHOOK, reminder())
        listed = deployment.client.get("/ops/receivers", headers=deployment.operator.headers)
    finally:
        stale = list(client.scan_iter(match=f"{other}:*"))
        if stale:
            client.delete(*stale)
        client.close()

    assert listed.json == {"items": []}


def test_the_page_lists_the_most_troubled_receivers_and_says_how_many_more(
    deployment: Deployment,
) -> None:
    one = Limits(max_concurrency=1, max_per_second=None)
    for n in range(RECEIVERS_SHOWN + 1):
        deployment.gate.admit(f"receiver-{n:03}", one, reminder())
    deployment.gate.admit("receiver-zzz", one, reminder())
    deployment.gate.admit("receiver-zzz", one, reminder())  # parked: the most troubled

    html = signed_in(deployment).get("/ops").get_data(as_text=True)
    listed = deployment.client.get("/ops/receivers", headers=deployment.operator.headers)

    rows = list(receivers_table(html))
    assert len(rows) == RECEIVERS_SHOWN and rows[0] == "receiver-zzz"
    assert "And 2 more, less troubled: all of them at <code>GET /ops/receivers</code>." in html
    assert len(listed.json["items"]) == RECEIVERS_SHOWN + 2
