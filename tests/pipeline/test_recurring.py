"""Recurring series through the producer and the delivery transaction, on real PostgreSQL and
Redis, with an injected clock: the DST table delivered, several offsets, edits, downtime,
complete and snooze, and a producer under another process time zone.

Time is moved, not waited for: the task service, the producer and the delivery transaction
all take the clock. Each step runs a scan at the step's time (which extends the series'
rows and claims the due ones) and delivers every claimed reminder whose remind time has
come, as a worker would at that moment.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import subprocess
import sys
import uuid
import zoneinfo
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from api.schemas import TaskCreate, TaskPatch
from api.service import Owner, Planning, TaskService
from shared.planning.recurrence import time_zone
from shared.planning.rules import PENDING_STATES
from shared.store.models import Reminder
from tests.pipeline.conftest import ROOT, Stack
from workers.channels import ReminderPayload
from workers.delivery import Named, Outcome, deliver_occurrence
from workers.producer import scan_due_tasks

HORIZON = 86400


class Recorder:
    """A channel that accepts everything and keeps what it was handed."""

    name = "recorder"
    announces_delivery = False
    sends_body = True

    def __init__(self) -> None:
        self.delivered: list[ReminderPayload] = []

    def deliver(self, reminder: ReminderPayload) -> None:
        self.delivered.append(reminder)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(payload.body) for payload in self.delivered]


class Clocked:
    """The service, the producer and deliveries of one stack, at a time the test sets."""

    def __init__(self, stack: Stack, now: datetime) -> None:
        self.stack = stack
        self.now = now
        self.broker, _ = stack.broker()
        self.channel = Recorder()
        self.tasks = TaskService(
            stack.sessions,
            Planning(horizon_seconds=HORIZON, min_recurrence_seconds=60),
            clock=lambda: self.now,
        )
        account = stack.account(f"u{uuid.uuid4().hex[:6]}")
        self.owner = Owner(account.id, account.name, is_operator=False)

    def create(self, **fields: Any) -> uuid.UUID:
        return self.tasks.create(self.owner, TaskCreate.model_validate({"title": "t", **fields})).id

    def update(self, task_id: uuid.UUID, **fields: Any) -> None:
        assert self.tasks.update(self.owner, task_id, TaskPatch.model_validate(fields))

    def step(self, at: datetime) -> list[dict[str, Any]]:
        """Scan at ``at`` and deliver what is due then; returns the bodies sent."""
        self.now = at
        scan_due_tasks(self.stack.sessions, self.broker, self.stack.settings(), clock=lambda: at)
        with self.stack.sessions() as session:
            due = session.execute(
                select(Reminder.task_id, Reminder.due_at, Reminder.message_id)
                .where(Reminder.state == "queued", Reminder.remind_at <= at)
                .order_by(Reminder.remind_at)
            ).all()
        before = len(self.channel.delivered)
        for task_id, due_at, message_id in due:
            delivery = deliver_occurrence(
                self.stack.engine,
                self.channel,
                Named(task_id, due_at, message_id),
                clock=lambda: at,
            )
            assert delivery.outcome in (Outcome.SENT, Outcome.STALE), delivery
        return self.channel.bodies()[before:]

    def run(self, times: Iterable[datetime]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        for at in times:
            sent.extend(self.step(at))
        return sent

    def rows(self, task_id: uuid.UUID) -> list[Reminder]:
        with self.stack.sessions() as session:
            return list(
                session.scalars(
                    select(Reminder).where(Reminder.task_id == task_id).order_by(Reminder.remind_at)
                )
            )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# (zone, rule, first occurrence local, the local due times delivered, in order)
DELIVERED_DST = {
    "Paris spring forward": (
        "Europe/Paris",
        "FREQ=DAILY",
        "2027-03-26T02:30:00+01:00",
        [
            "2027-03-26T02:30:00+01:00",
            "2027-03-27T02:30:00+01:00",
            "2027-03-28T03:30:00+02:00",
            "2027-03-29T02:30:00+02:00",
        ],
    ),
    "Paris fall back": (
        "Europe/Paris",
        "FREQ=DAILY",
        "2027-10-30T02:30:00+02:00",
        [
            "2027-10-30T02:30:00+02:00",
            "2027-10-31T02:30:00+02:00",
            "2027-11-01T02:30:00+01:00",
        ],
    ),
    "Paris hourly across fall back": (
        "Europe/Paris",
        "FREQ=HOURLY",
        "2027-10-31T01:00:00+02:00",
        [
            "2027-10-31T01:00:00+02:00",
            "2027-10-31T02:00:00+02:00",
            "2027-10-31T03:00:00+01:00",
            "2027-10-31T04:00:00+01:00",
        ],
    ),
    "New York weekly across March": (
        "America/New_York",
        "FREQ=WEEKLY;BYDAY=MO",
        "2027-03-08T09:00:00-05:00",
        ["2027-03-08T09:00:00-05:00", "2027-03-15T09:00:00-04:00"],
    ),
    "Lord Howe 30-minute gap": (
        "Australia/Lord_Howe",
        "FREQ=DAILY",
        "2027-10-02T02:15:00+10:30",
        [
            "2027-10-02T02:15:00+10:30",
            "2027-10-03T02:45:00+11:00",
            "2027-10-04T02:15:00+11:00",
        ],
    ),
}


@pytest.mark.parametrize("case", DELIVERED_DST.values(), ids=DELIVERED_DST.keys())
def test_a_series_is_delivered_once_per_occurrence_at_its_local_time_across_dst(
    stack: Stack, case: tuple[str, str, str, list[str]]
) -> None:
    zone, rule, start, expected = case
    clocked = Clocked(stack, datetime.now(UTC))
    task_id = clocked.create(due_at=start, time_zone=zone, recurrence=rule, reminders=[600])
    remind_times = [at(local) - timedelta(seconds=600) for local in expected]

    # Each remind time, then each again 30 s later: a second scan and worker find nothing.
    steps = sorted([*remind_times, *(t + timedelta(seconds=30) for t in remind_times)])
    sent = clocked.run(steps)

    assert [body["local_due_at"] for body in sent] == expected
    assert [at(body["due_at"]) for body in sent] == [at(local) for local in expected]
    assert len({body["message_id"] for body in sent}) == len(expected)
    assert all(body["offset_seconds"] == 600 for body in sent)
    sent_rows = [row for row in clocked.rows(task_id) if row.state == "sent"]
    assert [row.sent_at for row in sent_rows] == remind_times  # on time, never early


def test_each_offset_is_sent_once_and_a_change_of_offsets_resends_none_kept(
    stack: Stack,
) -> None:
    start = at("2027-06-01T09:00:00+00:00")
    clocked = Clocked(stack, start - timedelta(days=2))
    task_id = clocked.create(
        due_at=start.isoformat(), recurrence="FREQ=DAILY", reminders=[3600, 600]
    )
    day = timedelta(days=1)

    first = clocked.run([start - timedelta(seconds=3600), start - timedelta(seconds=600)])
    # Mid-series, between the next occurrence's two reminders: keep 600, drop 3600, add 1800.
    clocked.run([start + day - timedelta(seconds=3600)])
    clocked.now = start + day - timedelta(seconds=3000)
    clocked.update(task_id, reminders=[600, 1800])
    later = clocked.run(
        [
            start + day - timedelta(seconds=1800),
            start + day - timedelta(seconds=600),
            start + 2 * day - timedelta(seconds=1800),
            start + 2 * day - timedelta(seconds=600),
        ]
    )

    sent = [(at(b["due_at"]), b["offset_seconds"]) for b in first + later]
    assert sent == [
        (start, 3600),
        (start, 600),
        (start + day, 1800),  # new offset, remind time still to come
        (start + day, 600),  # kept offset: its row kept, sent once
        (start + 2 * day, 1800),
        (start + 2 * day, 600),
    ]
    by_key = {(row.due_at, row.offset_seconds): row for row in clocked.rows(task_id)}
    assert by_key[(start + day, 3600)].state == "sent"  # sent before the change
    assert len(clocked.channel.delivered) == len({p.message_id for p in clocked.channel.delivered})


def test_a_series_down_for_days_sends_the_recent_occurrence_late_and_records_the_rest_missed(
    stack: Stack,
) -> None:
    start = at("2027-06-01T09:00:00+00:00")
    day = timedelta(days=1)
    clocked = Clocked(stack, start - day)
    task_id = clocked.create(due_at=start.isoformat(), recurrence="FREQ=DAILY", reminders=[600])
    assert len(clocked.run([start - timedelta(seconds=600)])) == 1

    # Down until 30 minutes after the fourth occurrence (REMINDERS_CATCHUP: 1 h).
    back = clocked.run([start + 3 * day + timedelta(minutes=30)])

    assert [at(body["due_at"]) for body in back] == [start + 3 * day]
    states = {row.due_at: row.state for row in clocked.rows(task_id)}
    assert [states[start + n * day] for n in range(5)] == [
        "sent",
        "missed",  # rows made before the downtime
        "missed",  # rows opened on return, planned at their remind time: no burst
        "sent",
        "waiting",
    ]
    late = {row.due_at: row.late for row in clocked.rows(task_id) if row.state == "sent"}
    assert late == {start: False, start + 3 * day: True}


def test_complete_skips_the_current_occurrence_and_a_snooze_is_delivered_once(
    stack: Stack,
) -> None:
    start = at("2027-06-01T09:00:00+00:00")
    day = timedelta(days=1)
    clocked = Clocked(stack, start - timedelta(hours=3))
    task_id = clocked.create(due_at=start.isoformat(), recurrence="FREQ=DAILY", reminders=[600])
    clocked.step(start - timedelta(hours=2))

    assert clocked.tasks.complete(clocked.owner, task_id)  # today's occurrence is done
    sent = clocked.run([start - timedelta(seconds=600), start + day - timedelta(seconds=600)])
    assert [at(body["due_at"]) for body in sent] == [start + day]

    until = start + day + timedelta(minutes=15)
    snoozed = clocked.tasks.snooze(clocked.owner, task_id, until)
    again = clocked.tasks.snooze(clocked.owner, task_id, until)
    assert snoozed and again and snoozed.message_id == again.message_id
    later = clocked.run([until, until + timedelta(minutes=1)])

    assert [(at(b["remind_at"]), b["offset_seconds"]) for b in later] == [(until, None)]
    assert later[0]["message_id"] == str(snoozed.message_id)
    assert [at(later[0]["due_at"])] == [start + day]  # the latest occurrence reminded of


def test_a_rule_change_cancels_the_pending_rows_that_no_longer_match(stack: Stack) -> None:
    start = at("2027-06-07T09:00:00+00:00")  # a Monday
    clocked = Clocked(stack, start - timedelta(hours=1))
    task_id = clocked.create(
        due_at=start.isoformat(), recurrence="FREQ=HOURLY;INTERVAL=6", reminders=[600]
    )
    hourly = {row.due_at for row in clocked.rows(task_id)}
    assert len(hourly) > 2

    clocked.update(task_id, recurrence="FREQ=DAILY")

    pending = {r.due_at for r in clocked.rows(task_id) if r.state in PENDING_STATES}
    assert pending == {start}  # tomorrow's 09:00 is beyond the horizon of an 08:00 change
    cancelled = {r.due_at for r in clocked.rows(task_id) if r.state == "cancelled"}
    assert cancelled == hourly - pending


@contextlib.contextmanager
def paris_on_karachi_rules(directory: Path) -> Iterator[None]:
    """A tzdata update, simulated: meanwhile "Europe/Paris" has Asia/Karachi's rules
    (+05:00, no DST), read from a zone database of the test's own in ``directory``."""
    source = importlib.resources.files("tzdata.zoneinfo").joinpath("Asia/Karachi")
    (directory / "Europe").mkdir()
    (directory / "Europe" / "Paris").write_bytes(source.read_bytes())

    def forget() -> None:
        zoneinfo.ZoneInfo.clear_cache()
        time_zone.cache_clear()

    zoneinfo.reset_tzpath(to=[str(directory)])
    forget()
    try:
        yield
    finally:
        zoneinfo.reset_tzpath()
        forget()


def test_a_tzdata_update_moves_a_pending_reminder_to_its_new_instant(
    stack: Stack, tmp_path: Path
) -> None:
    """Rows are derived from the rule again when the horizon is next extended: a pending
    reminder planned under the old rules is cancelled and its occurrence, at the same local
    wall time, reminded at the new instant, once."""
    start = at("2027-06-01T09:00:00+02:00")  # Paris summer time: 07:00 UTC
    clocked = Clocked(stack, start - timedelta(hours=20))
    task_id = clocked.create(
        due_at=start.isoformat(), time_zone="Europe/Paris", recurrence="FREQ=DAILY", reminders=[600]
    )
    [planned] = [row for row in clocked.rows(task_id) if row.state == "waiting"]
    assert planned.due_at == start

    with paris_on_karachi_rules(tmp_path):
        moved = datetime(2027, 6, 1, 9, 0, tzinfo=timezone(timedelta(hours=5)))  # 04:00 UTC
        clocked.step(start - timedelta(hours=7))  # the producer extends the series
        sent = clocked.run([moved - timedelta(seconds=600), start - timedelta(seconds=600)])

    assert [(b["local_due_at"], at(b["due_at"])) for b in sent] == [
        ("2027-06-01T09:00:00+05:00", moved.astimezone(UTC))
    ]
    states = {row.due_at: row.state for row in clocked.rows(task_id)}
    assert states[start] == "cancelled"
    assert states[moved] == "sent"


SCAN_SCRIPT = """
import json, sys
from datetime import datetime
from shared.config import load_settings
from shared.store.db import make_engine, make_session_factory
from shared.broker.queue import make_broker
from workers.producer import scan_due_tasks

settings = load_settings()
sessions = make_session_factory(make_engine(settings.resolved_database_url))
broker = make_broker(settings)
claimed = []
for text in json.loads(sys.argv[1]):
    moment = datetime.fromisoformat(text)
    claimed.append(scan_due_tasks(sessions, broker, settings, clock=lambda: moment).message_ids)
print(json.dumps(claimed))
"""


def scans_in_zone(stack: Stack, zone: str, times: list[datetime]) -> list[list[str]]:
    env = {**stack.env(), "TZ": zone}
    run = subprocess.run(
        [sys.executable, "-c", SCAN_SCRIPT, json.dumps([t.isoformat() for t in times])],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return list(json.loads(run.stdout.decode().splitlines()[-1]))


def test_a_producer_in_paris_time_claims_what_one_in_utc_does_across_a_dst_change(
    stack: Stack,
) -> None:
    """The same series, scanned over the March change by a process on UTC, then (as a copy)
    by one on Europe/Paris: the same (occurrence, offset) at the same scan."""
    first = at("2027-03-28T00:30:00+00:00")  # 01:30 CET; at 01:00 UTC Paris goes to CEST
    times = [first + timedelta(minutes=30 * n) for n in range(8)]  # every half hour to 04:00
    fields = {
        "due_at": first.isoformat(),
        "time_zone": "Europe/Paris",
        "recurrence": "FREQ=HOURLY",
        "reminders": [600, 1800],
    }
    clocked = Clocked(stack, first - timedelta(hours=1))
    claimed: dict[str, list[list[tuple[datetime, int | None]]]] = {}
    for zone in ("UTC", "Europe/Paris"):
        task_id = clocked.create(**fields)
        by_id = {
            str(row.message_id): (row.due_at, row.offset_seconds) for row in clocked.rows(task_id)
        }
        scans = scans_in_zone(stack, zone, times)
        by_id.update(
            {str(row.message_id): (row.due_at, row.offset_seconds) for row in clocked.rows(task_id)}
        )
        claimed[zone] = [sorted(by_id[key] for key in scan) for scan in scans]
        assert clocked.tasks.delete(clocked.owner, task_id)

    assert claimed["UTC"] == claimed["Europe/Paris"]
    assert sum(len(scan) for scan in claimed["UTC"]) >= 8
