"""Delivery through real Dramatiq workers and a local webhook (SPEC §4.1, §4.3-§4.5, §5)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import stripe
from standardwebhooks import Webhook, WebhookVerificationError

from shared.broker.queue import QUEUE_NAME, reminder_message
from shared.broker.redis_broker import dead_letters, queue_depth
from shared.store.db import unit_of_work
from shared.store.models import Task
from tests.pipeline.conftest import Receipt, Receiver, Stack, reminder_id
from workers.channels import ReminderPayload
from workers.producer import scan_due_tasks

SECRET = "test-signing-secret"


def webhook(stack: Stack, receiver: Receiver, **more):
    return stack.broker(webhook_url=receiver.url, webhook_secret=SECRET, **more)


def run_until_settled(stack: Stack, broker, expected_final: int, timeout: float = 30) -> bool:
    """Run workers until ``expected_final`` reminders are in a final state."""
    final = {"sent", "failed", "missed", "cancelled"}
    with stack.run_workers(broker):
        return stack.wait_for(
            lambda: sum(1 for row in stack.reminders() if row.state in final) >= expected_final,
            timeout,
        )


def verifications(receipt: Receipt, secret: str) -> tuple[bool, bool]:
    """Whether a customer's receiver accepts the request, checking with the Standard
    Webhooks library and with Stripe's SDK.

    ``secret`` is a plain ``REMINDERS_WEBHOOK_SECRET`` (not ``whsec_<base64>``): Stripe's
    SDK takes it as given, standardwebhooks as bytes (a ``str`` it would base64-decode).
    """
    try:
        Webhook(secret.encode()).verify(receipt.body, receipt.headers)
        standard = True
    except WebhookVerificationError:
        standard = False
    try:
        stripe.WebhookSignature.verify_header(
            receipt.body, receipt.headers["X-Reminders-Signature"], secret, tolerance=300
        )
        stripe_scheme = True
    except stripe.SignatureVerificationError:
        stripe_scheme = False
    return standard, stripe_scheme


def test_webhook_receives_signed_reminder_with_idempotency_key(
    stack: Stack, receiver: Receiver
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    alice = stack.account("alice")
    task = stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600, title="pay rent")
    broker, _ = webhook(stack, receiver)
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    [receipt] = receiver.receipts
    expected_id = str(reminder_id(task))
    assert receipt.key == expected_id
    assert receipt.headers["webhook-id"] == expected_id
    assert verifications(receipt, SECRET) == (True, True)
    assert verifications(receipt, "wrong") == (False, False)
    payload = receipt.payload
    assert set(payload) == {
        "type",
        "message_id",
        "task_id",
        "owner",
        "title",
        "due_at",
        "local_due_at",
        "remind_at",
        "offset_seconds",
    }
    assert payload["type"] == "reminder"
    assert (payload["offset_seconds"], payload["local_due_at"]) == (
        task.reminder_offsets[0],
        task.due_at.isoformat(),
    )
    assert (payload["message_id"], payload["task_id"], payload["owner"], payload["title"]) == (
        expected_id,
        str(task.id),
        "alice",
        "pay rent",
    )
    [row] = stack.reminders()
    assert (row.state, row.attempts, row.last_error) == ("sent", 1, None)
    assert row.sent_at is not None


def test_webhook_failing_twice_then_accepting_is_sent_after_growing_delays(
    stack: Stack, receiver: Receiver
) -> None:
    """Real time: the gaps between attempts are Dramatiq's backoff, measured as a receiver sees
    them."""
    receiver.script = lambda n: 503 if n < 2 else 200
    alice = stack.account()
    stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = webhook(stack, receiver, min_backoff_ms=300, max_backoff_ms=10_000)
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    times = [receipt.at for receipt in receiver.receipts]
    assert len(times) == 3
    first_gap, second_gap = times[1] - times[0], times[2] - times[1]
    # Backoff is min_backoff * 2**retry * U(1, 2): >= 0.3 s, then >= 0.6 s.
    assert first_gap >= 0.3 and second_gap >= 0.6
    assert len(set(receiver.keys())) == 1
    [row] = stack.reminders()
    assert (row.state, row.attempts) == ("sent", 3)


def test_every_attempt_sends_the_same_bytes_even_after_the_title_is_edited(
    stack: Stack, receiver: Receiver
) -> None:
    """SPEC §4.8: same key, same body, or an Idempotency-Key receiver answers 422 to the retry.

    Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out their
    backoff as delayed messages the worker releases by its clock."""
    alice = stack.account()
    task = stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600, title="before")

    edited_at: list[float] = []

    def edit_title() -> None:  # waits for the attempt's row lock, like an API request would
        with unit_of_work(stack.sessions) as session:
            edited = session.get(Task, task.id)
            assert edited is not None
            edited.title = "after"
        edited_at.append(time.monotonic())

    def answer(n: int) -> int:
        if n == 0:  # the user edits the title while the first attempt is failing
            threading.Thread(target=edit_title).start()
        return 503 if n < 2 else 200

    receiver.script = answer
    broker, _ = webhook(stack, receiver, min_backoff_ms=100, max_backoff_ms=1000)
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    assert len(receiver.receipts) == 3
    assert edited_at and edited_at[0] < receiver.receipts[2].at  # the last attempt came after
    bodies = {receipt.body for receipt in receiver.receipts}
    assert len(bodies) == 1, bodies
    assert receiver.receipts[0].payload["title"] == "before"
    assert len(set(receiver.keys())) == 1
    assert [verifications(receipt, SECRET) for receipt in receiver.receipts] == [(True, True)] * 3
    [row] = stack.reminders()
    assert (row.state, row.attempts) == ("sent", 3)


def json_log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_expected_failures_are_one_event_each_without_a_traceback(
    stack: Stack, receiver: Receiver, capfd
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    from shared.logs import configure_logging

    configure_logging("INFO")
    receiver.script = lambda n: 503 if n == 0 else 400  # retried once, then dead-lettered
    alice = stack.account()
    task = stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = webhook(stack, receiver)
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    lines = json_log_lines(capfd.readouterr().err)
    events = [line["event"] for line in lines if line["event"].startswith("reminder.")]
    assert events == ["reminder.retrying", "reminder.dead_lettered"], events
    retrying, dead = (line for line in lines if line["event"] in events)
    assert retrying["message_id"] == dead["message_id"] == str(reminder_id(task))
    assert retrying["error"] == "TransientDeliveryError: webhook answered 503"
    assert dead["error"] == "PermanentDeliveryError: webhook answered 400"
    # Nothing else about the attempts: no Dramatiq free-text line about it, no traceback.
    about_it = [
        line
        for line in lines
        if line.get("logger", "").startswith("dramatiq")
        and (retrying["message_id"] in line.get("message", "") or line["level"] != "info")
    ]
    assert not about_it, about_it
    assert not [line for line in lines if "exception" in line]


class Broken:
    """A channel with a bug: an unexpected error, which must keep its traceback."""

    name = "broken"
    announces_delivery = False
    sends_body = False

    def deliver(self, reminder: ReminderPayload) -> None:
        raise ZeroDivisionError("a bug in the channel")


def test_an_unexpected_error_is_logged_with_its_traceback(stack: Stack, capfd) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    from shared.logs import configure_logging

    configure_logging("INFO")
    alice = stack.account()
    stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = stack.broker(channel=Broken(), max_retries=0)
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    lines = json_log_lines(capfd.readouterr().err)
    unhandled = [line for line in lines if "unhandled exception" in line.get("message", "")]
    assert len(unhandled) == 1
    assert "ZeroDivisionError: a bug in the channel" in unhandled[0]["exception"]
    [dead] = [line for line in lines if line["event"] == "reminder.dead_lettered"]
    assert dead["error_type"] == "ZeroDivisionError"


def test_webhook_always_500_fails_after_configured_retries_with_final_error(
    stack: Stack, receiver: Receiver
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    receiver.script = lambda n: 500 if n < 3 else 502  # the final attempt's error differs
    alice = stack.account()
    task = stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = webhook(stack, receiver, max_retries=3, min_backoff_ms=50, max_backoff_ms=400)
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    assert len(receiver.receipts) == 4  # 3 retries = 4 attempts
    [row] = stack.reminders()
    assert row.state == "failed"
    assert row.attempts == 4
    assert row.last_error == "TransientDeliveryError: webhook answered 502"
    [letter] = dead_letters(broker, QUEUE_NAME)
    assert letter.message_id == str(reminder_id(task))
    # Dramatiq's entry only knows the attempt before the last: the row is the record.
    assert "webhook answered 500" in (letter.traceback or "")


def test_webhook_400_is_dead_lettered_at_once_without_retries(
    stack: Stack, receiver: Receiver
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    receiver.script = lambda n: 400
    alice = stack.account()
    stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = webhook(stack, receiver)
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    assert len(receiver.receipts) == 1
    [row] = stack.reminders()
    assert (row.state, row.attempts, row.last_error) == (
        "failed",
        1,
        "PermanentDeliveryError: webhook answered 400",
    )
    assert len(dead_letters(broker, QUEUE_NAME)) == 1


def test_408_and_429_are_retried(stack: Stack, receiver: Receiver) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    receiver.script = lambda n: [408, 429, 204][n] if n < 3 else 500
    alice = stack.account()
    stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = webhook(stack, receiver)
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    assert len(receiver.receipts) == 3
    assert [row.state for row in stack.reminders()] == ["sent"]


def test_unreachable_webhook_is_transient(stack: Stack, receiver: Receiver) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    alice = stack.account()
    stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = stack.broker(
        webhook_url="http://127.0.0.1:1/closed",
        webhook_secret=SECRET,
        max_retries=1,
        min_backoff_ms=50,
    )
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    [row] = stack.reminders()
    assert (row.state, row.attempts) == ("failed", 2)
    assert row.last_error is not None and row.last_error.startswith(
        "TransientDeliveryError: webhook unreachable"
    )


def test_the_same_message_five_times_delivers_once(stack: Stack, receiver: Receiver) -> None:
    """Redeliveries and duplicate enqueues are suppressed by the database.

    Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out their
    backoff as delayed messages the worker releases by its clock."""
    alice = stack.account()
    task = stack.add_task(alice, datetime.now(UTC) + timedelta(minutes=10), 3600)
    broker, _ = webhook(stack, receiver)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    occurrence = reminder_id(task)
    for _ in range(4):
        broker.enqueue(reminder_message(task.id, task.due_at, occurrence))

    with stack.run_workers(broker, threads=4):
        assert stack.wait_for(
            lambda: (
                queue_depth(broker, QUEUE_NAME).ready == 0
                and queue_depth(broker, QUEUE_NAME).in_flight == 0
            ),
            20,
        )

    assert receiver.keys() == [str(occurrence)]
    assert [row.state for row in stack.reminders()] == ["sent"]


def test_stale_message_for_a_rescheduled_task_is_acknowledged_and_does_nothing(
    stack: Stack, receiver: Receiver, api_client_for
) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    alice = stack.account()
    client = api_client_for(stack)
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    task_id = client.post(
        "/tasks", json={"title": "t", "due_at": due.isoformat()}, headers=alice.headers
    ).json["id"]
    broker, _ = webhook(stack, receiver)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    client.patch(
        f"/tasks/{task_id}",
        json={"due_at": (due + timedelta(days=2)).isoformat()},
        headers=alice.headers,
    )

    with stack.run_workers(broker):
        assert stack.wait_for(lambda: queue_depth(broker, QUEUE_NAME).ready == 0, 10)
        stack.wait_for(lambda: queue_depth(broker, QUEUE_NAME).in_flight == 0, 10)

    assert receiver.receipts == []
    states = sorted((row.state, row.due_at) for row in stack.reminders())
    assert states == [("cancelled", due), ("waiting", due + timedelta(days=2))]
    assert dead_letters(broker, QUEUE_NAME) == []


def test_malformed_message_is_dead_lettered_without_retries(stack: Stack) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    broker, _ = stack.broker()
    from dramatiq import Message

    broker.enqueue(
        Message(
            queue_name=QUEUE_NAME,
            actor_name="send_reminder",
            args=("not-a-uuid", "yesterday"),
            kwargs={},
            options={},
            message_id=str(uuid.uuid4()),
        )
    )

    with stack.run_workers(broker):
        assert stack.wait_for(lambda: len(dead_letters(broker, QUEUE_NAME)) == 1, 10)


def test_log_channel_writes_one_structured_sent_event(stack: Stack, capfd) -> None:
    """Real time: a real Dramatiq worker delivers through a real HTTP receiver; retries wait out
    their backoff as delayed messages the worker releases by its clock."""
    from shared.logs import configure_logging

    configure_logging("INFO")
    alice = stack.account()
    task = stack.add_task(
        alice, datetime.now(UTC) + timedelta(minutes=10), 3600, title="SECRET-TITLE"
    )
    broker, _ = stack.broker()
    scan_due_tasks(stack.sessions, broker, stack.settings())

    assert run_until_settled(stack, broker, 1)

    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    sent = [line for line in lines if line.get("event") == "reminder.sent"]
    assert len(sent) == 1
    assert sent[0]["message_id"] == str(reminder_id(task))
    assert sent[0]["task_id"] == str(task.id)
    assert all("SECRET-TITLE" not in json.dumps(line) for line in lines)
