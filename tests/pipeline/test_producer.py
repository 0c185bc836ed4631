"""The producer enqueues exactly the due occurrences, each once (SPEC §4.1, §4.2, §4.7)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import decode_message, pending_message_ids, queue_depth
from shared.store.occurrences import cancel_pending
from tests.pipeline.conftest import Receiver, Stack, reminder_id
from workers.producer import scan_due_tasks

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


def at(moment: datetime):
    return lambda: moment


def scan(stack: Stack, broker, now: datetime = NOW, **settings):
    return scan_due_tasks(stack.sessions, broker, stack.settings(**settings), clock=at(now))


def test_selection_boundaries_remind_time_now_before_and_after(stack: Stack) -> None:
    alice = stack.account()
    broker, _ = stack.broker()
    exactly_now = stack.add_task(alice, NOW + timedelta(hours=1), remind_before_seconds=3600)
    just_before = stack.add_task(alice, NOW + timedelta(hours=1) - timedelta(seconds=1), 3600)
    just_after = stack.add_task(alice, NOW + timedelta(hours=1, seconds=1), 3600)

    result = scan(stack, broker, lookahead_seconds=0)

    states = {row.task_id: row.state for row in stack.reminders()}
    assert states[exactly_now.id] == "queued"
    assert states[just_before.id] == "queued"
    assert states[just_after.id] == "waiting"
    assert result.enqueued == 2
    assert pending_message_ids(broker, QUEUE_NAME) == {
        str(row.message_id) for row in stack.reminders() if row.state == "queued"
    }


def test_reminders_within_the_lookahead_are_enqueued_delayed_to_their_remind_time(
    stack: Stack,
) -> None:
    alice = stack.account()
    broker, _ = stack.broker()
    lead = 3600
    due_now = stack.add_task(alice, NOW + timedelta(seconds=lead), lead)
    at_horizon = stack.add_task(alice, NOW + timedelta(seconds=lead + 90), lead)
    beyond = stack.add_task(alice, NOW + timedelta(seconds=lead + 91), lead)

    result = scan(stack, broker, lookahead_seconds=90)

    states = {row.task_id: row.state for row in stack.reminders()}
    assert (states[due_now.id], states[at_horizon.id], states[beyond.id]) == (
        "queued",
        "queued",
        "waiting",
    )
    assert result.enqueued == 2
    depth = queue_depth(broker, QUEUE_NAME)
    assert (depth.ready, depth.delayed) == (1, 1)
    [delayed] = [
        decode_message(blob)
        for blob in broker.client.hgetall(f"{broker.namespace}:{QUEUE_NAME}.DQ.msgs").values()
    ]
    assert delayed.message_id == str(reminder_id(at_horizon))
    assert delayed.options["eta"] == round((NOW + timedelta(seconds=90)).timestamp() * 1000)


def test_catch_up_window_sends_late_within_and_records_missed_beyond(stack: Stack) -> None:
    alice = stack.account()
    broker, _ = stack.broker()
    catchup = 3600
    within = stack.add_task(alice, NOW - timedelta(seconds=catchup - 1), 600)
    at_edge = stack.add_task(alice, NOW - timedelta(seconds=catchup), 600)
    beyond = stack.add_task(alice, NOW - timedelta(seconds=catchup + 1), 600)
    not_yet_due = stack.add_task(alice, NOW + timedelta(seconds=300), 600)

    result = scan(stack, broker, catchup_seconds=catchup)

    rows = {row.task_id: row for row in stack.reminders()}
    assert (rows[within.id].state, rows[within.id].late) == ("queued", True)
    assert (rows[at_edge.id].state, rows[at_edge.id].late) == ("queued", True)
    assert rows[beyond.id].state == "missed"
    assert (rows[not_yet_due.id].state, rows[not_yet_due.id].late) == ("queued", False)
    assert (result.enqueued, result.missed) == (3, 1)
    assert queue_depth(broker, QUEUE_NAME).ready == 3


def test_tasks_planned_after_their_remind_time_are_sent_at_once(
    stack: Stack, api_client_for, receiver: Receiver
) -> None:
    """Created or rescheduled with the remind time long past: due at once, not missed or late.

    The system was never down, so nothing may be ``missed``; SPEC §2 keeps that state for
    downtime past the catch-up window.

    Real time: a real Dramatiq worker delivers through a real HTTP receiver the reminders the API
    enqueued."""
    alice = stack.account()
    client = api_client_for(stack)
    now = datetime.now(UTC).replace(microsecond=0)

    def create(due_at: datetime, **fields) -> str:
        body = {"title": "t", "due_at": due_at.isoformat(), **fields}
        response = client.post("/tasks", json=body, headers=alice.headers)
        assert response.status_code == 201, response.get_data(as_text=True)
        return str(response.json["id"])

    week_lead = create(now + timedelta(days=2), remind_before_seconds=7 * 86400)
    past_due = create(now - timedelta(hours=3))
    moved_past = create(now + timedelta(days=10))
    lead_changed = create(now + timedelta(days=2))
    moved = client.patch(
        f"/tasks/{moved_past}",
        json={"due_at": (now - timedelta(hours=2)).isoformat()},
        headers=alice.headers,
    )
    longer = client.patch(
        f"/tasks/{lead_changed}", json={"remind_before_seconds": 7 * 86400}, headers=alice.headers
    )
    assert (moved.status_code, longer.status_code) == (200, 200)
    broker, _ = stack.broker(webhook_url=receiver.url, webhook_secret="secret")

    result = scan(stack, broker, now + timedelta(minutes=1))

    # Due at once, so the API enqueued each as it was planned; the scan found nothing to do.
    expected = {week_lead, past_due, moved_past, lead_changed}
    pending = {str(row.task_id): (row.state, row.late) for row in stack.reminders()}
    assert {task: pending[task] for task in expected} == dict.fromkeys(expected, ("queued", False))
    assert (result.enqueued, result.missed) == (0, 0)
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: len(receiver.keys()) >= 4, timeout=30)
    sent = {str(row.task_id): row for row in stack.reminders() if row.state == "sent"}
    assert set(sent) == expected
    assert sorted(receiver.keys()) == sorted(str(row.message_id) for row in sent.values())
    assert not any(row.late for row in sent.values())


def test_catch_up_window_starts_when_a_past_due_task_was_created(stack: Stack) -> None:
    """A task created already past due becomes missed only if the system stays down past the
    window after its creation, not because its due date is old."""
    alice = stack.account()
    broker, _ = stack.broker()
    created = datetime.now(UTC)
    within = stack.add_task(alice, created - timedelta(days=2), 3600)
    beyond = stack.add_task(alice, created - timedelta(days=2), 7200)

    with stack.sessions.begin() as session:
        from sqlalchemy import update

        from shared.store.models import Reminder

        session.execute(
            update(Reminder)
            .where(Reminder.task_id == beyond.id)
            .values(planned_at=created - timedelta(seconds=3601))
        )
    result = scan(stack, broker, created, catchup_seconds=3600)

    states = {row.task_id: (row.state, row.late) for row in stack.reminders()}
    assert states == {within.id: ("queued", False), beyond.id: ("missed", False)}
    assert (result.enqueued, result.missed) == (1, 1)


def test_claim_of_due_reminders_is_a_range_of_the_waiting_index(stack: Stack) -> None:
    """The claim reads the partial index on waiting rows, in both plans PostgreSQL uses for
    the prepared statement: the custom plans of its first runs and the generic one after."""
    import re

    from shared.store.db import _driver_sql
    from workers.producer import _CLAIM_DUE

    alice = stack.account()
    stack.add_due_tasks(alice, 20)
    sql, constants = _driver_sql(_CLAIM_DUE, stack.engine.dialect)
    params = {**constants, "b_now": NOW, "b_horizon": NOW, "b_cutoff": NOW, "b_limit": 1000}
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", positional, sql)
    arguments = ", ".join(["%s"] * len(names))
    plans = {}
    with stack.engine.raw_connection() as pooled:
        driver = pooled.driver_connection
        assert driver is not None
        # EXPLAIN EXECUTE takes its arguments as literals: a client-side binding cursor.
        with psycopg.ClientCursor(driver) as cursor:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute(f"PREPARE claim AS {prepared}")
            for mode in ("force_custom_plan", "force_generic_plan"):
                cursor.execute(f"SET plan_cache_mode = {mode}")
                cursor.execute(
                    f"EXPLAIN EXECUTE claim({arguments})", [params[name] for name in names]
                )
                plans[mode] = "\n".join(row[0] for row in cursor.fetchall())
        driver.rollback()

    for plan in plans.values():
        assert "Index Scan using ix_reminders_waiting_remind_at" in plan, plan


def test_done_deleted_and_rescheduled_tasks_are_not_enqueued(stack: Stack, api_client_for) -> None:
    alice = stack.account()
    broker, _ = stack.broker()
    client = api_client_for(stack)
    due = (NOW + timedelta(minutes=30)).isoformat()
    ids = [
        client.post("/tasks", json={"title": name, "due_at": due}, headers=alice.headers).json["id"]
        for name in ("done", "deleted", "moved", "kept")
    ]
    client.patch(f"/tasks/{ids[0]}", json={"status": "done"}, headers=alice.headers)
    client.delete(f"/tasks/{ids[1]}", headers=alice.headers)
    moved_to = NOW + timedelta(days=3)
    client.patch(f"/tasks/{ids[2]}", json={"due_at": moved_to.isoformat()}, headers=alice.headers)

    result = scan(stack, broker)

    by_task: dict[str, list[tuple[str, datetime]]] = {}
    for row in stack.reminders():
        by_task.setdefault(str(row.task_id), []).append((row.state, row.due_at))
    assert by_task[ids[0]] == [("cancelled", NOW + timedelta(minutes=30))]
    assert by_task[ids[1]] == [("cancelled", NOW + timedelta(minutes=30))]
    assert sorted(by_task[ids[2]]) == [
        ("cancelled", NOW + timedelta(minutes=30)),
        ("waiting", moved_to),
    ]
    assert by_task[ids[3]] == [("queued", NOW + timedelta(minutes=30))]
    assert result.enqueued == 1


def test_ten_producer_runs_enqueue_each_occurrence_once(stack: Stack) -> None:
    alice = stack.account()
    broker, _ = stack.broker()
    tasks = [stack.add_task(alice, NOW + timedelta(minutes=n), 3600) for n in range(25)]

    results = [scan(stack, broker, NOW + timedelta(seconds=run)) for run in range(10)]

    assert [r.enqueued for r in results] == [25] + [0] * 9
    assert sum(r.requeued for r in results) == 0
    rows = stack.reminders()
    assert len(rows) == len(tasks)
    assert {row.state for row in rows} == {"queued"}
    assert queue_depth(broker, QUEUE_NAME).ready == 25
    assert len(pending_message_ids(broker, QUEUE_NAME)) == 25


def test_two_producers_at_once_split_the_work(stack: Stack) -> None:
    """SKIP LOCKED batches: concurrent producers never claim the same occurrence."""
    import threading

    alice = stack.account()
    broker, _ = stack.broker()
    stack.add_due_tasks(alice, 300)
    now = datetime.now(UTC)
    results = []

    def run() -> None:
        results.append(scan(stack, broker, now, scan_batch_size=20))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sum(r.enqueued for r in results) == 300
    assert queue_depth(broker, QUEUE_NAME).ready == 300
    assert len(pending_message_ids(broker, QUEUE_NAME)) == 300


def test_lost_messages_are_requeued_after_requeue_after(stack: Stack) -> None:
    """Redis lost the queue (flush, restart without persistence): the database rebuilds it."""
    alice = stack.account()
    broker, _ = stack.broker()
    stack.add_due_tasks(alice, 5)
    now = datetime.now(UTC)
    assert scan(stack, broker, now).enqueued == 5
    broker.flush(QUEUE_NAME)

    too_soon = scan(stack, broker, now + timedelta(seconds=10), requeue_after_seconds=60)
    later = scan(stack, broker, now + timedelta(seconds=61), requeue_after_seconds=60)
    again = scan(stack, broker, now + timedelta(seconds=62), requeue_after_seconds=60)

    assert too_soon.requeued == 0
    assert later.requeued == 5
    assert again.requeued == 0
    assert len(pending_message_ids(broker, QUEUE_NAME)) == 5


def test_messages_still_held_by_the_broker_are_not_requeued(stack: Stack) -> None:
    """A long backlog is not doubled: rows whose message is still in Redis stay as they are."""
    alice = stack.account()
    broker, _ = stack.broker()
    stack.add_due_tasks(alice, 5)
    now = datetime.now(UTC)
    scan(stack, broker, now)

    later = scan(stack, broker, now + timedelta(hours=2), requeue_after_seconds=60)

    assert later.requeued == 0
    assert queue_depth(broker, QUEUE_NAME).ready == 5


def test_failed_occurrences_are_never_requeued_by_the_producer(stack: Stack) -> None:
    alice = stack.account()
    broker, _ = stack.broker()
    stack.add_due_tasks(alice, 3)
    now = datetime.now(UTC)
    scan(stack, broker, now)
    broker.flush(QUEUE_NAME)
    with stack.sessions.begin() as session:
        from sqlalchemy import update

        from shared.store.models import Reminder

        session.execute(update(Reminder).values(state="failed", last_error="X: y"))

    result = scan(stack, broker, now + timedelta(hours=1), requeue_after_seconds=60)

    assert (result.enqueued, result.requeued) == (0, 0)
    assert queue_depth(broker, QUEUE_NAME).ready == 0
    assert {row.state for row in stack.reminders()} == {"failed"}


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 10, 25, 0, 59, 30, tzinfo=UTC),  # Paris leaves summer time at 01:00 UTC
        datetime(2026, 10, 25, 1, 30, 0, tzinfo=UTC),  # the repeated local hour 02:00-03:00
        datetime(2027, 3, 28, 1, 0, 30, tzinfo=UTC),  # Paris skips 02:00-03:00 local
    ],
)
def test_selection_is_the_same_under_any_process_time_zone(stack: Stack, moment: datetime) -> None:
    alice = stack.account()
    for offset in range(-150, 151, 15):
        stack.add_task(alice, moment + timedelta(minutes=offset), remind_before_seconds=60)
    original = os.environ.get("TZ")
    selected = {}
    try:
        for zone in ("UTC", "Europe/Paris"):
            os.environ["TZ"] = zone
            time.tzset()
            with stack.sessions.begin() as session:
                from sqlalchemy import update

                from shared.store.models import Reminder

                session.execute(update(Reminder).values(state="waiting"))
            broker, _ = stack.broker()
            broker.flush(QUEUE_NAME)
            result = scan(stack, broker, moment)
            selected[zone] = sorted(result.message_ids)
    finally:
        if original is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = original
        time.tzset()
    assert selected["UTC"] == selected["Europe/Paris"]
    assert len(selected["UTC"]) > 0


def test_cancel_pending_leaves_final_states_alone(stack: Stack) -> None:
    alice = stack.account()
    task = stack.add_task(alice, NOW + timedelta(hours=1))
    with stack.sessions.begin() as session:
        from shared.store.models import Reminder

        row = session.get(Reminder, stack.reminders()[0].message_id)
        assert row is not None
        row.state = "sent"
        assert cancel_pending(session, task, NOW) == 0
    assert [row.state for row in stack.reminders()] == ["sent"]
