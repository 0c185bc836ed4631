"""How late reminders go out: a steady load and a burst, through the real worker and producer.

Lateness is ``reminders.sent_at - reminders.remind_at`` as the database records it; a
reminder is early when ``sent_at < remind_at``. Tasks are written to the database directly
(COPY, as the API would write them), so the cost of creating them does not interfere.

- *Steady*: ``rate`` reminders per second with remind times spread uniformly (``rate`` per
  whole second, as the API stores whole seconds) over ``spread`` seconds, the first at least
  ``lead`` seconds after the rows are created.
- *Burst*: ``count`` reminders with one remind time ``lead`` seconds after creation: the
  time from that remind time to the first and to the last ``sent_at``.

The worker group is the Procfile's worker (``cli.launch dramatiq workers.app``). The
producer runs one of two ways (``--scheduler``):

- ``loop`` (default): a thread of the harness calls ``workers.producer.scan_due_tasks``
  once every scan interval (the gap between two ticks of ``REMINDERS_SCAN_CRON``), as the
  scheduler's message makes a worker do, the first call right after the rows are created.
  It starts at once instead of waiting for the wall clock's next tick.
- ``periodiq``: the real scheduler (``cli.launch periodiq workers.app``, TZ=UTC) sends the
  producer's message at each cron tick and a worker runs it; the rows are created a few
  seconds before a tick, so both ways put the first scan just after creation.

Each wait is bounded: past ``timeout`` the scenario ends and reports what was not sent.
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pendulum
from periodiq import cron

from bench.harness import Env, load_reminders, make_user, scheduler, worker_group
from shared.broker.queue import make_broker
from shared.config import Settings
from workers.producer import scan_due_tasks

CREATE_BEFORE_TICK = 5.0  # periodiq mode: seconds before a tick the rows are written


def scan_interval(settings: Settings) -> float:
    """Seconds between two ticks of the scan cron (60 for the default ``* * * * *``)."""
    spec = cron(settings.scan_cron)
    first = spec.next_valid_date(pendulum.now("UTC"))
    return float((spec.next_valid_date(first) - first).total_seconds())


def next_tick(settings: Settings, not_before: datetime) -> datetime:
    spec = cron(settings.scan_cron)
    tick = spec.next_valid_date(pendulum.instance(not_before).in_timezone("UTC"))
    return datetime.fromtimestamp(tick.timestamp(), UTC)


class ScanLoop:
    """Calls the producer now and then once every ``interval`` seconds, as the scheduler would."""

    def __init__(self, env: Env, interval: float) -> None:
        self.env, self.interval = env, interval
        self.broker = make_broker(env.settings)
        self.scans: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scan-loop", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        tick = 0
        while True:
            at = datetime.now(UTC)
            try:
                result = scan_due_tasks(self.env.sessions, self.broker, self.env.settings)
                self.scans.append(
                    {"at": at.isoformat(), "enqueued": result.enqueued, "seconds": result.seconds}
                )
            except Exception as exc:  # reported with the scenario, never silently lost
                self.errors.append(f"{at.isoformat()} {type(exc).__name__}: {exc}")
            tick += 1
            if self._stop.wait(max(0.0, started + tick * self.interval - time.monotonic())):
                return

    def __enter__(self) -> ScanLoop:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.broker.close()


@contextmanager
def _no_scan() -> Any:
    yield None


def run_scenario(
    env: Env,
    name: str,
    remind_offsets: list[float],
    *,
    mode: str,
    processes: int,
    threads: int,
    timeout: float,
) -> dict[str, Any]:
    """Create one reminder per offset (seconds after creation), run until all are sent.

    ``remind_offsets`` are whole seconds counted from the creation time rounded up to a
    whole second.
    """
    env.reset()
    owner, _ = make_user(env)
    interval = scan_interval(env.settings)
    producer = scheduler(env) if mode == "periodiq" else _no_scan()
    with worker_group(env, "workers.app", processes, threads), producer:
        if mode == "periodiq":
            tick = next_tick(env.settings, datetime.now(UTC) + timedelta(seconds=8))
            time.sleep(max(0.0, (tick - datetime.now(UTC)).total_seconds() - CREATE_BEFORE_TICK))
        base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        created = load_reminders(
            env, owner, [base + timedelta(seconds=offset) for offset in remind_offsets]
        )
        loaded = datetime.now(UTC)
        loop = ScanLoop(env, interval) if mode == "loop" else None
        with loop or _no_scan():
            last_remind = base + timedelta(seconds=max(remind_offsets))
            deadline = time.monotonic() + (last_remind - datetime.now(UTC)).total_seconds()
            deadline += timeout
            outstanding = len(remind_offsets)
            while time.monotonic() < deadline:
                outstanding = _outstanding(env)
                if outstanding == 0:
                    break
                time.sleep(0.5)
            finished = datetime.now(UTC)
    result = _lateness(env)
    first_remind = base + timedelta(seconds=min(remind_offsets))
    result.update(
        scenario=name,
        scheduler=mode,
        processes=processes,
        threads=threads,
        scan_interval_seconds=interval,
        reminders=len(remind_offsets),
        created_at=created.isoformat(),
        creation_seconds=(loaded - created).total_seconds(),
        first_remind_after_creation_seconds=(first_remind - loaded).total_seconds(),
        finished_at=finished.isoformat(),
        timed_out=outstanding > 0,
    )
    if loop is not None:
        result["scans"] = loop.scans
        result["scan_errors"] = loop.errors
    return result


def _outstanding(env: Env) -> int:
    with env.connect() as conn:
        row = conn.execute("SELECT count(*) FROM reminders WHERE state <> 'sent'").fetchone()
        return int(row[0]) if row else 0


def _lateness(env: Env) -> dict[str, Any]:
    with env.connect() as conn:
        row = conn.execute(
            """
            SELECT count(sent_at),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY late),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY late),
                   max(late), min(late),
                   count(*) FILTER (WHERE late < 0),
                   min(sent_at), max(sent_at), min(remind_at), max(remind_at)
            FROM (SELECT sent_at, remind_at,
                         extract(epoch FROM sent_at - remind_at)::float8 AS late
                  FROM reminders) AS r
            """
        ).fetchone()
        assert row is not None
        not_sent = dict(
            conn.execute(
                "SELECT state, count(*) FROM reminders WHERE state <> 'sent' GROUP BY state"
            ).fetchall()
        )
    sent, p50, p99, worst, best, early, first_sent, last_sent, first_remind, last_remind = row
    out: dict[str, Any] = {
        "sent": sent,
        "not_sent": not_sent,
        "lateness_p50_s": p50,
        "lateness_p99_s": p99,
        "lateness_max_s": worst,
        "lateness_min_s": best,
        "early": early,
    }
    if sent:
        out["first_sent_after_remind_s"] = (first_sent - first_remind).total_seconds()
        out["last_sent_after_remind_s"] = (last_sent - last_remind).total_seconds()
        span = (last_sent - first_sent).total_seconds()
        out["send_span_s"] = span
        out["send_rate_per_s"] = sent / span if span > 0 else math.inf
    return out


def bench_steady(
    env: Env, rate: int, spread: int, lead: int, *, mode: str, processes: int, threads: int
) -> dict[str, Any]:
    offsets = [float(lead + second) for second in range(spread) for _ in range(rate)]
    interval = scan_interval(env.settings)
    timeout = 2 * interval + len(offsets) / 200 + 30
    return run_scenario(
        env, "steady", offsets, mode=mode, processes=processes, threads=threads, timeout=timeout
    )


def bench_burst(
    env: Env, count: int, lead: int, *, mode: str, processes: int, threads: int
) -> dict[str, Any]:
    offsets = [float(lead)] * count
    interval = scan_interval(env.settings)
    timeout = 2 * interval + count / 200 + 30
    return run_scenario(
        env, "burst", offsets, mode=mode, processes=processes, threads=threads, timeout=timeout
    )
