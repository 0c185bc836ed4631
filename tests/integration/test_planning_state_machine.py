"""Planning against a small model: any sequence of a user's changes, interleaved with producer
scans and deliveries at an advancing clock, keeps every task's reminder rows in step with what
the task wants (SPEC §2, §2.1, §4.1, §4.2). On SQLite and on PostgreSQL.

The machine drives the real task service (`api.service.TaskService`), the real producer
(`workers.producer.scan_due_tasks`, on real Redis) and the real delivery transaction
(`workers.delivery.deliver_occurrence`), all at an injected clock. The model keeps each task's
fields as the user set them, which occurrences were completed, and what was delivered; it
expands the series with the recurrence module (tested on its own against RFC 5545), not with
the planner under test. After every step:

- every (occurrence, offset) the task wants whose remind time is in the covered horizon (half
  of ``REMINDERS_HORIZON``: the producer extends a series when half of it has gone by) has
  exactly one row, and it is pending (or final, if its remind time has passed);
- no row the task wants is ``cancelled``, however far ahead;
- nothing the task does not want is pending;
- no (occurrence, offset) or snooze was ever delivered twice;
- whatever the clock passed was delivered, or recorded ``missed`` only when its due date was
  older than the catch-up window at the scan that found it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, delete, select

from api.schemas import TaskCreate, TaskPatch
from api.service import Owner, Planning, TaskDone, TaskService
from shared.broker.queue import make_broker
from shared.planning.recurrence import occurrences
from shared.planning.rules import PENDING_STATES
from shared.store.db import make_session_factory
from shared.store.models import Reminder, Task
from shared.store.occurrences import local_start, series_of
from tests.conftest import REDIS_URL, create_account, make_settings
from workers.channels import ReminderPayload
from workers.delivery import Named, Outcome, deliver_occurrence
from workers.producer import scan_due_tasks

HORIZON = 6 * 3600  # REMINDERS_HORIZON: short, so that extension happens within a few steps
COVERED = HORIZON // 2  # every remind time closer than this has its row
CATCHUP = 3600

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
RULES = [
    None,
    "FREQ=DAILY",
    "FREQ=HOURLY;INTERVAL=5",
    "FREQ=WEEKLY;BYDAY=MO,TU",
    "FREQ=DAILY;COUNT=3",
    "FREQ=HOURLY;INTERVAL=2;COUNT=4",
]
OFFSETS = [60, 600, 3600, 14400, 86400]
# Starts near DST changes: Paris and Lord Howe in spring/autumn, New York in autumn.
STARTS = [
    datetime(2027, 3, 27, 22, 0, tzinfo=UTC),
    datetime(2027, 4, 3, 12, 0, tzinfo=UTC),
    datetime(2027, 10, 30, 20, 0, tzinfo=UTC),
    datetime(2027, 11, 6, 18, 0, tzinfo=UTC),
]
DUE_IN = st.one_of(
    st.sampled_from([-7200, -90, 45, 90, 900, 3600, 5430, 20000, 86400, 2 * 86400, 40 * 86400]),
    st.integers(min_value=-3 * 3600, max_value=3 * 86400).map(lambda s: s - s % 15),
)
MAX_TASKS = 3  # few tasks, so that sequences of changes to one task are likely
STEPS = st.sampled_from([30, 60, 600, 3600, 5 * 3600, 86400, 3 * 86400])


class Recorder:
    """A channel that accepts every reminder and keeps the message IDs, in order."""

    name = "recorder"
    announces_delivery = False
    sends_body = False

    def __init__(self) -> None:
        self.delivered: list[str] = []

    def deliver(self, reminder: ReminderPayload) -> None:
        self.delivered.append(reminder.message_id)


@dataclass
class ModelTask:
    """What the user asked of one task, and what became of it."""

    id: uuid.UUID
    due_at: datetime
    time_zone: str
    rule: str | None
    offsets: list[int]
    status: str = "open"
    deleted: bool = False
    completed_through: datetime | None = None
    snoozes: dict[uuid.UUID, datetime] = field(default_factory=dict)  # message ID → occurrence
    ended_snoozes: set[uuid.UUID] = field(default_factory=set)  # of completed occurrences

    def series(self) -> Any:
        shape = SimpleNamespace(
            due_at=self.due_at,
            time_zone=self.time_zone,
            recurrence=self.rule,
            local_start=local_start(self.due_at, self.time_zone) if self.rule else None,
        )
        return series_of(shape)

    @property
    def live(self) -> bool:
        return self.status == "open" and not self.deleted

    def wanted(self, now: datetime, until: datetime) -> set[tuple[datetime, int]]:
        """The (occurrence, offset) pairs the task wants, due up to ``until``: a one-off task's
        every offset; a recurring task's occurrences to come (after now and after what was
        completed)."""
        if not self.live:
            return set()
        if self.rule is None:
            return {(self.due_at, offset) for offset in self.offsets}
        after = max(now, self.completed_through or now) + timedelta(seconds=1)
        return {
            (o.due_at, offset)
            for o in occurrences(self.series(), after=after, until=until)
            for offset in self.offsets
        }

    def is_occurrence(self, due_at: datetime) -> bool:
        if self.rule is None:
            return due_at == self.due_at
        if self.completed_through is not None and due_at <= self.completed_through:
            return False
        found = occurrences(self.series(), after=due_at, until=due_at)
        return any(o.due_at == due_at for o in found)


def remind(due_at: datetime, offset: int) -> datetime:
    return due_at - timedelta(seconds=offset)


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def planning_machine(
    engine: Engine, database_url: str, namespace: str
) -> type[RuleBasedStateMachine]:
    sessions = make_session_factory(engine)
    scan_settings = make_settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_namespace=namespace,
        horizon_seconds=HORIZON,
        catchup_seconds=CATCHUP,
    )
    broker = make_broker(scan_settings)

    class Planner(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.now = STARTS[0]
            self.channel = Recorder()
            self.tasks: list[ModelTask] = []
            self.missed_at: dict[uuid.UUID, datetime] = {}  # when each row was found missed
            self.acted = False  # a user's action since the last scan
            self.service = TaskService(
                sessions,
                Planning(horizon_seconds=HORIZON, min_recurrence_seconds=60),
                clock=lambda: self.now,
            )
            account = create_account(engine, f"u{uuid.uuid4().hex[:8]}")
            self.owner = Owner(account.id, account.name, is_operator=False)

        @initialize(start=st.sampled_from(STARTS))
        def start(self, start: datetime) -> None:
            self.now = start

        def teardown(self) -> None:
            with sessions.begin() as session:
                ids = [task.id for task in self.tasks]
                if ids:
                    session.execute(delete(Reminder).where(Reminder.task_id.in_(ids)))
                    session.execute(delete(Task).where(Task.id.in_(ids)))

        # --- the user's actions -------------------------------------------------------------

        @precondition(lambda self: len(self.tasks) < MAX_TASKS)
        @rule(
            due_in=DUE_IN,
            zone=st.sampled_from(ZONES),
            recurrence=st.sampled_from(RULES),
            offsets=st.lists(st.sampled_from(OFFSETS), min_size=1, max_size=3, unique=True),
        )
        def create(
            self, due_in: int, zone: str, recurrence: str | None, offsets: list[int]
        ) -> None:
            due_at = self.now + timedelta(seconds=due_in)
            body = {
                "title": "t",
                "due_at": due_at.isoformat(),
                "time_zone": zone,
                "recurrence": recurrence,
                "reminders": offsets,
            }
            self.acted = True
            created = self.service.create(self.owner, TaskCreate.model_validate(body))
            self.tasks.append(ModelTask(created.id, due_at, zone, recurrence, sorted(set(offsets))))

        def _patch(self, task: ModelTask, **fields: Any) -> None:
            self.acted = True
            patched = self.service.update(self.owner, task.id, TaskPatch.model_validate(fields))
            assert patched is not None

        @precondition(lambda self: any(not t.deleted for t in self.tasks))
        @rule(data=st.data(), due_in=DUE_IN)
        def move_due_date(self, data: st.DataObject, due_in: int) -> None:
            task = data.draw(st.sampled_from([t for t in self.tasks if not t.deleted]))
            task.due_at = self.now + timedelta(seconds=due_in)
            self._patch(task, due_at=task.due_at.isoformat())

        @precondition(lambda self: any(not t.deleted for t in self.tasks))
        @rule(data=st.data(), zone=st.sampled_from(ZONES))
        def change_zone(self, data: st.DataObject, zone: str) -> None:
            task = data.draw(st.sampled_from([t for t in self.tasks if not t.deleted]))
            task.time_zone = zone
            self._patch(task, time_zone=zone)

        @precondition(lambda self: any(not t.deleted for t in self.tasks))
        @rule(data=st.data(), recurrence=st.sampled_from(RULES))
        def change_recurrence(self, data: st.DataObject, recurrence: str | None) -> None:
            task = data.draw(st.sampled_from([t for t in self.tasks if not t.deleted]))
            task.rule = recurrence
            self._patch(task, recurrence=recurrence)

        @precondition(lambda self: any(not t.deleted for t in self.tasks))
        @rule(
            data=st.data(),
            offsets=st.lists(st.sampled_from(OFFSETS), min_size=1, max_size=3, unique=True),
        )
        def change_reminders(self, data: st.DataObject, offsets: list[int]) -> None:
            task = data.draw(st.sampled_from([t for t in self.tasks if not t.deleted]))
            task.offsets = sorted(set(offsets))
            self._patch(task, reminders=offsets)

        @precondition(lambda self: any(not t.deleted for t in self.tasks))
        @rule(data=st.data())
        def change_status(self, data: st.DataObject) -> None:
            """Done if open, open again if done."""
            task = data.draw(st.sampled_from([t for t in self.tasks if not t.deleted]))
            task.status = "done" if task.status == "open" else "open"
            self._patch(task, status=task.status)

        @precondition(lambda self: any(t.live for t in self.tasks))
        @rule(data=st.data())
        def complete(self, data: st.DataObject) -> None:
            task = data.draw(st.sampled_from([t for t in self.tasks if t.live]))
            self.acted = True
            done = self.service.complete(self.owner, task.id)
            assert done is not None
            with sessions() as session:
                row = session.get(Task, task.id)
                assert row is not None
                status, through = row.status, row.completed_through
            if task.rule is None:
                assert status == "done"
            if status == "done":
                task.status = "done"
            else:
                # The current occurrence: the earliest with a pending reminder, else the next.
                assert through is not None
                through = utc(through)
                assert task.is_occurrence(through), "completed something not an occurrence"
                assert task.completed_through is None or through > task.completed_through
                task.completed_through = through
                task.ended_snoozes |= {k for k, o in task.snoozes.items() if o <= through}

        @precondition(lambda self: any(t.live for t in self.tasks))
        @rule(data=st.data(), seconds=st.sampled_from([60, 300, 3600, 7200]))
        def snooze(self, data: st.DataObject, seconds: int) -> None:
            task = data.draw(st.sampled_from([t for t in self.tasks if t.live]))
            self.acted = True
            try:
                snoozed = self.service.snooze(
                    self.owner, task.id, self.now + timedelta(seconds=seconds)
                )
            except TaskDone:
                raise AssertionError("an open task refused a snooze") from None
            assert snoozed is not None
            task.snoozes[snoozed.message_id] = utc(snoozed.due_at)

        @precondition(lambda self: any(not t.deleted for t in self.tasks))
        @rule(data=st.data())
        def delete(self, data: st.DataObject) -> None:
            task = data.draw(st.sampled_from([t for t in self.tasks if not t.deleted]))
            self.acted = True
            assert self.service.delete(self.owner, task.id)
            task.deleted = True

        # --- time, the producer and the workers ---------------------------------------------

        @rule(seconds=STEPS)
        def time_passes(self, seconds: int) -> None:
            """The clock moves on; a scan runs then and the workers deliver what is due."""
            self.now += timedelta(seconds=seconds)
            self.acted = False
            at = self.now
            scan_due_tasks(sessions, broker, scan_settings, clock=lambda: at)
            with sessions() as session:
                due = session.execute(
                    select(Reminder.task_id, Reminder.due_at, Reminder.message_id)
                    .where(Reminder.state == "queued", Reminder.remind_at <= at)
                    .order_by(Reminder.remind_at)
                ).all()
                newly_missed = session.scalars(
                    select(Reminder.message_id).where(Reminder.state == "missed")
                ).all()
            for message_id in newly_missed:
                self.missed_at.setdefault(message_id, at)
            for task_id, due_at, message_id in due:
                delivery = deliver_occurrence(
                    engine, self.channel, Named(task_id, due_at, message_id), clock=lambda: at
                )
                assert delivery.outcome in (Outcome.SENT, Outcome.STALE), delivery

        # --- what must hold after every step ------------------------------------------------

        def _rows(self) -> dict[uuid.UUID, list[Reminder]]:
            ids = [task.id for task in self.tasks]
            by_task: dict[uuid.UUID, list[Reminder]] = {task_id: [] for task_id in ids}
            if not ids:
                return by_task
            with sessions() as session:
                for row in session.scalars(select(Reminder).where(Reminder.task_id.in_(ids))):
                    row.due_at, row.remind_at = utc(row.due_at), utc(row.remind_at)
                    by_task[row.task_id].append(row)
                session.expunge_all()
            return by_task

        @invariant()
        def rows_match_the_model(self) -> None:
            by_task = self._rows()
            self._planned_as_wanted(by_task)
            self._delivered_once_and_nothing_passed_is_lost(by_task)

        def _planned_as_wanted(self, by_task: dict[uuid.UUID, list[Reminder]]) -> None:
            now = self.now
            for task in self.tasks:
                rows = by_task[task.id]
                reminders = {(r.due_at, r.offset_seconds): r for r in rows if r.kind == "reminder"}
                far = max((r.due_at for r in rows), default=now) + timedelta(seconds=1)
                until = max(far, now + timedelta(seconds=COVERED + max(task.offsets)))
                wanted = task.wanted(now, until)
                for due_at, offset in sorted(wanted):
                    row = reminders.get((due_at, offset))
                    when = remind(due_at, offset)
                    label = f"{task.id} {due_at.isoformat()} -{offset}s (now {now.isoformat()})"
                    if row is None:
                        assert when >= now + timedelta(seconds=COVERED), f"no row for {label}"
                        continue
                    assert row.state != "cancelled", f"wanted but cancelled: {label}"
                    if when > now:
                        assert row.state in PENDING_STATES, f"{row.state}, not pending: {label}"
                for row in rows:
                    if row.state not in PENDING_STATES:
                        continue
                    label = f"{row.kind} {row.due_at.isoformat()} {row.offset_seconds} ({now})"
                    assert task.live, f"pending for a task {task.status}/deleted: {label}"
                    if row.kind == "snooze":
                        continue
                    assert row.offset_seconds in task.offsets, f"offset not wanted: {label}"
                    assert task.is_occurrence(row.due_at), f"not an occurrence: {label}"
                    if task.rule is not None:
                        assert row.due_at > now or row.remind_at <= now, f"stale: {label}"

        def _delivered_once_and_nothing_passed_is_lost(
            self, by_task: dict[uuid.UUID, list[Reminder]]
        ) -> None:
            delivered = self.channel.delivered
            assert len(delivered) == len(set(delivered)), "a reminder was delivered twice"
            sent = set(delivered)
            now = self.now
            for task in self.tasks:
                for row in by_task[task.id]:
                    key = str(row.message_id)
                    assert (row.state == "sent") == (key in sent), f"{row.state} vs channel"
                    if row.state == "missed":
                        found = self.missed_at[row.message_id]
                        assert row.due_at < found - timedelta(seconds=CATCHUP), (
                            f"missed within the catch-up window: {row.due_at} at {found}"
                        )
                    if row.remind_at <= now and row.state in PENDING_STATES:
                        # Only what the user opened since the last scan may wait for the next.
                        assert self.acted, f"passed but {row.state}: {row.kind} {row.due_at}"
                for key in task.ended_snoozes:
                    state = next(r.state for r in by_task[task.id] if r.message_id == key)
                    assert state not in PENDING_STATES, "a completed occurrence's snooze is pending"

    return Planner


@pytest.fixture
def planner(
    migrated: Engine, any_database_url: str, redis_namespace: str
) -> Iterator[type[RuleBasedStateMachine]]:
    yield planning_machine(migrated, any_database_url, redis_namespace)


@pytest.mark.timeout(1200)
def test_planning_keeps_every_reminder_in_step_with_its_task(
    planner: type[RuleBasedStateMachine],
) -> None:
    run_state_machine_as_test(
        planner,
        settings=settings(
            max_examples=200,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            derandomize=False,
        ),
    )
