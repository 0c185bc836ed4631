"""Recurring series and racing edits in real time, on real PostgreSQL, Redis and processes.

`tests/pipeline/test_recurring.py` moves an injected clock; here nothing is simulated. A
minutely series (the suite allows ``FREQ=MINUTELY``: ``REMINDERS_MIN_RECURRENCE_SECONDS``
is 60 in tests) is delivered by a real worker group that is SIGKILLed mid-series while two
producers race (SPEC §4.1, §4.2, §4.6); and users' edits race deliveries, the producer and
the API's own enqueueing of soon-due reminders (SPEC §2.1, §4.3).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.redis import RedisBroker

from shared.broker.redis_broker import decode_message
from shared.planning.rules import PENDING_STATES
from tests.conftest import Account
from tests.pipeline.conftest import BIN, Receiver, Stack
from workers.producer import ScanResult, scan_due_tasks

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SECRET = "realtime-signing-secret"


def documented_message_id(task_id: uuid.UUID | str, due_at: datetime, offset: int) -> str:
    """SPEC §3, written out here rather than imported: the formula is the contract."""
    stamp = due_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"reminders:{task_id}:{stamp}:{offset}"))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class Producers:
    """Schedulers as threads: each runs the producer every ``interval`` seconds on a broker
    of its own (as two ``reminders scheduler`` deployments would, minus periodiq's
    once-a-minute tick, which would make a test of a three-minute series take minutes more).
    """

    stack: Stack
    count: int
    interval: float
    settings: dict[str, Any]
    results: list[ScanResult] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self, broker: RedisBroker) -> None:
        settings = self.stack.settings(**self.settings)
        while not self._stop.is_set():
            try:
                self.results.append(scan_due_tasks(self.stack.sessions, broker, settings))
            except Exception as error:  # kept for the test to report, not swallowed
                self.errors.append(error)
            self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[Producers]:
        threads = []
        for n in range(self.count):
            broker, _ = self.stack.broker(**self.settings)
            thread = threading.Thread(target=self._run, args=(broker,), name=f"scheduler-{n}")
            thread.start()
            threads.append(thread)
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=60)

    def enqueued_ids(self) -> list[str]:
        return [key for result in self.results for key in result.message_ids]


def held_by_workers(broker: RedisBroker) -> set[str]:
    """Message IDs some worker has fetched and not acknowledged (Dramatiq's ``__acks__`` sets:
    a delayed message sits there, in the worker's memory, until its eta)."""
    client: Any = broker.client  # redis-py types it for async clients too; this one is sync
    prefix = f"{broker.namespace}:__acks__."
    held: set[str] = set()
    for raw_key in client.scan_iter(match=f"{prefix}*"):
        queue_name = raw_key.decode()[len(prefix) :].partition(".")[2]  # <broker>.<queue>
        for entry in client.smembers(raw_key):
            data = client.hget(f"{broker.namespace}:{queue_name}.msgs", entry)
            if data is not None:
                held.add(decode_message(data).message_id)
    return held


def webhook_settings(receiver: Receiver) -> dict[str, Any]:
    return {"webhook_url": receiver.url, "webhook_secret": SECRET}


@pytest.mark.slow
def test_a_minutely_series_with_two_schedulers_and_a_killed_worker_sends_exactly_three(
    stack: Stack, receiver: Receiver, api_client_for: Callable[[Stack], Any], tmp_path: Path
) -> None:
    """``FREQ=MINUTELY;COUNT=3``, one reminder 60 s before each occurrence, delivered by a real
    ``dramatiq workers.app`` group while two producer threads (see `Producers`) scan every
    2 s. Once the first reminder has been received and the group holds the other two as
    delayed messages in memory, the whole group is SIGKILLed and a new one started.

    What would make it fail: messages of a killed worker never given back (heartbeat
    maintenance) — fewer than three; the two producers claiming the same row, or a delivery
    not re-checking that its row is still pending under the task's lock — a reminder twice;
    a delayed message released before its eta — ``sent_at < remind_at``; a series expanded
    or keyed wrongly — other message IDs than SPEC §3's.

    Real time: real periodiq schedulers tick by the minute and a real worker is SIGKILLed."""
    settings = {
        **webhook_settings(receiver),
        "heartbeat_timeout_ms": 2000,  # a killed worker's messages come back within seconds
        "requeue_after_seconds": 600,  # ...through the heartbeat, not the lost-message check
    }
    env = stack.env(**settings)
    argv = [str(BIN / "dramatiq"), "workers.app", "--processes", "1", "--threads", "2"]
    first = stack.spawn_logged(argv, env, tmp_path / "first.log")
    client = api_client_for(stack)
    alice = stack.account()
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=75)
    created = client.post(
        "/tasks",
        json={
            "title": "stand up",
            "due_at": due.isoformat(),
            "recurrence": "FREQ=MINUTELY;COUNT=3",
            "reminders": [60],
        },
        headers=alice.headers,
    )
    assert created.status_code == 201, created.json
    task_id = created.json["id"]
    occurrences = [due + timedelta(seconds=60 * n) for n in range(3)]
    expected = [documented_message_id(task_id, occurrence, 60) for occurrence in occurrences]
    reader, _ = stack.broker(**settings)

    with Producers(stack, count=2, interval=2.0, settings=settings).running() as producers:
        # Remind times: due - 60 = now + 15 s, + 75 s, + 135 s.
        assert stack.wait_for(lambda: len(receiver.keys()) >= 1, 60, 0.2), stack.states()
        # The third is claimed by a producer once within the 90 s lookahead (~ now + 45 s);
        # wait until the group has fetched both delayed messages into memory, then kill it.
        assert stack.wait_for(lambda: set(expected[1:]) <= held_by_workers(reader), 90, 0.5), (
            stack.states(),
            held_by_workers(reader),
        )
        assert receiver.keys() == expected[:1]
        assert stack.states() == {"sent": 1, "queued": 2}
        os.killpg(first.pid, signal.SIGKILL)  # the whole group: nothing is given back on exit
        first.wait(timeout=30)
        stack.spawn_logged(argv, env, tmp_path / "second.log")

        last_remind = occurrences[-1] - timedelta(seconds=60)
        timeout = (last_remind - datetime.now(UTC)).total_seconds() + 60
        assert stack.wait_for(
            lambda: len(set(receiver.keys())) >= 3 and stack.states() == {"sent": 3},
            timeout,
            0.5,
        ), (stack.states(), receiver.keys())
        time.sleep(2.0)  # a second delivery of any of them would show up now

    assert producers.errors == []
    # Two producers, one claim: the first two were enqueued by the API when the task was
    # created (due within the lookahead), the third by exactly one of the producers.
    assert producers.enqueued_ids() == expected[2:]
    rows = sorted(stack.reminders(), key=lambda row: row.due_at)
    assert [(row.due_at, row.offset_seconds, row.state) for row in rows] == [
        (occurrence, 60, "sent") for occurrence in occurrences
    ]
    assert [str(row.message_id) for row in rows] == expected
    # Each received exactly once: the kill landed between deliveries (the first committed,
    # the others not yet due), so no attempt was cut off to be repeated.
    assert Counter(receiver.keys()) == dict.fromkeys(expected, 1)
    assert [
        (receipt.payload["message_id"], utc(receipt.payload["due_at"]))
        for receipt in sorted(receiver.receipts, key=lambda receipt: receipt.at)
    ] == list(zip(expected, occurrences, strict=True))
    for row in rows:
        assert row.sent_at is not None and row.sent_at >= row.remind_at  # never early
        # On time across the kill: recovery took seconds, not a scan tick or a restart.
        assert row.sent_at - row.remind_at < timedelta(seconds=20), (row.remind_at, row.sent_at)


# ---------------------------------------------------------------------------------------------

OFFSET_POOL = (60, 61, 62, 63, 64, 65)  # remind times a second apart: many come due mid-edit
SERIES = "FREQ=MINUTELY;COUNT=3"
TASKS = 30
EDITORS = 3
EDIT_SECONDS = 8.0


@dataclass(frozen=True)
class Shape:
    """What a task asks for at one moment."""

    due_at: datetime
    offsets: tuple[int, ...]
    open: bool
    recurring: bool

    def occurrences(self) -> list[datetime]:
        count = 3 if self.recurring else 1
        return [self.due_at + timedelta(seconds=60 * n) for n in range(count)]

    def wants(self, due_at: datetime, offset: int | None) -> bool:
        return self.open and offset in self.offsets and due_at in self.occurrences()


@dataclass
class Change:
    started: float  # time.monotonic() when the request left
    finished: float  # time.monotonic() when its answer came back (after the commit)
    finished_wall: datetime
    shape: Shape  # the task after it


@dataclass
class History:
    task_id: uuid.UUID
    owner: Account
    base_due: datetime
    changes: list[Change]

    @property
    def shape(self) -> Shape:
        return self.changes[-1].shape

    def shapes_seen_at(self, moment: float) -> list[Shape]:
        """The shapes a delivery that held the task's row lock at ``moment`` may have seen.

        Changes are made one after another (one editor per task). A change answered before
        ``moment`` committed before the delivery took the lock (both take it, and the
        delivery holds it from its check until after the webhook answered); a change sent
        after ``moment`` locked after the delivery committed. Only a change in flight at
        ``moment`` may have gone either way.
        """
        seen: list[Shape] = []
        before: Shape | None = None
        for change in self.changes:
            if change.finished < moment:
                before = change.shape
            elif change.started <= moment:
                seen.append(change.shape)
        return seen + ([before] if before is not None else [])


def patch_for(history: History, rng: random.Random) -> tuple[dict[str, Any], Shape]:
    """A random edit of the task: move it by a minute, change its offsets, finish or reopen."""
    shape = history.shape
    kind = rng.choice(("move", "reminders", "status"))
    if kind == "move":
        minute_earlier = history.base_due - timedelta(seconds=60)
        due_at = minute_earlier if shape.due_at == history.base_due else history.base_due
        return {"due_at": due_at.isoformat()}, replace(shape, due_at=due_at)
    if kind == "reminders":
        offsets = tuple(sorted(rng.sample(OFFSET_POOL, rng.randint(1, 3)), reverse=True))
        return {"reminders": list(offsets)}, replace(shape, offsets=offsets)
    return {"status": "open" if not shape.open else "done"}, replace(shape, open=not shape.open)


def edit_until(
    client: Any, histories: list[History], until: float, seed: int, errors: list[str]
) -> None:
    """Edit random tasks of ``histories`` in bursts of one to three changes until ``until``."""
    rng = random.Random(seed)
    while time.monotonic() < until:
        history = rng.choice(histories)
        for _ in range(rng.randint(1, 3)):
            body, shape = patch_for(history, rng)
            started = time.monotonic()
            response = client.patch(
                f"/tasks/{history.task_id}", json=body, headers=history.owner.headers
            )
            finished = time.monotonic()
            if response.status_code != 200:
                errors.append(f"PATCH {body} -> {response.status_code} {response.get_data()!r}")
                return  # the task's shape is no longer known
            history.changes.append(Change(started, finished, datetime.now(UTC), shape))


def test_edits_racing_deliveries_never_send_a_cancelled_reminder_nor_twice(
    stack: Stack, receiver: Receiver, api_client_for: Callable[[Stack], Any]
) -> None:
    """Thirty tasks (half one-off, half ``FREQ=MINUTELY;COUNT=3``), each its own user's, whose
    reminders (offsets 60 to 65 s: a second apart) come due during eight seconds in which three
    editors PATCH them in bursts — moving ``due_at`` a minute back and forth, changing
    ``reminders``, finishing and reopening — while an in-process worker delivers to the
    webhook and a producer thread scans every second. Moving a minute earlier puts the
    occurrence's reminders in the past: each (re)opening is enqueued at once by the API and
    delivered within milliseconds, racing the next edit of the same task.

    Every received reminder is checked against what its task asked for while the delivery
    held the task's lock (`History.shapes_seen_at`): its occurrence, its offset, the task open.

    What would make it fail: a delivery that does not re-check, under the task's row lock,
    that the reminder row is still pending and the task open (a queued message for a row an
    edit cancelled would be sent: a reminder for an offset or a due time the user had
    removed, or for a finished task); the API's post-commit ``waiting`` → ``queued`` mark or
    the producer's claim overwriting a cancellation (the row would be sent while cancelled);
    two messages for one row (API, producer, reopen) both delivering — a key received twice;
    an unchanged (occurrence, offset) given a new row by an edit — the same; a reopened row
    left without a message — a reminder missed at the end.

    Real time: API edits race real workers delivering; the race is the guarantee."""
    # base: about when the edits start, once the tasks are created.
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    receiver.delay_seconds = 0.02  # deliveries hold the task's lock while edits queue behind
    worker_broker, _ = stack.broker(**webhook_settings(receiver))
    clients = [api_client_for(stack) for _ in range(EDITORS)]
    histories: list[History] = []

    with (
        stack.run_workers(worker_broker, threads=4),
        Producers(stack, count=1, interval=1.0, settings={}).running() as producer,
    ):
        for n in range(TASKS):
            owner = stack.account(f"user{n}")  # each its own token: API rate limits apply
            # Its reminders come due at base + 1 s ... base + 13 s, during the edits; a minute
            # earlier, they are overdue: sent as soon as an edit opens them.
            base_due = base + timedelta(seconds=66 + n % 8)
            shape = Shape(base_due, (62, 60), open=True, recurring=n % 2 == 1)
            body: dict[str, Any] = {
                "title": f"task {n}",
                "due_at": base_due.isoformat(),
                "reminders": list(shape.offsets),
            }
            if shape.recurring:
                body["recurrence"] = SERIES
            started = time.monotonic()
            created = clients[0].post("/tasks", json=body, headers=owner.headers)
            assert created.status_code == 201, created.json
            change = Change(started, time.monotonic(), datetime.now(UTC), shape)
            histories.append(History(uuid.UUID(created.json["id"]), owner, base_due, [change]))

        until = time.monotonic() + EDIT_SECONDS
        errors: list[str] = []
        editors = [
            threading.Thread(
                target=edit_until,
                args=(clients[n], histories[n::EDITORS], until, n, errors),
                name=f"editor-{n}",
            )
            for n in range(EDITORS)
        ]
        for editor in editors:
            editor.start()
        for editor in editors:
            editor.join(timeout=EDIT_SECONDS + 60)
        assert errors == []
        edits = sum(len(history.changes) - 1 for history in histories)

        # Every reminder of the occurrences base_due - 60 s and base_due is due by base + 13 s
        # (those of later occurrences a minute after): wait for them to be delivered.
        settled = base + timedelta(seconds=15)

        def drained() -> bool:
            if datetime.now(UTC) < settled:
                return False
            return not any(
                row.state in PENDING_STATES and row.remind_at <= settled
                for row in stack.reminders()
            )

        assert stack.wait_for(drained, 60, 0.5), stack.states()
        time.sleep(1.0)  # a second delivery of any of them would show up now

    assert producer.errors == []
    rows = {str(row.message_id): row for row in stack.reminders()}
    by_task = {history.task_id: history for history in histories}
    keys = receiver.keys()

    # Each reminder reached the webhook once, and only reminders recorded as sent did.
    assert {key: n for key, n in Counter(keys).items() if n > 1} == {}
    sent = {key for key, row in rows.items() if row.state == "sent"}
    assert set(keys) == sent, {key: rows[key].state for key in set(keys) ^ sent if key in rows}

    # Never one the task no longer asked for: its occurrence, offset and status at the time.
    unwanted = []
    for receipt in receiver.receipts:
        row, offset = rows[receipt.key], receipt.payload["offset_seconds"]
        assert receipt.payload["message_id"] == receipt.key
        assert (utc(receipt.payload["due_at"]), offset) == (row.due_at, row.offset_seconds)
        assert receipt.key == documented_message_id(row.task_id, row.due_at, offset)
        shapes = by_task[row.task_id].shapes_seen_at(receipt.at)
        if not any(shape.wants(row.due_at, offset) for shape in shapes):
            unwanted.append((receipt.key, row.due_at, offset, shapes))
    assert unwanted == [], f"{len(unwanted)} reminders sent that their task no longer wanted"

    for row in rows.values():
        if row.state == "sent":
            assert row.sent_at is not None and row.sent_at >= row.remind_at  # never early
            # Cancelled at some point (an edit removed it), then sent: only after an edit
            # brought it back. A cancellation after the send would have left it sent.
            if row.cancelled_at is not None:
                assert row.reopened_at is not None and row.reopened_at >= row.cancelled_at, row

    # None missed: what each task finally asks for, due by now, was sent; nothing is left
    # pending past its remind time; a finished task has nothing pending. (An edit opens a
    # series' occurrences still to come, not those already past: they are left out.)
    missing = []
    for history in histories:
        final = history.shape
        task_rows = {
            (row.due_at, row.offset_seconds): row
            for row in rows.values()
            if row.task_id == history.task_id
        }
        if not final.open:
            assert not any(row.state in PENDING_STATES for row in task_rows.values())
            continue
        last_edit = history.changes[-1].finished_wall
        for occurrence in final.occurrences():
            if final.recurring and occurrence <= last_edit:
                continue
            for offset in final.offsets:
                if occurrence - timedelta(seconds=offset) > settled:
                    continue
                kept = task_rows.get((occurrence, offset))
                if kept is None or kept.state != "sent":
                    missing.append((history.task_id, occurrence, offset, kept and kept.state))
    assert missing == []

    states = Counter(row.state for row in rows.values())
    in_flight = sum(
        1
        for receipt in receiver.receipts
        if any(
            change.started <= receipt.at <= change.finished
            for change in by_task[rows[receipt.key].task_id].changes
        )
    )
    print(
        f"{edits} edits, {len(keys)} reminders sent ({in_flight} while an edit of the same "
        f"task was in flight), rows by state {dict(states)}"
    )
    assert edits >= TASKS and states["cancelled"] > 0 and states["sent"] > 0
