"""Isolation between users (SPEC §4.9): one user's slowness or volume against another's lateness.

Receivers are real HTTP servers on 127.0.0.1 (`bench.receiver`, in processes of their own);
users' endpoints are rows of the run's database (``REMINDERS_ALLOW_PRIVATE_ENDPOINTS=true``
lets them name loopback, as in the isolation tests). The worker group is the Procfile's
worker (`bench.harness.worker_group`); the producer is `bench.lateness.ScanLoop`, its first
scan right after the rows are created. Lateness is ``sent_at - remind_at`` from the
database, per group of owners.

- *Isolation* (`bench_isolation`): a fast user (endpoint answering at once) with reminders
  spread over a window from the flood's remind time on, while ``slow_users`` others (2 s per
  request, ``slow_reminders`` each, all due at that moment) flood. Rows are written slow
  users first, so the fast user's reminder due with the flood is claimed behind it. The
  slow users' drain (their last answer after the remind time) and the most requests in
  flight at each slow receiver come with it.
- *Burst fairness* (`bench_burst_fair`): one owner's ``big`` reminders and ``others`` other
  owners' ``each`` reminders all due at the same second, the big owner's rows written
  first; through the owners' endpoints (default limits) or the deployment's webhook.
- *Endpoint throughput* (`bench_endpoint_throughput`): ``count`` due reminders through one
  endpoint with the default limits, then as many through the deployment's webhook (no
  limits), both to the same kind of receiver answering at once.
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.harness import (
    Env,
    add_endpoint,
    count_sent,
    load_reminders,
    make_user,
    wait_until,
    worker_group,
)
from bench.lateness import ScanLoop, scan_interval
from bench.receiver import ReceiverProcess, receiver_process
from shared.broker.gate import Gate
from shared.broker.queue import QUEUE_NAME, make_broker
from shared.delivery.endpoints import DEFAULT_MAX_CONCURRENCY
from shared.delivery.secret_box import generate_key
from shared.delivery.signing import new_endpoint_secret
from workers.producer import scan_due_tasks

SLOW_HOLD_SECONDS = 2.0  # a slow receiver's answer time


def deployment_env(secret_key: str, webhook_url: str = "") -> dict[str, str]:
    """The workers' settings for these runs: loopback endpoints allowed, the key their
    secrets were encrypted with, and the deployment's webhook when given."""
    more = {"REMINDERS_ALLOW_PRIVATE_ENDPOINTS": "true", "REMINDERS_SECRET_KEY": secret_key}
    if webhook_url:
        more.update(
            REMINDERS_WEBHOOK_URL=webhook_url, REMINDERS_WEBHOOK_SECRET=new_endpoint_secret()
        )
    return more


def lateness_of(env: Env, owners: list[uuid.UUID], since: datetime) -> dict[str, Any]:
    """Lateness of ``owners``' reminders (p50, p99, max, min, early), what was not sent by
    state, and their first and last ``sent_at`` after ``since``."""
    with env.connect() as conn:
        row = conn.execute(
            """
            SELECT count(sent_at),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY late),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY late),
                   max(late), min(late),
                   count(*) FILTER (WHERE late < 0),
                   min(sent_at), max(sent_at), count(*)
            FROM (SELECT r.sent_at, extract(epoch FROM r.sent_at - r.remind_at)::float8 AS late
                  FROM reminders AS r JOIN tasks AS t ON t.id = r.task_id
                  WHERE t.owner_id = ANY(%s)) AS x
            """,
            (owners,),
        ).fetchone()
        assert row is not None
        not_sent = dict(
            conn.execute(
                "SELECT r.state, count(*) FROM reminders AS r JOIN tasks AS t "
                "ON t.id = r.task_id WHERE t.owner_id = ANY(%s) AND r.state <> 'sent' "
                "GROUP BY r.state",
                (owners,),
            ).fetchall()
        )
    sent, p50, p99, worst, best, early, first_sent, last_sent, total = row
    return {
        "reminders": total,
        "sent": sent,
        "not_sent": not_sent,
        "lateness_p50_s": p50,
        "lateness_p99_s": p99,
        "lateness_max_s": worst,
        "lateness_min_s": best,
        "early": early,
        "first_sent_after_s": (first_sent - since).total_seconds() if first_sent else None,
        "last_sent_after_s": (last_sent - since).total_seconds() if last_sent else None,
    }


def _each_lateness(env: Env, owner: uuid.UUID, since: datetime) -> list[tuple[float, float]]:
    """(remind time after ``since``, lateness) of each of ``owner``'s sent reminders."""
    with env.connect() as conn:
        rows = conn.execute(
            "SELECT r.remind_at, r.sent_at FROM reminders AS r JOIN tasks AS t "
            "ON t.id = r.task_id WHERE t.owner_id = %s AND r.sent_at IS NOT NULL "
            "ORDER BY r.remind_at",
            (owner,),
        ).fetchall()
    return [
        (round((remind - since).total_seconds(), 3), round((sent - remind).total_seconds(), 3))
        for remind, sent in rows
    ]


def _slow_rate(env: Env, owners: list[uuid.UUID], since: datetime) -> float | None:
    """Reminders of ``owners`` sent per second from 10 s after ``since`` to the last."""
    with env.connect() as conn:
        times = [
            at
            for (at,) in conn.execute(
                "SELECT r.sent_at FROM reminders AS r JOIN tasks AS t ON t.id = r.task_id "
                "WHERE t.owner_id = ANY(%s) AND r.sent_at >= %s ORDER BY r.sent_at",
                (owners, since + timedelta(seconds=10)),
            ).fetchall()
        ]
    if len(times) < 2:
        return None
    return round((len(times) - 1) / (times[-1] - times[0]).total_seconds(), 2)


def _unsent_of(env: Env, owners: list[uuid.UUID]) -> int:
    with env.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM reminders AS r JOIN tasks AS t ON t.id = r.task_id "
            "WHERE t.owner_id = ANY(%s) AND r.state <> 'sent'",
            (owners,),
        ).fetchone()
        return int(row[0]) if row else 0


def _whole_second(lead: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1 + lead)


# -- 1. a slow user's flood against a fast user --------------------------------------------


def bench_isolation(
    env: Env,
    slow_users: int,
    slow_reminders: int,
    fast_reminders: int,
    window: int,
    lead: int,
    *,
    processes: int,
    threads: int,
    lane_window: int = 0,
) -> dict[str, Any]:
    env.reset()
    key = generate_key()
    interval = scan_interval(env.settings)
    # What the slow lane lets through: P x S requests of SLOW_HOLD_SECONDS at a time.
    lane = processes * env.settings.slow_lane_threads
    drain_bound = slow_users * slow_reminders * SLOW_HOLD_SECONDS / lane
    # Three times the bound: a slow lane running below it is a finding, not a timeout.
    timeout = lead + window + 2 * interval + 3 * drain_bound + 60
    with receiver_process(env) as slow_rx, receiver_process(env) as fast_rx:
        fast, _ = make_user(env, "fast")
        fast_endpoint = add_endpoint(env, fast, fast_rx.url("fast"), key)
        slow = []
        for n in range(slow_users):
            owner, _ = make_user(env, f"slow-{n}")
            slow.append(
                (owner, add_endpoint(env, owner, slow_rx.url(f"slow-{n}", SLOW_HOLD_SECONDS), key))
            )
        with worker_group(env, "workers.app", processes, threads, **deployment_env(key)):
            flood_at = _whole_second(lead)
            for owner, endpoint in slow:
                load_reminders(env, owner, [flood_at] * slow_reminders, endpoint)
            fast_times = [
                flood_at + timedelta(seconds=round(n * window / fast_reminders))
                for n in range(fast_reminders)
            ]
            load_reminders(env, fast, fast_times, fast_endpoint)
            loaded = datetime.now(UTC)
            fast_done = slow_done = None
            slow_owners = [owner for owner, _ in slow]
            with ScanLoop(env, interval) as loop:
                deadline = time.monotonic() + (flood_at - loaded).total_seconds() + timeout
                # Requests in flight at the slow receivers, every few seconds of the drain.
                lane_use: list[tuple[float, int]] = []
                while time.monotonic() < deadline and (fast_done is None or slow_done is None):
                    over = time.time() - flood_at.timestamp() > lane_window
                    if lane_window and fast_done and over:
                        break  # the lane's width is read over the window, not the whole drain
                    if fast_done is None and _unsent_of(env, [fast]) == 0:
                        fast_done = datetime.now(UTC)
                    if slow_done is None and (not slow or _unsent_of(env, slow_owners) == 0):
                        slow_done = datetime.now(UTC)
                    since = time.time() - flood_at.timestamp()
                    if slow and since > 0 and (not lane_use or since - lane_use[-1][0] >= 5):
                        in_flight = sum(s["in_flight"] for s in slow_rx.stats().values())
                        lane_use.append((round(since, 1), in_flight))
                    time.sleep(0.5)
        slow_stats = slow_rx.stats()
        fast_stats = fast_rx.stats()
    result: dict[str, Any] = {
        "slow_users": slow_users,
        "slow_reminders_each": slow_reminders,
        "slow_hold_seconds": SLOW_HOLD_SECONDS,
        "fast_reminders": fast_reminders,
        "window_seconds": window,
        "processes": processes,
        "threads": threads,
        "slow_lane_threads": env.settings.slow_lane_threads,
        "first_remind_after_creation_seconds": (flood_at - loaded).total_seconds(),
        "fast": lateness_of(env, [fast], flood_at),
        "fast_each": _each_lateness(env, fast, flood_at),
        "fast_receiver_requests": fast_stats.get("fast", {}).get("requests", 0),
        "fast_all_sent_after_s": (fast_done - flood_at).total_seconds() if fast_done else None,
        "scans": loop.scans,
        "scan_errors": loop.errors,
        "timed_out": fast_done is None or (slow_done is None and not lane_window),
        "lane_window_s": lane_window or None,
    }
    if slow:
        answered = [s["last_at"] for s in slow_stats.values() if s["last_at"]]
        result.update(
            slow=lateness_of(env, slow_owners, flood_at),
            slow_drain_bound_s=drain_bound,
            # The last slow request's answer, SLOW_HOLD_SECONDS after it arrived.
            slow_drain_s=(
                max(answered) + SLOW_HOLD_SECONDS - flood_at.timestamp() if answered else None
            ),
            slow_all_sent_seen_after_s=(
                (slow_done - flood_at).total_seconds() if slow_done else None
            ),
            slow_most_in_flight=max(s["most_in_flight"] for s in slow_stats.values()),
            # After the first few seconds, when every slow receiver is known to be slow.
            slow_lane_threads_total=lane,
            slow_in_flight_mean=(
                statistics.mean(n for at, n in lane_use if at >= 10) if len(lane_use) > 2 else None
            ),
            slow_in_flight_samples=lane_use,
            slow_max_concurrency=DEFAULT_MAX_CONCURRENCY,
            slow_requests=sum(s["requests"] for s in slow_stats.values()),
            # Slow requests answered per second from 10 s after the flood to the end.
            slow_rate_after_10s=_slow_rate(env, slow_owners, flood_at),
            slow_receivers=slow_stats,
        )
    return result


# -- 2. one owner's burst against the others -----------------------------------------------


def bench_burst_fair(
    env: Env,
    big: int,
    others: int,
    each: int,
    lead: int,
    channel: str,
    *,
    processes: int,
    threads: int,
) -> dict[str, Any]:
    """``channel``: ``endpoint`` (every owner's own endpoint, default limits) or
    ``deployment`` (the deployment's webhook, no limits, for every owner)."""
    env.reset()
    key = generate_key()
    interval = scan_interval(env.settings)
    timeout = lead + 2 * interval + (big + others * each) / 200 + 60
    with receiver_process(env) as rx:
        big_owner, _ = make_user(env, "big")
        owners = [make_user(env, f"other-{n}")[0] for n in range(others)]

        def endpoint(owner: uuid.UUID, name: str) -> uuid.UUID | None:
            return add_endpoint(env, owner, rx.url(name), key) if channel == "endpoint" else None

        big_endpoint = endpoint(big_owner, "big")
        other_endpoints = [endpoint(owner, f"other-{n}") for n, owner in enumerate(owners)]
        webhook = rx.url("deployment") if channel == "deployment" else ""
        more_env = deployment_env(key, webhook)
        with worker_group(env, "workers.app", processes, threads, **more_env):
            burst_at = _whole_second(lead)
            load_reminders(env, big_owner, [burst_at] * big, big_endpoint)
            for owner, other_endpoint in zip(owners, other_endpoints, strict=True):
                load_reminders(env, owner, [burst_at] * each, other_endpoint)
            loaded = datetime.now(UTC)
            everyone = [big_owner, *owners]
            with ScanLoop(env, interval) as loop:
                deadline = time.monotonic() + (burst_at - loaded).total_seconds() + timeout
                unsent = len(everyone)
                while time.monotonic() < deadline:
                    unsent = _unsent_of(env, everyone)
                    if unsent == 0:
                        break
                    time.sleep(0.5)
        stats = rx.stats()
    broker = make_broker(env.settings)
    deferred = gate_deferred(broker)
    broker.close()
    return {
        "channel": channel,
        "big": big,
        "others": others,
        "each": each,
        "processes": processes,
        "threads": threads,
        "first_remind_after_creation_seconds": (burst_at - loaded).total_seconds(),
        "others_lateness": lateness_of(env, owners, burst_at),
        "big_lateness": lateness_of(env, [big_owner], burst_at),
        "receiver_requests": sum(s["requests"] for s in stats.values()),
        "gate_deferred": deferred,
        "scans": loop.scans,
        "scan_errors": loop.errors,
        "timed_out": unsent > 0,
    }


# -- 3. one endpoint at its default limit against the unlimited deployment webhook --------


THROUGHPUT_WAYS = {
    # way: the endpoint's max_concurrency (None: the deployment's webhook, no limits)
    "endpoint": DEFAULT_MAX_CONCURRENCY,
    # More than the group's threads: never parked, so the gate's parking is told apart from
    # the rest of an endpoint's delivery (its row, its attempt log).
    "endpoint-64": 64,
    "deployment": None,
}


def bench_endpoint_throughput(
    env: Env, count: int, *, processes: int, threads: int
) -> dict[str, Any]:
    """``count`` due reminders through one endpoint (default limits), through one whose
    limit is above the worker threads, and through the deployment's webhook; each from the
    producer's scan to every row sent."""
    key = generate_key()
    out: dict[str, Any] = {"reminders": count, "processes": processes, "threads": threads}
    with receiver_process(env) as rx:
        for way, limit in THROUGHPUT_WAYS.items():
            out[way] = _throughput(env, rx, key, way, limit, count, processes, threads)
    out["ratio"] = out["endpoint"]["per_second"] / out["deployment"]["per_second"]
    return out


def _throughput(
    env: Env,
    rx: ReceiverProcess,
    key: str,
    way: str,
    limit: int | None,
    count: int,
    processes: int,
    threads: int,
) -> dict[str, Any]:
    env.reset()
    owner, _ = make_user(env)
    url = rx.url(way)
    endpoint = None if limit is None else add_endpoint(env, owner, url, key, limit)
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    load_reminders(env, owner, [due] * count, endpoint)
    broker = make_broker(env.settings)
    more_env = deployment_env(key, url if endpoint is None else "")
    with worker_group(env, "workers.app", processes, threads, **more_env):
        started = time.perf_counter()
        scan_due_tasks(env.sessions, broker, env.settings)
        wait_until(lambda: count_sent(env) >= count, timeout=600, interval=0.2)
        elapsed = time.perf_counter() - started
    deferred = gate_deferred(broker)
    broker.close()
    return {
        "max_concurrency": limit,
        "seconds": elapsed,
        "per_second": count / elapsed,
        "receiver_requests": rx.stats()[way]["requests"],
        "gate_deferred": deferred,
    }


def gate_deferred(broker: Any) -> int:
    """Reminders the gate held back (parked or delayed, each time), over every receiver."""
    gate = Gate(broker.client, broker.namespace, QUEUE_NAME, lease_ms=1)  # reads only
    return sum(state.deferred for state in gate.receivers())
