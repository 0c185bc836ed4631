"""Benchmarks on real PostgreSQL and Redis: anchors, lateness, end to end, producer, API.

    .venv/bin/python bench/run.py                       # everything, defaults below
    .venv/bin/python bench/run.py --only steady,burst   # lateness (anchors come along)
    .venv/bin/python bench/run.py --only e2e --tasks 20000

Parts (``--only``, comma-separated): ``anchors`` (the single loop, the no-op ceiling plain
and with the real worker's middleware, pgbench's one-insert rate with 1 and 8 clients),
``steady`` and ``burst`` (lateness, ``bench.lateness``), ``e2e`` (pipeline with 1 and 2
worker processes, worker memory), ``producer``, ``recurring`` (100,000 series: the first
fill of their horizon, a steady scan, end to end; ``bench.recurring``), ``api``, and
isolation between users (``bench.isolation``): ``isolation`` (a fast user against 0, 1 and
10 slow users' floods), ``burst-fair`` (one owner's 10,000 reminders and ten others' due at
the same second), ``endpoint-throughput`` (one endpoint at the default limit against the
deployment's webhook). The
anchors are measured in every run that measures anything else too (``--no-anchors`` to
skip), so each figure comes with the machine it came from and yardsticks from the same run.

Each run uses its own PostgreSQL schema and Redis key namespace and removes them after.
Results are printed as a table and written to bench/results/latest.json. Timing is
measured here, never asserted in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.anchors import bench_anchors, bench_noop_ceiling  # noqa: E402
from bench.harness import (  # noqa: E402
    BIN,
    Env,
    PeakRss,
    count_sent,
    free_port,
    load_tasks,
    machine,
    make_user,
    wait_until,
    worker_group,
)
from bench.isolation import (  # noqa: E402
    bench_burst_fair,
    bench_endpoint_throughput,
    bench_isolation,
)
from bench.lateness import bench_burst, bench_steady  # noqa: E402
from bench.recurring import bench_recurring  # noqa: E402
from cli.processes import web_argv  # noqa: E402
from shared.broker.queue import QUEUE_NAME, make_broker  # noqa: E402
from shared.broker.redis_broker import queue_depth  # noqa: E402
from workers.producer import scan_due_tasks  # noqa: E402

PARTS = (
    "anchors",
    "steady",
    "burst",
    "e2e",
    "producer",
    "recurring",
    "api",
    "isolation",
    "burst-fair",
    "endpoint-throughput",
)


# -- 1. end to end -------------------------------------------------------------------------


def bench_pipeline(env: Env, tasks: int, processes: int, threads: int) -> dict[str, float]:
    env.reset()
    owner, _ = make_user(env)
    load_tasks(env, owner, tasks, tasks)
    broker = make_broker(env.settings)
    with worker_group(env, "workers.app", processes, threads) as group, PeakRss(group) as rss:
        started = time.perf_counter()
        scan_due_tasks(env.sessions, broker, env.settings)
        wait_until(lambda: count_sent(env) >= tasks, timeout=1800, interval=0.2)
        elapsed = time.perf_counter() - started
    broker.close()
    return {"seconds": elapsed, "per_second": tasks / elapsed, "peak_rss_mb": rss.peak / 2**20}


# -- 2. producer ---------------------------------------------------------------------------


CLAIM_SQL = (
    "SELECT * FROM reminders WHERE state = 'waiting' AND remind_at <= now() "
    "ORDER BY remind_at LIMIT 1000 FOR UPDATE SKIP LOCKED"
)


def bench_producer(env: Env, total: int, due: int) -> dict[str, Any]:
    env.reset()
    owner, _ = make_user(env)
    started = time.perf_counter()
    load_tasks(env, owner, total, due)
    load_seconds = time.perf_counter() - started
    with env.connect() as conn:
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + CLAIM_SQL))
    broker = make_broker(env.settings)
    started = time.perf_counter()
    result = scan_due_tasks(env.sessions, broker, env.settings)
    elapsed = time.perf_counter() - started
    depth = queue_depth(broker, QUEUE_NAME)
    broker.close()
    return {
        "tasks": total,
        "due": due,
        "enqueued": result.enqueued,
        "queue_ready": depth.ready,
        "seconds": elapsed,
        "per_second": result.enqueued / elapsed,
        "load_seconds": load_seconds,
        "plan": plan,
        "uses_index": "ix_reminders_waiting_remind_at" in plan,
    }


# -- 3. API --------------------------------------------------------------------------------


WRK_POST = """
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"title": "bench %d", "due_at": "2031-01-01T00:%02d:%02dZ"}',
                             counter, math.floor(counter / 60) % 60, counter % 60)
  return wrk.format("POST", "/tasks", {["Content-Type"] = "application/json",
                    ["Authorization"] = "Bearer TOKEN"}, body)
end
"""


def parse_wrk(text: str) -> dict[str, float]:
    def ms(value: str) -> float:
        number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = int(non2xx.group(1)) if non2xx else 0
    return {"per_second": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}


def bench_api(env: Env, seconds: int, web_workers: int) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise SystemExit("the API benchmark needs wrk: apt-get install wrk")
    env.reset()
    _, token = make_user(env)
    port = free_port()
    # The Procfile's web process (``reminders web``), on a port of its own.
    argv = [str(BIN / "gunicorn"), *web_argv(f"127.0.0.1:{port}", web_workers)[1:]]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        argv,
        env=env.process_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    results: dict[str, Any] = {"web_workers": web_workers, "connections": 16}
    try:
        import httpx

        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=30, interval=0.2)
        script = Path(tempfile.mkdtemp()) / "post.lua"
        script.write_text(WRK_POST.replace("TOKEN", token))
        base = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency"]
        post = subprocess.run(
            [*base, "-s", str(script), f"http://127.0.0.1:{port}/tasks"],
            capture_output=True,
            text=True,
            check=True,
        )
        results["post"] = parse_wrk(post.stdout)
        get = subprocess.run(
            [
                *base,
                "-H",
                f"Authorization: Bearer {token}",
                f"http://127.0.0.1:{port}/tasks?limit=50",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results["get"] = parse_wrk(get.stdout)
        check = httpx.get(
            f"http://127.0.0.1:{port}/tasks?limit=1", headers={"Authorization": f"Bearer {token}"}
        )
        results["list_status"] = check.status_code
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    return results


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- report --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts: {', '.join(PARTS)} (memory is measured in e2e)",
    )
    parser.add_argument(
        "--no-anchors",
        action="store_true",
        help="do not add the anchors to a run of other parts",
    )
    parser.add_argument(
        "--tasks", type=int, default=50_000, help="tasks for e2e, the single loop, the ceiling"
    )
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument(
        "--ceiling-messages", type=int, default=100_000, help="messages for the no-op ceilings"
    )
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument(
        "--scheduler",
        choices=("loop", "periodiq"),
        default="loop",
        help="steady/burst: call the producer every scan interval from here (loop), or run "
        "the real scheduler (periodiq) and wait for the wall clock's ticks",
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="worker processes for steady/burst"
    )
    parser.add_argument("--steady-rate", type=int, default=100, help="reminders per second")
    parser.add_argument("--steady-spread", type=int, default=120, help="seconds of remind times")
    parser.add_argument(
        "--steady-lead", type=int, default=12, help="seconds from creation to the first"
    )
    parser.add_argument("--burst-count", type=int, default=20_000)
    parser.add_argument("--burst-lead", type=int, default=15, help="seconds from creation")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of steady, burst, isolation, burst-fair and endpoint-throughput",
    )
    parser.add_argument("--producer-total", type=int, default=1_000_000)
    parser.add_argument("--recurring-tasks", type=int, default=100_000)
    parser.add_argument("--recurring-e2e", type=int, default=20_000)
    parser.add_argument("--producer-due", type=int, default=100_000)
    parser.add_argument("--api-seconds", type=int, default=10)
    parser.add_argument(
        "--isolation-slow-users",
        default="0,1,10",
        help="isolation: slow users flooding, one scenario each (0: the fast user alone)",
    )
    parser.add_argument("--isolation-slow-reminders", type=int, default=200, help="per slow user")
    parser.add_argument("--isolation-fast-reminders", type=int, default=20)
    parser.add_argument(
        "--isolation-window",
        type=int,
        default=60,
        help="seconds over which the fast user's reminders fall, from the flood's on",
    )
    parser.add_argument(
        "--isolation-lead", type=int, default=10, help="seconds from creation to the flood"
    )
    parser.add_argument(
        "--isolation-lane-window",
        type=int,
        default=0,
        help="isolation: stop this many seconds after the flood once the fast user is done, "
        "instead of waiting for the slow users' whole drain (0: wait for it); the slow lane's "
        "width and rate are then read over the window",
    )
    parser.add_argument("--fair-big", type=int, default=10_000, help="the big owner's reminders")
    parser.add_argument("--fair-others", type=int, default=10, help="other owners")
    parser.add_argument("--fair-each", type=int, default=10, help="reminders per other owner")
    parser.add_argument("--fair-lead", type=int, default=15, help="seconds from creation")
    parser.add_argument(
        "--fair-channels",
        default="endpoint,deployment",
        help="burst-fair: the owners' endpoints (default limits) and/or the deployment webhook",
    )
    parser.add_argument(
        "--throughput-reminders", type=int, default=5_000, help="endpoint-throughput, each way"
    )
    parser.add_argument("--web-workers", type=int, default=2)
    args = parser.parse_args()
    parts = {part.strip() for part in args.only.split(",") if part.strip()}
    if unknown := parts - set(PARTS):
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    if not args.no_anchors:
        parts.add("anchors")
    env = Env()
    report: dict[str, Any] = {"machine": machine(), "settings": vars(args)}
    lateness = {"mode": args.scheduler, "processes": args.processes, "threads": args.threads}
    try:
        if "anchors" in parts:
            report["anchors"] = bench_anchors(
                env, args.tasks, args.ceiling_messages, args.threads, args.pgbench_seconds
            )
        if "e2e" in parts:
            n, t = args.tasks, args.threads
            for p in (1, 2):
                report[f"pipeline_{p}p"] = bench_pipeline(env, n, p, t)
            for variant in ("plain", "real"):
                report[f"noop_{variant}_1p"] = bench_noop_ceiling(
                    env, args.ceiling_messages, 1, t, variant
                )
        for _ in range(args.repeat):
            if "steady" in parts:
                report.setdefault("steady", []).append(
                    bench_steady(
                        env, args.steady_rate, args.steady_spread, args.steady_lead, **lateness
                    )
                )
            if "burst" in parts:
                report.setdefault("burst", []).append(
                    bench_burst(env, args.burst_count, args.burst_lead, **lateness)
                )
        isolation = {"processes": args.processes, "threads": args.threads}
        for _ in range(args.repeat):
            if "isolation" in parts:
                for slow_users in (int(n) for n in args.isolation_slow_users.split(",")):
                    report.setdefault("isolation", []).append(
                        bench_isolation(
                            env,
                            slow_users,
                            args.isolation_slow_reminders,
                            args.isolation_fast_reminders,
                            args.isolation_window,
                            args.isolation_lead,
                            lane_window=args.isolation_lane_window,
                            **isolation,
                        )
                    )
            if "burst-fair" in parts:
                for channel in (c.strip() for c in args.fair_channels.split(",")):
                    report.setdefault("burst_fair", []).append(
                        bench_burst_fair(
                            env,
                            args.fair_big,
                            args.fair_others,
                            args.fair_each,
                            args.fair_lead,
                            channel,
                            **isolation,
                        )
                    )
            if "endpoint-throughput" in parts:
                report.setdefault("endpoint_throughput", []).append(
                    bench_endpoint_throughput(env, args.throughput_reminders, **isolation)
                )
        if "producer" in parts:
            report["producer"] = bench_producer(env, args.producer_total, args.producer_due)
        if "recurring" in parts:
            report["recurring"] = bench_recurring(
                env, args.recurring_tasks, args.recurring_e2e, args.threads
            )
        if "api" in parts:
            report["api"] = bench_api(env, args.api_seconds, args.web_workers)
    finally:
        env.close()
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out = ROOT / "bench" / "results"
        out.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for name in ("latest.json", f"run-{stamp}.json"):
            (out / name).write_text(json.dumps(report, indent=2, default=str))
    print_report(report)


def _s(seconds: float | None) -> str:
    return "n/a (none sent)" if seconds is None else f"{seconds:.2f} s"


def _spread(values: list[float], unit: str = " s", digits: int = 2) -> str:
    """One figure, or min / median / max over repeats."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}{unit}"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f}{unit} (min {low:.{digits}f}, max {high:.{digits}f})"


def _lateness(group: dict[str, Any]) -> str:
    return (
        f"p50 {_s(group['lateness_p50_s'])}, p99 {_s(group['lateness_p99_s'])}, "
        f"max {_s(group['lateness_max_s'])}"
    )


def _mean(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _met(value: float | None, bound: float) -> str:
    return "n/a" if value is None else ("met" if value <= bound else "MISSED")


def isolation_rows(report: dict[str, Any], seed: float | None) -> list[tuple[str, str]]:
    """The isolation scenarios' lines of the table."""
    rows: list[tuple[str, str]] = []
    for run in report.get("isolation", []):
        fast, n = run["fast"], run["slow_users"]
        late = sum(1 for _, lateness in run["fast_each"] if lateness > 1.0)
        rows.append(
            (
                f"isolation, {n} slow user(s): fast user",
                f"{fast['sent']}/{fast['reminders']} sent, lateness {_lateness(fast)} "
                f"(p99 <= 1 s: {_met(fast['lateness_p99_s'], 1.0)}), over 1 s: {late}, "
                f"early {fast['early']}",
            )
        )
        if n:
            slow = run["slow"]
            rows.append(
                (
                    f"isolation, {n} slow user(s): slow users",
                    f"{slow['sent']}/{slow['reminders']} sent, drain "
                    f"{_s(run['slow_drain_s'])} (slow lane's bound {run['slow_drain_bound_s']:.0f}"
                    f" s; in flight {_mean(run.get('slow_in_flight_mean'))} on average of its "
                    f"{run.get('slow_lane_threads_total', '?')}), most in flight at a receiver "
                    f"{run['slow_most_in_flight']} (<= {run['slow_max_concurrency']}), "
                    f"requests {run['slow_requests']}",
                )
            )
    for run in report.get("burst_fair", []):
        others, big = run["others_lateness"], run["big_lateness"]
        label = f"burst-fair ({run['channel']}): "
        rows.append(
            (
                label + f"{run['others']}x{run['each']} others",
                f"{others['sent']}/{others['reminders']} sent, lateness {_lateness(others)} "
                f"(p99 <= 1 s: {_met(others['lateness_p99_s'], 1.0)})",
            )
        )
        last = big["last_sent_after_s"]
        rate = f" ({big['sent'] / last:,.0f}/s)" if last else ""
        rows.append(
            (
                label + f"big owner's {run['big']:,}",
                f"{big['sent']}/{big['reminders']} sent, first {_s(big['first_sent_after_s'])}, "
                f"last {_s(last)} after the remind time{rate}; held back by the gate "
                f"{run['gate_deferred']:,} times",
            )
        )
    for run in report.get("endpoint_throughput", []):
        for way in ("endpoint", "endpoint-64", "deployment"):
            rate, limit = run[way]["per_second"], run[way]["max_concurrency"]
            ratio = f"; {rate / seed:.2f}x single loop" if seed else ""
            name = "deployment webhook" if limit is None else f"endpoint, max_concurrency {limit}"
            rows.append(
                (
                    f"throughput {run['reminders']:,}: {name}",
                    f"{rate:,.0f} reminders/s{ratio}; held back by the gate "
                    f"{run[way]['gate_deferred']:,} times",
                )
            )
        rows.append(
            (
                "throughput: endpoint / webhook",
                f"{run['ratio']:.0%} (>= 90%: {'met' if run['ratio'] >= 0.9 else 'MISSED'})",
            )
        )
    return rows


def print_report(report: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    box = report["machine"]
    anchors = report.get("anchors", {})
    seed = anchors.get("seed_loop", {}).get("per_second")
    ceiling_real = anchors.get("noop_real_2p", {}).get("per_second")
    ceiling_plain = anchors.get("noop_plain_2p", {}).get("per_second")
    if anchors:
        rows.append(("single loop (1 process)", f"{seed:,.0f} reminders/s"))
        rows.append(
            (
                "no-op ceiling, 2 processes",
                f"real middleware {ceiling_real:,.0f}/s, plain {ceiling_plain:,.0f}/s "
                f"(real = {ceiling_real / ceiling_plain:.0%} of plain)",
            )
        )
        for clients in (1, 8):
            pg = anchors[f"pgbench_{clients}c"]
            rows.append(
                (
                    f"pgbench one-insert, {clients} client(s)",
                    f"{pg['per_second']:,.0f} tx/s, latency {pg['latency_ms']:.2f} ms",
                )
            )
    for p in (1, 2):
        pipe = report.get(f"pipeline_{p}p")
        if pipe is None:
            continue
        rate = pipe["per_second"]
        ratios = []
        if seed:
            ratios.append(f"{rate / seed:.2f}x single loop")
        if p == 2 and ceiling_real and ceiling_plain:
            ratios.append(
                f"{rate / ceiling_real:.0%} of real-middleware ceiling, "
                f"{rate / ceiling_plain:.0%} of plain"
            )
        rows.append(
            (f"pipeline, {p} worker process(es)", f"{rate:,.0f} reminders/s; " + "; ".join(ratios))
        )
        rows.append((f"worker peak RSS, {p} process(es)", f"{pipe['peak_rss_mb']:.0f} MB"))
    for variant in ("plain", "real"):
        if f"noop_{variant}_1p" in report:
            rate = report[f"noop_{variant}_1p"]["per_second"]
            rows.append((f"no-op ceiling ({variant}), 1 process", f"{rate:,.0f} messages/s"))
    for run in report.get("steady", []):
        rows.append(
            (
                f"steady {run['reminders']:,} ({run['scheduler']})",
                f"lateness p50 {_s(run['lateness_p50_s'])}, p99 {_s(run['lateness_p99_s'])}, "
                f"max {_s(run['lateness_max_s'])}, early {run['early']}, "
                f"not sent {run['not_sent'] or 0}",
            )
        )
    if len(report.get("steady", [])) > 1:
        runs = report["steady"]
        for key in ("lateness_p50_s", "lateness_p99_s", "lateness_max_s"):
            values = [r[key] for r in runs if r[key] is not None]
            if values:
                rows.append((f"steady {key[9:12]} over runs", _spread(values)))
    e2e = report.get("pipeline_2p", {}).get("per_second")
    for run in report.get("burst", []):
        target = f"; target last <= {run['reminders'] / e2e + 2:.1f} s" if e2e else ""
        rows.append(
            (
                f"burst {run['reminders']:,} ({run['scheduler']})",
                f"first {_s(run.get('first_sent_after_remind_s'))}, "
                f"last {_s(run.get('last_sent_after_remind_s'))} after the "
                f"remind time ({run.get('send_rate_per_s', 0):,.0f}/s), early {run['early']}, "
                f"not sent {run['not_sent'] or 0}{target}",
            )
        )
    if len(report.get("burst", [])) > 1:
        runs = report["burst"]
        for key in ("first_sent_after_remind_s", "last_sent_after_remind_s"):
            values = [r[key] for r in runs if key in r]
            if values:
                rows.append((f"burst {key.split('_')[0]} over runs", _spread(values)))
    rows.extend(isolation_rows(report, seed))
    if "producer" in report:
        prod = report["producer"]
        rows.append(
            (
                f"producer: {prod['due']:,} due of {prod['tasks']:,}",
                f"{prod['seconds']:.2f} s = {prod['per_second']:,.0f} enqueued/s; "
                f"index scan: {'yes' if prod['uses_index'] else 'NO'}",
            )
        )
    if "recurring" in report:
        rec = report["recurring"]
        rows.append(
            (
                f"recurring: first fill of {rec['tasks']:,} series",
                f"{rec['first_fill_seconds']:.1f} s = {rec['first_fill_tasks_per_second']:,.0f} "
                f"series/s, {rec['rows']:,} rows ({rec['rows_per_task']:.1f} per series)",
            )
        )
        rows.append(
            (
                f"recurring: steady scan ({rec['steady_tasks_per_scan']:,} extended)",
                f"{_spread(rec['steady_scan_seconds'])}; "
                f"idle scan {rec['idle_scan_seconds']:.3f} s",
            )
        )
        e2e = rec["e2e"]
        ratio = f"; {e2e['per_second'] / seed:.2f}x single loop" if seed else ""
        rows.append(
            (
                "recurring: end to end, 2 processes",
                f"{e2e['per_second']:,.0f} reminders/s{ratio}",
            )
        )
    if "api" in report:
        api = report["api"]
        for name in ("post", "get"):
            r = api[name]
            label = "POST /tasks" if name == "post" else "GET /tasks?limit=50"
            rows.append(
                (
                    f"API {label} (16 clients)",
                    f"{r['per_second']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms, "
                    f"p99 {r['p99_ms']:.1f} ms, non-2xx {r['errors']}",
                )
            )
    print(
        f"\nmachine: {box['host']}, {box['cpus']} CPUs ({box['cpu_model']}, "
        f"{box['virtualisation']}), {box['memory_gb']} GiB, PostgreSQL {box['postgresql']} "
        f"(synchronous_commit {box['synchronous_commit']}), Redis {box['redis']}, "
        f"Python {box['python']}, {box['when']}, load {box['load_average_at_start']} -> "
        f"{box.get('load_average_at_end')}"
    )
    width = max(len(name) for name, _ in rows) if rows else 0
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    if "producer" in report:
        print("\nclaim query plan:\n" + report["producer"]["plan"])


if __name__ == "__main__":
    main()
