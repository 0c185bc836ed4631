"""Endpoint delivery, health and attempt retention on both databases (SPEC §5).

The pipeline tests prove routing through real workers on PostgreSQL; this proves the same
transaction works on SQLite, which the embedded default runs, where the delivery's write
transaction holds the database's only write lock while the endpoint is called: a successful
attempt is recorded in that transaction, a failed one once it has rolled back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import standardwebhooks
from sqlalchemy import Engine, func, select

from shared.delivery import endpoints
from shared.delivery.endpoints import Attempt
from shared.delivery.secret_box import SecretBox, generate_key
from shared.delivery.webhooks import WebhookSender
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import Endpoint, EndpointAttempt, Task
from tests.integration.test_delivery_transaction import NOW, Recorder, add_task, named, state
from tests.pipeline.conftest import Receiver
from workers.delivery import Outcome, deliver_occurrence
from workers.endpoint_channel import EndpointChannel

DAY = timedelta(days=1)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def local_channel(engine: Engine, box: SecretBox) -> EndpointChannel:
    """Endpoints on 127.0.0.1 allowed, as in a local setup."""
    from shared.delivery.webhook_transport import AddressGuard

    sender = WebhookSender(5.0, AddressGuard(allow_private=True))
    return EndpointChannel(engine, box, sender, disable_after=5 * DAY, clock=lambda: NOW)


def new_endpoint(
    engine: Engine, box: SecretBox, owner_id: uuid.UUID, url: str
) -> tuple[uuid.UUID, str]:
    with unit_of_work(make_session_factory(engine)) as session:
        endpoint, secret = endpoints.create(session, box, owner_id, url, None, NOW)
        return endpoint.id, secret


def test_a_task_naming_an_endpoint_is_sent_there_once_and_the_attempt_logged(
    migrated: Engine, receiver: Receiver
) -> None:
    box = SecretBox([generate_key()])
    task = add_task(migrated)
    endpoint_id, secret = new_endpoint(migrated, box, task.owner_id, receiver.url)
    with unit_of_work(make_session_factory(migrated)) as session:
        row = session.get(Task, task.id)
        assert row is not None
        row.endpoint_id = endpoint_id
    deployment = Recorder()
    channel = local_channel(migrated, box)

    first = deliver_occurrence(
        migrated, deployment, named(task), clock=lambda: NOW, endpoints=channel
    )
    again = deliver_occurrence(
        migrated, deployment, named(task), clock=lambda: NOW, endpoints=channel
    )

    assert (first.outcome, first.channel, again.outcome) == (
        Outcome.SENT,
        "endpoint",
        Outcome.DUPLICATE,
    )
    assert deployment.delivered == []
    [receipt] = receiver.receipts
    headers = {name.lower(): value for name, value in receipt.headers.items()}
    assert standardwebhooks.Webhook(secret).verify(receipt.body, headers)["task_id"] == str(task.id)
    assert state(migrated, task) == ("sent", 1)
    with unit_of_work(make_session_factory(migrated)) as session:
        [attempt] = session.scalars(select(EndpointAttempt)).all()
        assert (attempt.ok, attempt.status_code, attempt.kind) == (True, 200, "reminder")


def test_a_failed_endpoint_attempt_rolls_the_mark_back_and_is_logged(
    migrated: Engine, receiver: Receiver
) -> None:
    receiver.script = lambda n: 503
    box = SecretBox([generate_key()])
    task = add_task(migrated)
    endpoint_id, _ = new_endpoint(migrated, box, task.owner_id, receiver.url)
    with unit_of_work(make_session_factory(migrated)) as session:
        row = session.get(Task, task.id)
        assert row is not None
        row.endpoint_id = endpoint_id
    with pytest.raises(Exception, match="endpoint answered 503"):
        deliver_occurrence(
            migrated,
            Recorder(),
            named(task),
            clock=lambda: NOW,
            endpoints=local_channel(migrated, box),
        )
    assert state(migrated, task)[0] == "queued" or state(migrated, task)[0] == "waiting"
    with unit_of_work(make_session_factory(migrated)) as session:
        [attempt] = session.scalars(select(EndpointAttempt)).all()
        assert (attempt.ok, attempt.status_code, attempt.error) == (False, 503, "answered 503")


def attempt(at: datetime, ok: bool) -> Attempt:
    return Attempt(
        "reminder", str(uuid.uuid4()), ok, 200 if ok else 500, 3, None if ok else "answered 500", at
    )


def test_health_disables_only_after_failing_for_the_whole_setting(migrated: Engine) -> None:
    box = SecretBox([generate_key()])
    owner = add_task(migrated).owner_id
    endpoint_id, _ = new_endpoint(migrated, box, owner, "https://hooks.example/x")
    start = datetime(2030, 1, 1, tzinfo=UTC)

    def record(at: datetime, ok: bool) -> endpoints.Health:
        return endpoints.record_attempt(migrated, endpoint_id, attempt(at, ok), 5 * DAY)

    assert not record(start, ok=False).disabled_now
    assert not record(start + 4 * DAY, ok=False).disabled_now
    assert not record(start + 4 * DAY + timedelta(hours=1), ok=True).disabled_now  # resets
    assert not record(start + 6 * DAY, ok=False).disabled_now  # failing for 0 s only
    health = record(start + 11 * DAY, ok=False)
    assert health.disabled_now and health.reason is not None
    assert health.reason.startswith("every delivery attempt failed since 2030-01-07T00:00:00Z")
    assert not record(start + 12 * DAY, ok=False).disabled_now  # already disabled: once
    with unit_of_work(make_session_factory(migrated)) as session:
        [listed] = endpoints.health(session, failing_only=True)
        assert listed.id == endpoint_id and listed.enabled is False


def test_attempts_older_than_the_setting_are_purged(migrated: Engine) -> None:
    box = SecretBox([generate_key()])
    owner = add_task(migrated).owner_id
    endpoint_id, _ = new_endpoint(migrated, box, owner, "https://hooks.example/x")
    for days_ago in (40, 31, 29, 1):
        endpoints.record_attempt(migrated, endpoint_id, attempt(NOW - days_ago * DAY, True), DAY)

    purged = endpoints.purge_attempts(migrated, timedelta(days=30), clock=lambda: NOW)

    assert purged == 2
    with unit_of_work(make_session_factory(migrated)) as session:
        left = session.scalar(select(func.count()).select_from(EndpointAttempt))
        assert left == 2


def test_successes_move_last_success_at_once_a_second_and_a_failure_is_cleared_at_once(
    migrated: Engine,
) -> None:
    """Threads delivering to one endpoint do not each update its row: while it keeps
    succeeding, ``last_success_at`` moves on at most once a second; the first success after
    a failure clears ``failing_since`` whenever it comes. Every attempt is logged."""
    box = SecretBox([generate_key()])
    owner = add_task(migrated).owner_id
    endpoint_id, _ = new_endpoint(migrated, box, owner, "https://hooks.example/x")
    start = datetime(2030, 1, 1, tzinfo=UTC)

    def record(after_ms: int, ok: bool = True) -> tuple[datetime | None, datetime | None]:
        endpoints.record_attempt(
            migrated, endpoint_id, attempt(start + timedelta(milliseconds=after_ms), ok), DAY
        )
        with unit_of_work(make_session_factory(migrated)) as session:
            row = session.get(Endpoint, endpoint_id)
            assert row is not None
            return row.last_success_at, row.failing_since

    at = lambda ms: start + timedelta(milliseconds=ms)  # noqa: E731
    assert record(0) == (at(0), None)
    assert record(400) == (at(0), None)  # within the second: the row is left alone
    assert record(1001) == (at(1001), None)
    assert record(1200, ok=False) == (at(1001), at(1200))
    assert record(1300) == (at(1300), None)  # clears the failure at once
    with unit_of_work(make_session_factory(migrated)) as session:
        logged = session.scalar(
            select(func.count()).where(EndpointAttempt.endpoint_id == endpoint_id)
        )
    assert logged == 5
