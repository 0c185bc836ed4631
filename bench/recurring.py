"""Recurring series at scale: keeping the horizon filled, and delivering their reminders.

``recurring`` part of `bench/run.py`. 100,000 recurring tasks (by default) with a mix of
daily and weekly rules, zones on both hemispheres and 30-minute offsets, one or two
reminders each, are COPYed in as the API stores them but with no rows yet and ``refill_at``
now, so the first scan materialises every series (the worst case: a fresh deployment or a
migration). Then the steady state: with ``REMINDERS_HORIZON`` = 1 day, each task is
extended every 12 hours, i.e. 1/720 of them per one-minute scan; that many are made due
again and one scan is timed. Last, the end-to-end rate of reminders that come from
recurring series (their rows made ahead; a scan that claims them, 2 worker processes
delivering).
"""

from __future__ import annotations

import io
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.harness import Env, PeakRss, count_sent, make_user, wait_until, worker_group
from shared.broker.queue import make_broker
from workers.producer import ScanResult, _extend_series, scan_due_tasks

RULES = (
    "FREQ=DAILY",
    "FREQ=DAILY;BYHOUR=8,18",
    "FREQ=WEEKLY;BYDAY=MO,WE,FR",
    "FREQ=WEEKLY;BYDAY=TU",
    "FREQ=WEEKLY;INTERVAL=2;BYDAY=SA",
)
ZONES = (
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "America/Los_Angeles",
)
OFFSETS = ([3600], [86400, 600])


def load_series(env: Env, owner: uuid.UUID, count: int, first_due: datetime | None) -> None:
    """COPY ``count`` recurring tasks, no reminder rows, all due for their first fill.

    ``first_due``: every series starts then (reminded an hour before); None: starts spread
    over the coming week, with the mix of rules, zones and offsets above.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    created = now.isoformat()
    rows = io.StringIO()
    spread = random.Random(7)
    for n in range(count):
        if first_due is None:
            start = now + timedelta(seconds=spread.randrange(7 * 86400))
            rule, zone = RULES[n % len(RULES)], ZONES[n % len(ZONES)]
            offsets = OFFSETS[n % len(OFFSETS)]
        else:
            start, rule, zone, offsets = first_due, "FREQ=DAILY", ZONES[n % len(ZONES)], [3600]
        rows.write(
            f"{uuid.uuid4()}\t{owner}\tseries {n}\t{start.isoformat()}\t{zone}\t{rule}\t"
            f"{json.dumps(offsets)}\topen\t{created}\t{created}\t{created}\n"
        )
    with env.connect() as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY tasks (id, owner_id, title, due_at, time_zone, recurrence, reminder_offsets, "
            "status, created_at, updated_at, refill_at) FROM STDIN"
        ) as copy:
            copy.write(rows.getvalue())
        conn.commit()
        cur.execute("ANALYZE tasks")
        conn.commit()


def _count(env: Env, sql: str) -> int:
    with env.connect() as conn:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row else 0


def bench_recurring(env: Env, count: int, e2e_count: int, threads: int) -> dict[str, Any]:
    env.reset()
    owner, _ = make_user(env)
    load_series(env, owner, count, None)
    broker = make_broker(env.settings)

    # The first fill: every series at once.
    fill = ScanResult()
    started = time.perf_counter()
    _extend_series(env.sessions, env.settings, datetime.now(UTC), fill)
    first_fill = time.perf_counter() - started
    rows = _count(env, "SELECT count(*) FROM reminders")

    # Steady state: the tasks one scan extends (1/720 with a one-day horizon), whole scans.
    per_scan = max(1, count * 60 // (env.settings.horizon_seconds // 2))
    steady: list[float] = []
    extended: list[int] = []
    for _ in range(3):
        with env.connect() as conn:
            conn.execute(
                "UPDATE tasks SET refill_at = now() WHERE id IN "
                "(SELECT id FROM tasks WHERE refill_at IS NOT NULL ORDER BY random() LIMIT %s)",
                (per_scan,),
            )
            conn.commit()
        started = time.perf_counter()
        result = scan_due_tasks(env.sessions, broker, env.settings)
        steady.append(time.perf_counter() - started)
        extended.append(result.extended)
    idle_started = time.perf_counter()
    scan_due_tasks(env.sessions, broker, env.settings)
    idle = time.perf_counter() - idle_started
    broker.close()

    return {
        "tasks": count,
        "first_fill_seconds": first_fill,
        "first_fill_tasks_per_second": fill.extended / first_fill,
        "rows": rows,
        "rows_per_task": rows / count,
        "steady_tasks_per_scan": per_scan,
        "steady_extended": extended,
        "steady_scan_seconds": steady,
        "idle_scan_seconds": idle,
        "e2e": bench_recurring_e2e(env, e2e_count, threads),
    }


def bench_recurring_e2e(env: Env, count: int, threads: int) -> dict[str, float]:
    """``count`` daily series whose first reminder is due now, their rows made ahead (as the
    horizon has them in the steady state), from the scan that claims them to every reminder
    sent, with 2 worker processes."""
    env.reset()
    owner, _ = make_user(env)
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=30)
    load_series(env, owner, count, due)
    _extend_series(env.sessions, env.settings, datetime.now(UTC), ScanResult())
    broker = make_broker(env.settings)
    with worker_group(env, "workers.app", 2, threads) as group, PeakRss(group) as rss:
        started = time.perf_counter()
        scan_due_tasks(env.sessions, broker, env.settings)
        wait_until(lambda: count_sent(env) >= count, timeout=1800, interval=0.2)
        elapsed = time.perf_counter() - started
    broker.close()
    return {"seconds": elapsed, "per_second": count / elapsed, "peak_rss_mb": rss.peak / 2**20}
