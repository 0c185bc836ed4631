"""Benchmarks on real PostgreSQL and Redis: end to end, producer, API, worker memory.

    .venv/bin/python bench/run.py                 # everything, defaults below
    .venv/bin/python bench/run.py --only e2e --tasks 20000

Each run uses its own PostgreSQL schema and Redis key namespace and removes them after.
Results are printed as a table and written to bench/results/latest.json. Timing is
measured here, never asserted in the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
from dramatiq import Message

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.noop_app import NOOP_QUEUE  # noqa: E402
from cli.processes import web_argv, worker_env  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db import make_engine, make_session_factory  # noqa: E402
from shared.keys import hash_token, message_id, new_token  # noqa: E402
from shared.queue import QUEUE_NAME, make_broker  # noqa: E402
from shared.redis_broker import queue_depth  # noqa: E402
from shared.schema import upgrade  # noqa: E402
from workers.producer import scan_due_tasks  # noqa: E402

BIN = Path(sys.executable).parent
PG = os.environ.get("REMINDERS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("REMINDERS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# -- environment ---------------------------------------------------------------------------


class Env:
    """One schema and one Redis namespace for the whole run."""

    def __init__(self) -> None:
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        self.namespace = f"bench-{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        self.url = (
            f"{PG}?options=-csearch_path%3D{self.schema}&application_name={self.schema}"
        ).replace("postgresql://", "postgresql+psycopg://", 1)
        self.settings = Settings.model_validate(
            {
                "database_url": self.url,
                "redis_url": REDIS,
                "redis_namespace": self.namespace,
                "rate_limit": "",
                "log_level": "WARNING",
            }
        )
        self.engine = make_engine(self.url, pool_size=4)
        upgrade(self.engine)
        self.sessions = make_session_factory(self.engine)

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(PG, options=f"-csearch_path={self.schema}")

    def process_env(self, **more: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMINDERS_")}
        env.update(
            DATABASE_URL=self.url,
            REDIS_URL=REDIS,
            REMINDERS_REDIS_NAMESPACE=self.namespace,
            REMINDERS_RATE_LIMIT="",
            REMINDERS_LOG_LEVEL="WARNING",
        )
        env.update(more)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def reset(self) -> None:
        """Empty every table and the namespace between measurements."""
        with self.connect() as conn:
            conn.execute(
                "TRUNCATE reminders, tasks, api_tokens, idempotency_keys, operator_actions, "
                "users CASCADE"
            )
        self.flush_redis()

    def flush_redis(self) -> None:
        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=f"{self.namespace}*", count=5000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start : start + 5000])

    def close(self) -> None:
        self.engine.dispose()
        self.flush_redis()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (self.schema,),
            )
            conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE')


def make_user(env: Env, name: str = "bench") -> tuple[uuid.UUID, str]:
    user_id, token = uuid.uuid4(), new_token()
    with env.connect() as conn:
        conn.execute(
            "INSERT INTO users (id, name, is_operator, created_at) VALUES (%s, %s, false, now())",
            (user_id, name),
        )
        conn.execute(
            "INSERT INTO api_tokens (id, user_id, token_hash, created_at) "
            "VALUES (%s, %s, %s, now())",
            (uuid.uuid4(), user_id, hash_token(token)),
        )
    return user_id, token


def load_tasks(env: Env, owner: uuid.UUID, total: int, due: int) -> None:
    """COPY ``total`` tasks with their waiting reminder rows; ``due`` of them are due now."""
    now = datetime.now(UTC).replace(microsecond=0)
    tasks, reminders = io.StringIO(), io.StringIO()
    for n in range(total):
        task_id = uuid.uuid4()
        # Due tasks: reminded an hour before a due time 30 min ahead. Others: next year.
        due_at = now + timedelta(minutes=30) if n < due else now + timedelta(days=365, seconds=n)
        remind_at = due_at - timedelta(hours=1)
        stamp, remind, created = due_at.isoformat(), remind_at.isoformat(), now.isoformat()
        tasks.write(f"{task_id}\t{owner}\tbench task\t{stamp}\t3600\topen\t{created}\t{created}\n")
        key = message_id(task_id, due_at)
        reminders.write(
            f"{key}\t{task_id}\t{stamp}\t{remind}\twaiting\t0\tf\t{created}\t{created}\n"
        )
    with env.connect() as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY tasks (id, owner_id, title, due_at, remind_before_seconds, status, "
            "created_at, updated_at) FROM STDIN"
        ) as copy:
            copy.write(tasks.getvalue())
        with cur.copy(
            "COPY reminders (message_id, task_id, due_at, remind_at, state, attempts, late, "
            "created_at, updated_at) FROM STDIN"
        ) as copy:
            copy.write(reminders.getvalue())
        conn.commit()
        cur.execute("ANALYZE tasks")
        cur.execute("ANALYZE reminders")
        conn.commit()


def count_sent(env: Env) -> int:
    with env.connect() as conn:
        row = conn.execute("SELECT count(*) FROM reminders WHERE state = 'sent'").fetchone()
        return int(row[0]) if row else 0


# -- process helpers -----------------------------------------------------------------------


@contextmanager
def worker_group(env: Env, module: str, processes: int, threads: int) -> Iterator[psutil.Process]:
    """A worker group as ``reminders worker`` runs it (same prefetch), loading ``module``."""
    argv = [str(BIN / "dramatiq"), module, "--processes", str(processes), "--threads", str(threads)]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the group
    # INFO, as in production: the log channel's delivery *is* its ``reminder.sent`` line.
    group_env = worker_env(env.settings, env.process_env(REMINDERS_LOG_LEVEL="INFO"), threads)
    proc = subprocess.Popen(
        argv, env=group_env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True
    )
    try:
        group = psutil.Process(proc.pid)
        deadline = time.monotonic() + 30
        while len(group.children()) < processes and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # let every worker import, connect and start consuming
        yield group
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class PeakRss:
    """Samples the RSS of every worker process of a group while running."""

    def __init__(self, group: psutil.Process) -> None:
        self.group, self.peak, self._stop = group, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                for child in self.group.children():
                    self.peak = max(self.peak, child.memory_info().rss)
            except psutil.Error:
                pass

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(interval)


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


def bench_noop_ceiling(env: Env, tasks: int, processes: int, threads: int) -> dict[str, float]:
    env.reset()
    broker = make_broker(env.settings)
    messages = [
        Message(
            queue_name=NOOP_QUEUE,
            actor_name="noop",
            args=(str(uuid.uuid4()), "x"),
            kwargs={},
            options={},
            message_id=str(uuid.uuid4()),
        )
        for _ in range(tasks)
    ]
    with worker_group(env, "bench.noop_app", processes, threads):
        started = time.perf_counter()
        for message in messages:
            broker.enqueue(message)

        def drained() -> bool:
            depth = queue_depth(broker, NOOP_QUEUE)
            return depth.ready == 0 and depth.in_flight == 0

        wait_until(drained, timeout=1800, interval=0.1)
        elapsed = time.perf_counter() - started
    broker.close()
    return {"seconds": elapsed, "per_second": tasks / elapsed}


def bench_seed_loop(env: Env, tasks: int) -> dict[str, float]:
    """The seeds' design: one process, one loop, one transaction per task."""
    with env.connect() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS seed_tasks (id uuid PRIMARY KEY, title text, "
            "due_at timestamptz, reminder_sent_at timestamptz)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS seed_reminder_log (task_id uuid, sent_at timestamptz)"
        )
        conn.execute("TRUNCATE seed_tasks, seed_reminder_log")
        with conn.cursor().copy("COPY seed_tasks (id, title, due_at) FROM STDIN") as copy:
            due = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
            for _ in range(tasks):
                copy.write_row((uuid.uuid4(), "bench task", due))
        conn.commit()
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM seed_tasks WHERE due_at < now() + interval '24 hours'"
            )
        ]
        conn.commit()
        started = time.perf_counter()
        for task_id in ids:
            claimed = conn.execute(
                "UPDATE seed_tasks SET reminder_sent_at = now() WHERE id = %s AND "
                "(reminder_sent_at IS NULL OR reminder_sent_at < now() - interval '24 hours') "
                "RETURNING id",
                (task_id,),
            ).fetchone()
            if claimed:
                conn.execute(
                    "INSERT INTO seed_reminder_log (task_id, sent_at) VALUES (%s, now())",
                    (task_id,),
                )
            conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute("DROP TABLE seed_tasks, seed_reminder_log")
        conn.commit()
    return {"seconds": elapsed, "per_second": tasks / elapsed}


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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- report --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only",
        default="e2e,producer,api",
        help="comma-separated: e2e, producer, api (memory is measured in e2e)",
    )
    parser.add_argument("--tasks", type=int, default=50_000, help="due tasks for the e2e run")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--producer-total", type=int, default=1_000_000)
    parser.add_argument("--producer-due", type=int, default=100_000)
    parser.add_argument("--api-seconds", type=int, default=10)
    parser.add_argument("--web-workers", type=int, default=2)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    env = Env()
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(),
            "when": datetime.now(UTC).isoformat(),
        },
        "settings": vars(args),
    }
    try:
        if "e2e" in parts:
            n, t = args.tasks, args.threads
            report["seed_loop"] = bench_seed_loop(env, n)
            for p in (1, 2):
                report[f"pipeline_{p}p"] = bench_pipeline(env, n, p, t)
                report[f"noop_{p}p"] = bench_noop_ceiling(env, n, p, t)
        if "producer" in parts:
            report["producer"] = bench_producer(env, args.producer_total, args.producer_due)
        if "api" in parts:
            report["api"] = bench_api(env, args.api_seconds, args.web_workers)
    finally:
        env.close()
    print_report(report)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(report, indent=2, default=str))


def print_report(report: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    if "seed_loop" in report:
        seed = report["seed_loop"]["per_second"]
        rows.append(("seeds' loop (1 process)", f"{seed:,.0f} reminders/s"))
        for p in (1, 2):
            pipe, noop = report[f"pipeline_{p}p"], report[f"noop_{p}p"]
            rate, ceiling = pipe["per_second"], noop["per_second"]
            rows.append(
                (
                    f"pipeline, {p} worker process(es)",
                    f"{rate:,.0f} reminders/s  = {rate / seed:.2f}x seeds, "
                    f"{rate / ceiling:.0%} of no-op ceiling",
                )
            )
            rows.append((f"no-op Dramatiq ceiling, {p} process(es)", f"{ceiling:,.0f} messages/s"))
            rows.append((f"worker peak RSS, {p} process(es)", f"{pipe['peak_rss_mb']:.0f} MB"))
    if "producer" in report:
        prod = report["producer"]
        rows.append(
            (
                f"producer: {prod['due']:,} due of {prod['tasks']:,}",
                f"{prod['seconds']:.2f} s = {prod['per_second']:,.0f} enqueued/s; "
                f"index scan: {'yes' if prod['uses_index'] else 'NO'}",
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
    width = max(len(name) for name, _ in rows) if rows else 0
    print()
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    if "producer" in report:
        print("\nclaim query plan:\n" + report["producer"]["plan"])


if __name__ == "__main__":
    main()
