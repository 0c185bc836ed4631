"""A bulk action by filter whose search or error type is a typo touches nothing (SPEC §6).

The ``/ops`` page once listed nothing for ``q=zzz`` and yet offered to discard every dead
letter for it, and retried them all when confirmed. Here, through the real HTTP routes of
the app behind a threaded server on 127.0.0.1, with real dead letters in Redis (reminders
failed by workers against a webhook answering 500, and a body no worker could decode):
for each typo the page lists nothing, the dry run counts 0, and the confirmed action
changes no reminder, no broker entry and records no operator action; the JSON bulk retry
with a mistyped error type does the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters
from shared.store.db import unit_of_work
from shared.store.models import OperatorAction
from tests.conftest import create_account, served
from tests.pipeline.conftest import Receiver, Stack
from workers.producer import scan_due_tasks

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

POISON = {"webhook_secret": "s", "max_retries": 1, "min_backoff_ms": 50, "max_backoff_ms": 200}


@pytest.fixture
def server(stack: Stack) -> Iterator[str]:
    app = create_app(stack.settings(rate_limit=""), engine=stack.engine)
    with served(app) as url:
        yield url


def dead_letters_for_real(stack: Stack, receiver: Receiver) -> list[str]:
    """Two reminders of owner "owen" failed by workers, and one undecodable body, all in
    the broker's dead letters; the reminders' message IDs."""
    receiver.script = lambda n: 500
    owner = stack.account("owen")
    for n in range(2):
        stack.add_task(owner, datetime.now(UTC) + timedelta(minutes=10 + n), 3600)
    broker, _ = stack.broker(webhook_url=receiver.url, **POISON)
    broker_id = uuid.uuid4().hex  # as enqueue_batch spells broker ids
    broker.client.hset(f"{stack.namespace}:{QUEUE_NAME}.msgs", broker_id, b"not JSON")
    broker.client.rpush(f"{stack.namespace}:{QUEUE_NAME}", broker_id)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker):
        assert stack.wait_for(
            lambda: stack.states() == {"failed": 2} and len(dead_letters(broker, QUEUE_NAME)) == 3,
            30,
        ), stack.states()
    return [str(row.message_id) for row in stack.reminders()]


def unchanged(stack: Stack, broker_entries: int) -> None:
    """Every dead letter is as the workers left it, and no operator acted on one."""
    assert {(row.state, row.discarded_at) for row in stack.reminders()} == {("failed", None)}
    broker, _ = stack.broker()
    assert len(dead_letters(broker, QUEUE_NAME)) == broker_entries
    with unit_of_work(stack.sessions) as session:
        assert list(session.scalars(select(OperatorAction.action))) == []


def typos(message_ids: list[str]) -> list[str]:
    mistyped_id = message_ids[0][:-1] + ("0" if message_ids[0][-1] != "0" else "1")
    return [
        "zzz",  # could be a user name: nobody's
        "owne",  # the owner's name, mistyped
        "Owen",  # names are exact
        "owen smith",  # can be neither an ID nor a user name
        mistyped_id,  # a UUID, but no dead letter's
        message_ids[0][:13],  # the start of an ID (and a possible user name)
    ]


def test_a_mistyped_search_lists_nothing_and_its_bulk_actions_touch_nothing(
    stack: Stack, receiver: Receiver, server: str
) -> None:
    message_ids = dead_letters_for_real(stack, receiver)
    operator = create_account(stack.engine, "olivia", operator=True)

    with httpx.Client(base_url=server, timeout=30) as client:
        signed_in = client.post("/ops/sign-in", data={"token": operator.token})
        assert signed_in.status_code == 303
        # The page lists everything without a search: the typos below are what hides them.
        everything = client.get("/ops").text
        assert all(message_id in everything for message_id in message_ids)
        for typed in typos(message_ids):
            for error_type in ("", "TransientDeliveryError"):
                listed = client.get("/ops", params={"q": typed, "error_type": error_type})
                assert listed.status_code == 200
                assert 'id="no-dead-letters"' in listed.text, typed
                for action in ("discard-matching", "retry-matching"):
                    form = {"action": action, "q": typed, "error_type": error_type}
                    dry_run = client.post(
                        "/ops/page/dead-letters/bulk", data=form, headers={"Origin": server}
                    )
                    assert dry_run.status_code == 200
                    assert "Nothing matches: no dead letter would be" in dry_run.text, typed
                    assert 'name="confirmed"' not in dry_run.text
                    done = client.post(
                        "/ops/page/dead-letters/bulk",
                        data={**form, "confirmed": "yes"},
                        headers={"Origin": server},
                    )
                    assert done.status_code == 303
                    notice = unquote(done.cookies["reminders_ops_notice"])
                    assert notice.startswith(("Discarded 0 of 0", "Retrying 0 of 0")), notice
                    unchanged(stack, broker_entries=3)


@pytest.mark.parametrize("error_type", ["TransientDeliveryErorr", "transientdeliveryerror"])
def test_the_json_bulk_retry_with_a_mistyped_error_type_retries_nothing(
    stack: Stack, receiver: Receiver, server: str, error_type: str
) -> None:
    """The JSON API filters by error type and age only (no free text): a mistyped error
    type matches nothing, in the dry run and when it acts."""
    dead_letters_for_real(stack, receiver)
    operator = create_account(stack.engine, "olivia", operator=True)

    with httpx.Client(base_url=server, headers=operator.headers, timeout=30) as client:
        listed = client.get("/ops/dead-letters", params={"error_type": error_type})
        dry_run = client.post(
            "/ops/dead-letters/retry", json={"error_type": error_type, "dry_run": True}
        )
        done = client.post("/ops/dead-letters/retry", json={"error_type": error_type})
        # The same filter, spelled right, would retry both: the typo is what matches nothing.
        right = client.post(
            "/ops/dead-letters/retry",
            json={"error_type": "TransientDeliveryError", "dry_run": True},
        )

    assert listed.status_code == 200 and listed.json()["items"] == []
    assert dry_run.json() == {"dry_run": True, "count": 0, "message_ids": []}
    assert done.json() == {"dry_run": False, "count": 0, "message_ids": []}
    assert right.json()["count"] == 2
    # The bulk retry records what it did (0 requeued) and touches no dead letter.
    assert {(row.state, row.discarded_at) for row in stack.reminders()} == {("failed", None)}
    broker, _ = stack.broker()
    assert len(dead_letters(broker, QUEUE_NAME)) == 3
