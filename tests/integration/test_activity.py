"""The last hour's activity, per minute, on both databases and a real Redis: the rows' events
(sent with lateness, dead-lettered, missed) and the workers' counters (retries, dead letters,
queue depth) land in their minute, and nothing else does."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, select

from shared.broker.queue import QUEUE_NAME, make_broker, reminder_message
from shared.broker.redis_broker import enqueue_batch
from shared.logs import configure_logging
from shared.ops import activity
from shared.ops.activity import (
    ACTIVITY_TTL_SECONDS,
    Minute,
    dead_lettered_key,
    last_hour,
    queue_depth_key,
    record_dead_letters,
    record_queue_depth,
    record_retry,
    retried_key,
    sample_queue_depth,
)
from shared.ops.dead_letters import DeadLetterDesk
from shared.planning.keys import message_id
from shared.store.db import make_session_factory, unit_of_work, utcnow
from shared.store.models import Reminder, Task
from tests.conftest import REDIS_URL, create_account, make_settings
from workers.actors import Pipeline, RecordFailedAttempts, declare_actors
from workers.channels import LogChannel, TransientDeliveryError

NOW = datetime(2030, 1, 1, 12, 30, 20, tzinfo=UTC)  # the hour: 11:31 to 12:30 (running)


def at(hhmmss: str) -> datetime:
    hour, minute, second = (int(part) for part in hhmmss.split(":"))
    return NOW.replace(hour=hour, minute=minute, second=second)


def minute(hhmm: str) -> datetime:
    return at(f"{hhmm}:00")


class Rows:
    """Reminder rows of one task, each at its own due date, in the state an event left."""

    def __init__(self, engine: Engine) -> None:
        self.sessions = make_session_factory(engine)
        owner = create_account(engine, f"u{uuid.uuid4().hex[:6]}")
        self.task_id = uuid.uuid4()
        with unit_of_work(self.sessions) as session:
            session.add(
                Task(
                    id=self.task_id,
                    owner_id=owner.id,
                    title="water plants",
                    due_at=NOW,
                    reminder_offsets=[0],
                    status="open",
                    created_at=NOW - timedelta(days=1),
                    updated_at=NOW - timedelta(days=1),
                )
            )
        self.count = 0

    def add(self, state: str, updated_at: datetime, **values: object) -> None:
        self.count += 1
        due_at = NOW + timedelta(days=self.count)
        with unit_of_work(self.sessions) as session:
            session.add(
                Reminder(
                    message_id=message_id(self.task_id, due_at, 0),
                    task_id=self.task_id,
                    due_at=due_at,
                    offset_seconds=0,
                    remind_at=values.pop("remind_at", NOW - timedelta(hours=3)),
                    state=state,
                    planned_at=NOW - timedelta(days=1),
                    created_at=NOW - timedelta(days=1),
                    updated_at=updated_at,
                    **values,
                )
            )

    def sent(self, sent_at: datetime, lateness_seconds: float) -> None:
        remind_at = sent_at - timedelta(seconds=lateness_seconds)
        self.add("sent", sent_at, sent_at=sent_at, remind_at=remind_at)


def test_each_event_counts_in_its_minute_and_nowhere_else(
    migrated: Engine, redis_namespace: str
) -> None:
    rows = Rows(migrated)
    for lateness in (3.0, 1.0, 10.0, 2.0):
        rows.sent(at("12:03:10"), lateness)
    rows.sent(at("12:30:05"), 0.25)  # the running minute counts
    rows.sent(at("11:31:00"), 5.0)  # the hour's first instant
    rows.sent(at("11:30:59"), 4.0)  # a second too old
    for _ in range(2):
        rows.add("failed", at("12:10:00"), failed_at=at("12:10:00"), attempts=3)
    rows.add("failed", at("11:00:00"), failed_at=at("11:00:00"))  # an hour too old
    # Dead-lettered at 12:11, then retried by an operator: only the workers' count keeps it.
    rows.add("queued", at("12:12:00"), attempts=3)
    for _ in range(3):
        rows.add("missed", at("12:20:30"))
    rows.add("cancelled", at("12:20:30"), cancelled_at=at("12:20:30"))  # not an event here
    rows.add("waiting", at("12:20:30"))
    client = redis.Redis.from_url(REDIS_URL)
    for moment in ("12:15:01", "12:15:59", "12:16:00", "11:00:00"):
        record_retry(client, redis_namespace, at(moment))
    record_dead_letters(client, redis_namespace, at("12:11:30"))
    # The count of 12:10 was lost (a Redis error): the two failed rows are the floor.
    record_dead_letters(client, redis_namespace, at("12:10:40"), count=1)
    record_queue_depth(client, redis_namespace, at("12:29:01"), 5)
    record_queue_depth(client, redis_namespace, at("12:29:40"), 7)  # the minute's last sample
    record_queue_depth(client, redis_namespace, at("12:30:00"), 0)

    hour = last_hour(migrated, client, redis_namespace, NOW)

    assert len(hour) == 60
    assert [m.start for m in hour] == [minute("11:31") + timedelta(minutes=i) for i in range(60)]
    events = {m.start: m for m in hour if m != quiet(m.start)}
    assert set(events) == {
        minute(hhmm) for hhmm in ("11:31", "12:03", "12:10", "12:11", "12:15", "12:16")
    } | {minute(hhmm) for hhmm in ("12:20", "12:29", "12:30")}
    busy = events[minute("12:03")]
    assert (busy.sent, busy.lateness_p50) == (4, pytest.approx(2.5))
    # percentile_cont: 99% of the way through 1, 2, 3, 10 is 3 + 0.97 * 7.
    assert busy.lateness_p99 == pytest.approx(9.79)
    assert events[minute("11:31")] == sent_only(minute("11:31"), 1, 5.0)
    running = events[minute("12:30")]
    assert (running.sent, running.lateness_p50, running.lateness_p99) == (1, 0.25, 0.25)
    assert running.queue_depth == 0
    assert events[minute("12:10")] == Minute(minute("12:10"), 0, 0, 2, 0, None, None, None)
    assert events[minute("12:11")] == Minute(minute("12:11"), 0, 0, 1, 0, None, None, None)
    assert events[minute("12:15")] == Minute(minute("12:15"), 0, 2, 0, 0, None, None, None)
    assert events[minute("12:16")] == Minute(minute("12:16"), 0, 1, 0, 0, None, None, None)
    assert events[minute("12:20")] == Minute(minute("12:20"), 0, 0, 0, 3, None, None, None)
    assert events[minute("12:29")] == Minute(minute("12:29"), 0, 0, 0, 0, None, None, 7)


def quiet(start: datetime) -> Minute:
    return Minute(start, 0, 0, 0, 0, None, None, None)


def sent_only(start: datetime, sent: int, lateness: float) -> Minute:
    return Minute(start, sent, 0, 0, 0, lateness, lateness, None)


def test_a_session_reads_the_same_as_the_engine(migrated: Engine, redis_namespace: str) -> None:
    rows = Rows(migrated)
    rows.sent(at("12:03:10"), 1.5)
    rows.add("missed", at("12:04:00"))
    client = redis.Redis.from_url(REDIS_URL)

    with unit_of_work(make_session_factory(migrated)) as session:
        through_session = last_hour(session, client, redis_namespace, NOW)

    assert through_session == last_hour(migrated, client, redis_namespace, NOW)
    assert sum(m.sent for m in through_session) == sum(m.missed for m in through_session) == 1


def test_an_empty_hour_is_sixty_quiet_minutes(migrated: Engine, redis_namespace: str) -> None:
    hour = last_hour(migrated, redis.Redis.from_url(REDIS_URL), redis_namespace, NOW)

    assert hour == [quiet(minute("11:31") + timedelta(minutes=i)) for i in range(60)]


def test_the_counters_expire_within_two_hours(redis_namespace: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)

    record_retry(client, redis_namespace, NOW)
    record_retry(client, redis_namespace, NOW)
    record_dead_letters(client, redis_namespace, NOW, count=4)
    record_queue_depth(client, redis_namespace, NOW, 3)

    retried, depth = retried_key(redis_namespace, NOW), queue_depth_key(redis_namespace, NOW)
    dead = dead_lettered_key(redis_namespace, NOW)
    assert retried == f"{redis_namespace}:activity:retried:{int(minute('12:30').timestamp())}"
    assert (client.get(retried), client.get(dead), client.get(depth)) == (b"2", b"4", b"3")
    assert 0 < client.ttl(retried) <= ACTIVITY_TTL_SECONDS == 2 * 3600
    assert 0 < client.ttl(dead) <= ACTIVITY_TTL_SECONDS
    assert 0 < client.ttl(depth) <= ACTIVITY_TTL_SECONDS


def test_a_redis_failure_is_logged_once_and_never_raised(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure_logging("INFO")
    monkeypatch.setattr(activity, "_failing", set())  # as in a fresh process
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # No reconnection attempts with backoff (seconds each): the first refusal is the answer.
    client = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    broker = make_broker(make_settings(redis_url=f"redis://127.0.0.1:{port}/0"), client=client)

    for _ in range(3):
        record_retry(client, "down", NOW)
        record_dead_letters(client, "down", NOW)
        record_queue_depth(client, "down", NOW, 1)
        sample_queue_depth(broker, "down", NOW)

    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line[:1] == "{"]
    warnings = [(line["event"], line["kind"], line["level"]) for line in lines]
    assert warnings == [
        ("activity.not_recorded", "retried", "warning"),
        ("activity.not_recorded", "dead_lettered", "warning"),
        ("activity.not_recorded", "queue_depth", "warning"),
    ]
    assert lines[0]["error_type"] == "ConnectionError"


def test_the_workers_record_retries_and_the_scans_queue_depth(
    migrated: Engine, redis_namespace: str
) -> None:
    settings = make_settings(redis_url=REDIS_URL, redis_namespace=redis_namespace)
    broker = make_broker(settings)
    pipeline = Pipeline(
        sessions=make_session_factory(migrated), channel=LogChannel(), settings=settings
    )
    actors = declare_actors(broker, pipeline)
    [recorder] = [m for m in broker.middleware if isinstance(m, RecordFailedAttempts)]
    ready = [reminder_message(uuid.uuid4(), NOW, uuid.uuid4()) for _ in range(3)]
    enqueue_batch(broker, ready)

    actors.scan_due_tasks.fn()
    for last in (False, True):  # a retry, then a last attempt (a dead letter, not a retry)
        attempt = MessageProxy(reminder_message(uuid.uuid4(), NOW, uuid.uuid4()))
        if last:
            attempt.fail()
        recorder.after_process_message(broker, attempt, exception=TransientDeliveryError("503"))

    hour = last_hour(migrated, broker.client, redis_namespace, utcnow())
    assert sum(m.retried for m in hour) == 1
    assert [m.queue_depth for m in hour if m.queue_depth is not None] == [3]


def test_dead_letters_stay_counted_in_their_minute_after_an_operator_retries_them(
    migrated: Engine, redis_namespace: str
) -> None:
    settings = make_settings(redis_url=REDIS_URL, redis_namespace=redis_namespace)
    broker = make_broker(settings)
    sessions = make_session_factory(migrated)
    actors = declare_actors(
        broker, Pipeline(sessions=sessions, channel=LogChannel(), settings=settings)
    )
    [recorder] = [m for m in broker.middleware if isinstance(m, RecordFailedAttempts)]
    rows = Rows(migrated)
    messages = []
    for _ in range(4):
        # The fourth was left queued by a worker that died after Dramatiq dead-lettered it.
        rows.add("queued", utcnow() - timedelta(hours=1), attempts=2)
        due_at = NOW + timedelta(days=rows.count)
        messages.append(reminder_message(rows.task_id, due_at, message_id(rows.task_id, due_at, 0)))
    for message in messages[:3]:  # each one's last attempt fails: three dead letters
        attempt = MessageProxy(message)
        attempt.fail()
        recorder.after_process_message(broker, attempt, exception=TransientDeliveryError("503"))
    nack_unrecorded(broker, messages[3])
    actors.scan_due_tasks.fn()  # finds the fourth in the dead letters: failed now
    now = utcnow()  # one hour for every reading, so only the retries can change it
    dead_lettered = {
        m.start: m.dead_lettered
        for m in last_hour(migrated, broker.client, redis_namespace, now)
        if m.dead_lettered
    }
    assert sum(dead_lettered.values()) == 4
    desk = DeadLetterDesk(sessions, broker)
    ids = [uuid.UUID(message.message_id) for message in messages]

    desk.retry(ids[0], "olivia")
    after_one = last_hour(migrated, broker.client, redis_namespace, now)
    for mid in ids[1:]:
        desk.retry(mid, "olivia")
    after_all = last_hour(migrated, broker.client, redis_namespace, now)

    with unit_of_work(sessions) as session:
        assert set(session.scalars(select(Reminder.state))) == {"queued"}  # all retried
    assert {m.start: m.dead_lettered for m in after_one if m.dead_lettered} == dead_lettered
    assert {m.start: m.dead_lettered for m in after_all if m.dead_lettered} == dead_lettered


def nack_unrecorded(broker: RedisBroker, message: Message[Any]) -> None:
    """Put ``message`` in the dead letters as Dramatiq does, with nothing recorded on its row."""
    broker.enqueue(message)
    consumer = broker.consume(QUEUE_NAME, prefetch=1, timeout=100)
    try:
        for _ in range(50):  # 100 ms each: 5 s at most
            proxy = next(consumer)
            if proxy is not None:
                consumer.nack(proxy)
                return
        raise AssertionError("the message was never fetched")
    finally:
        consumer.close()
