"""CPU per reminder, by process and by part of the worker (issue 13).

    .venv/bin/python bench/cpu_accounting.py                        # pipeline + no-op ceilings
    .venv/bin/python bench/cpu_accounting.py --pyspy                # + py-spy of one worker
    .venv/bin/python bench/cpu_accounting.py --only pipeline \\
        --variant before=/tmp/h7-base --variant after=. --repeat 3   # paired source trees

Runs N reminders (log channel) through ``reminders worker``'s command (``python -m
cli.launch dramatiq workers.app``, its ``worker_env``: 2 processes of 8 threads by default)
against PostgreSQL and Redis (``REMINDERS_BENCH_DATABASE_URL`` / ``_REDIS_URL``, defaults
as ``bench/run.py``), in a schema and a Redis namespace of its own, and reports the CPU
time each process spent per reminder: the worker group (user and system time, context
switches), the PostgreSQL backends of the workers and of the producer, PostgreSQL's other
processes (WAL writer and the like, shared with anything else on the server), Redis, and
the producer (this process while it scans). A warm-up batch runs first so connections and
prepared statements exist before the measured window.

The no-op ceiling runs the same worker command on a no-op actor on the reminders queue,
with a broker built one of several ways (``--noop``): ``real`` is ``workers.app``'s broker
(the worker's middleware as configured), ``real-<A>+<B>`` the same without middleware
classes A and B, ``defaults`` Dramatiq's default middleware on the same broker class and
``bare`` no middleware at all. Each variant's worker runs from its own source tree
(``--variant name=path``, e.g. a ``git worktree`` of the commit before a change), runs
alternate in each repeat, so before and after are measured side by side on a noisy box.

``--pyspy`` samples one worker process of a pipeline run with ``py-spy --gil --nonblocking``
and splits the GIL-holding time by part (logging, the delivery's statements, the pool,
each middleware, Redis fetch and acknowledgement, Dramatiq's own loop, ...).

When Dramatiq imports this file as the module ``cpu_accounting`` (``REMINDERS_CPU_NOOP``
set), it only declares the no-op actor on the chosen broker.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import psutil
import psycopg
import redis
from dramatiq import Message

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # a worker imports this from its own tree instead

from bench.harness import load_reminders  # noqa: E402
from cli.processes import worker_env  # noqa: E402
from shared.broker.queue import QUEUE_NAME, make_broker  # noqa: E402
from shared.broker.redis_broker import GroupAckRedisBroker, enqueue_batch, queue_depth  # noqa: E402
from shared.config import Settings, load_settings  # noqa: E402
from shared.logs import configure_logging  # noqa: E402
from shared.store.db import make_engine, make_session_factory  # noqa: E402
from shared.store.schema import upgrade  # noqa: E402
from workers.producer import scan_due_tasks  # noqa: E402

PYTHON = sys.executable
PG = os.environ.get("REMINDERS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("REMINDERS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NOOP_ACTOR = "bench_noop"
WARM_UP = 1000
# Set in a worker that loads this file as the no-op app (``dramatiq cpu_accounting``).
NOOP_MODE = os.environ.get("REMINDERS_CPU_NOOP")


def _pg_url(schema: str, application: str) -> str:
    return (f"{PG}?options=-csearch_path%3D{schema}&application_name={application}").replace(
        "postgresql://", "postgresql+psycopg://", 1
    )


class Env:
    """One schema and one Redis namespace for the whole run.

    The workers' connections, the producer's and this script's own carry different
    application names, so each PostgreSQL backend is counted where it belongs.
    """

    def __init__(self, metrics_port: int = 0) -> None:
        tag = uuid.uuid4().hex[:10]
        self.schema, self.namespace = f"cpu_{tag}", f"cpu-{tag}"
        self.worker_app, self.producer_app = f"{self.schema}_w", f"{self.schema}_p"
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')
        self.settings = Settings.model_validate(
            {
                "database_url": _pg_url(self.schema, self.producer_app),
                "redis_url": REDIS,
                "redis_namespace": self.namespace,
                "rate_limit": "",
                "log_level": "WARNING",
                "metrics_port": metrics_port,
            }
        )
        self.engine = make_engine(self.settings.database_url, pool_size=4)
        upgrade(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.broker = make_broker(self.settings)
        self.poll = self.connect()
        self.poll.autocommit = True

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            PG, options=f"-csearch_path={self.schema}", application_name=f"{self.schema}_x"
        )

    def worker_process_env(self, threads: int, mode: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REMINDERS_")}
        env.update(
            DATABASE_URL=_pg_url(self.schema, self.worker_app),
            REDIS_URL=REDIS,
            REMINDERS_REDIS_NAMESPACE=self.namespace,
            REMINDERS_RATE_LIMIT="",
            # INFO, as in production: the log channel's delivery *is* its ``reminder.sent`` line.
            REMINDERS_LOG_LEVEL="INFO",
            PYTHONPATH=str(ROOT / "bench"),  # ``cpu_accounting``, the no-op app
        )
        if self.settings.metrics_port:  # Prometheus middleware and multiprocess files, as deployed
            env["REMINDERS_METRICS_PORT"] = str(self.settings.metrics_port)
        if mode:
            env["REMINDERS_CPU_NOOP"] = mode
        return worker_env(self.settings, env, threads)

    def reset(self) -> None:
        with self.connect() as conn:
            conn.execute("TRUNCATE reminders, tasks, users CASCADE")
        self.flush_redis()

    def flush_redis(self) -> None:
        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=f"{self.namespace}*", count=5000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start : start + 5000])

    def backends(self, application: str) -> list[int]:
        rows = self.poll.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        self.broker.close()
        self.engine.dispose()
        self.poll.close()
        self.flush_redis()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE %s",
                (f"{self.schema}%",),
            )
            conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE')


def load_due_tasks(env: Env, count: int) -> None:
    """``count`` open tasks, each with a reminder due now (waiting), owned by one user.

    The rows are written by the harness's loader (`bench.harness.load_reminders`) on this
    script's own connection, so its backend is not counted as a worker's.
    """
    owner = uuid.uuid4()
    with env.connect() as conn:
        conn.execute(
            "INSERT INTO users (id, name, is_operator, created_at) VALUES (%s, %s, false, now())",
            (owner, owner.hex),
        )
    now = datetime.now(UTC).replace(microsecond=0)
    load_reminders(env, owner, [now - timedelta(minutes=30)] * count)  # due in 30 minutes


def count_sent(env: Env) -> int:
    row = env.poll.execute("SELECT count(*) FROM reminders WHERE state = 'sent'").fetchone()
    return int(row[0]) if row else 0


def noop_messages(count: int) -> list[Message[Any]]:
    return [
        Message(
            queue_name=QUEUE_NAME,
            actor_name=NOOP_ACTOR,
            args=(str(uuid.uuid4()), "x"),
            kwargs={},
            options={},
            message_id=str(uuid.uuid4()),
        )
        for _ in range(count)
    ]


def wait_until(condition: Callable[[], bool], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish in time")
        time.sleep(0.25)


# -- CPU sampling --------------------------------------------------------------------------


def _cpu(pid: int) -> tuple[float, float, int, int]:
    """User and system seconds, voluntary and involuntary context switches of one process.

    Context switches summed over all its threads (psutil gives the main thread's only).
    """
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0, 0.0, 0, 0
    voluntary = involuntary = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    involuntary += int(line.split()[1])
        except OSError:
            continue  # the thread ended
    return times.user, times.system, voluntary, involuntary


def _postgres_others(exclude: set[int]) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        server = proc.info["name"] == "postgres" or cmd.startswith("postgres:")
        if server and proc.pid not in exclude and not _is_client_backend(cmd):
            pids.append(proc.pid)
    return pids


def _is_client_backend(cmd: str) -> bool:
    # Client backends show "postgres: 15/main: <user> <db> <address> <state>"; the
    # server's own processes name their job (checkpointer, walwriter, ...).
    return "127.0.0.1" in cmd or "[local]" in cmd


class Meter:
    """CPU of each group of processes between ``start`` and ``stop``."""

    def __init__(self, env: Env, worker_group: psutil.Process) -> None:
        self.env, self.group = env, worker_group
        self.redis_pid = next(
            (p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"),
            None,
        )

    def groups(self) -> dict[str, list[int]]:
        workers = [c.pid for c in self.group.children(recursive=True)]
        worker_backends = self.env.backends(self.env.worker_app)
        producer_backends = self.env.backends(self.env.producer_app)
        mine = {*worker_backends, *producer_backends}
        return {
            "worker": workers,
            # Dramatiq's main process: relays each line the workers log (a pipe per worker).
            "worker group's parent": [self.group.pid],
            "postgres (workers' backends)": worker_backends,
            "postgres (producer's backends)": producer_backends,
            "postgres (server processes)": _postgres_others(mine),
            "redis": [self.redis_pid] if self.redis_pid else [],
            "producer (this process)": [os.getpid()],
        }

    def read(self) -> dict[str, dict[int, tuple[float, float, int, int]]]:
        return {name: {pid: _cpu(pid) for pid in pids} for name, pids in self.groups().items()}


def cpu_per_item(
    before: dict[str, dict[int, tuple[float, float, int, int]]],
    after: dict[str, dict[int, tuple[float, float, int, int]]],
    items: int,
) -> dict[str, dict[str, float]]:
    """µs of user and system CPU, and context switches, per item, for each group."""
    out: dict[str, dict[str, float]] = {}
    for name, pids in after.items():
        user = system = vol = invol = 0.0
        for pid, (u, s, v, i) in pids.items():
            u0, s0, v0, i0 = before.get(name, {}).get(pid, (0.0, 0.0, 0, 0))
            user, system = user + u - u0, system + s - s0
            vol, invol = vol + v - v0, invol + i - i0
        out[name] = {
            "us": (user + system) / items * 1e6,
            "user_us": user / items * 1e6,
            "system_us": system / items * 1e6,
            "switches": (vol + invol) / items,
        }
    return out


# -- runs ----------------------------------------------------------------------------------


@contextmanager
def worker_group(
    env: Env, root: Path, processes: int, threads: int, mode: str | None
) -> Iterator[psutil.Process]:
    """``reminders worker`` from source tree ``root``: its argv and environment."""
    module = "cpu_accounting" if mode else "workers.app"
    argv = [PYTHON, "-m", "cli.launch", "dramatiq", module]
    argv += ["--processes", str(processes), "--threads", str(threads)]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the group
    proc = subprocess.Popen(
        argv,
        env=env.worker_process_env(threads, mode),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        group = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(group.children()) < processes and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # every worker imports, connects and starts consuming
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"worker group ended: {log.read()[-2000:].decode()}")
        yield group
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.seek(0)
        errors = [line for line in log.read().decode().splitlines() if '"error"' in line]
        if errors:
            print(f"  ({len(errors)} error lines from the workers; first: {errors[0][:300]})")


def run_pipeline(
    env: Env,
    root: Path,
    tasks: int,
    processes: int,
    threads: int,
    pyspy: Path | None = None,
) -> dict[str, Any]:
    env.reset()
    with worker_group(env, root, processes, threads, None) as group:
        load_due_tasks(env, WARM_UP)
        scan_due_tasks(env.sessions, env.broker, env.settings)
        wait_until(lambda: count_sent(env) >= WARM_UP)
        load_due_tasks(env, tasks)
        meter = Meter(env, group)
        spy = _start_pyspy(group, pyspy) if pyspy else None
        before, started = meter.read(), time.perf_counter()
        scan_due_tasks(env.sessions, env.broker, env.settings)
        producer_done = meter.read()["producer (this process)"]
        wait_until(lambda: count_sent(env) >= WARM_UP + tasks)
        elapsed = time.perf_counter() - started
        after = meter.read()
        after["producer (this process)"] = producer_done
        if spy:
            spy.wait()
    return {"per_second": tasks / elapsed, "cpu": cpu_per_item(before, after, tasks)}


def run_noop(
    env: Env, root: Path, mode: str, tasks: int, processes: int, threads: int
) -> dict[str, Any]:
    env.reset()
    with worker_group(env, root, processes, threads, mode) as group:
        enqueue_batch(env.broker, noop_messages(WARM_UP))
        wait_until(lambda: _drained(env))
        messages = noop_messages(tasks)
        meter = Meter(env, group)
        before, started = meter.read(), time.perf_counter()
        for start in range(0, tasks, 1000):
            enqueue_batch(env.broker, messages[start : start + 1000])
        producer_done = meter.read()["producer (this process)"]
        wait_until(lambda: _drained(env))
        elapsed = time.perf_counter() - started
        after = meter.read()
        after["producer (this process)"] = producer_done
    return {"per_second": tasks / elapsed, "cpu": cpu_per_item(before, after, tasks)}


def _drained(env: Env) -> bool:
    depth = queue_depth(env.broker, QUEUE_NAME)
    return depth.ready == 0 and depth.in_flight == 0


# -- py-spy --------------------------------------------------------------------------------

# Each sample goes to the part of its innermost frame that names one; psycopg samples are
# then told apart by the call they are in (BEGIN, the statement, COMMIT).
_PARTS_BY_FRAME: list[tuple[str, tuple[str, ...]]] = [
    ("logging: structlog and the standard library", ("structlog/", "logging/")),
    ("log channel: the event's fields", ("LogChannel.", "_rfc3339")),
    ("Prometheus client", ("prometheus_client/", "dramatiq/middleware/prometheus.py")),
    ("middleware: TimeLimit", ("middleware/time_limit.py",)),
    ("middleware: ShutdownNotifications", ("middleware/shutdown.py",)),
    ("middleware: AgeLimit", ("middleware/age_limit.py",)),
    ("middleware: Callbacks, Pipelines", ("middleware/callbacks.py", "middleware/pipelines.py")),
    ("middleware: Retries", ("middleware/retries.py", "OutageAwareRetries")),
    ("middleware: periodiq", ("periodiq/",)),
    ("middleware: CurrentMessage", ("middleware/current_message.py",)),
    ("middleware: DatabaseGate", ("workers/outage.py",)),
    ("middleware: RecordFailedAttempts", ("RecordFailedAttempts.",)),
    ("middleware: calling the hooks", ("Broker.emit_before", "Broker.emit_after")),
    ("pool checkout and return (SQLAlchemy)", ("sqlalchemy/",)),
    ("psycopg", ("psycopg/",)),
    ("Redis client", ("redis/", "shared/broker/redis_broker.py", "dramatiq/brokers/redis.py")),
    ("JSON decode of messages", ("json/", "dramatiq/encoder.py", "dramatiq/message.py")),
    ("thread hand-offs (queue, locks, conditions)", ("queue.py", "threading.py")),
    ("delivery and actor (our code)", ("workers/", "shared/", "uuid.py", "datetime")),
    ("Dramatiq's worker loop", ("dramatiq/",)),
]


def classify(frames: list[str]) -> str:
    """The part a sample (frames from the thread's root to the leaf) is spent in."""
    part = "other"
    for frame in reversed(frames):
        found = next((n for n, keys in _PARTS_BY_FRAME if any(k in frame for k in keys)), None)
        if found:
            part = found
            break
    stack = ";".join(frames)
    if part == "psycopg":
        if "Connection.commit" in stack:
            return "psycopg: COMMIT"
        if "_start_query" in stack:
            return "psycopg: BEGIN"
        return "psycopg: the statement"
    if part == "Redis client":
        if "ConsumerThread" in stack and "post_process_message" not in stack:
            return "Redis: fetch (consumer thread)"
        return "Redis: acknowledgement"
    return part


def _start_pyspy(group: psutil.Process, out: Path) -> subprocess.Popen[bytes]:
    worker = group.children()[0].pid
    return subprocess.Popen(
        [
            str(Path(PYTHON).parent / "py-spy"),
            "record",
            "--pid",
            str(worker),
            "--gil",
            "--nonblocking",
            "--rate",
            "250",
            "--duration",
            "8",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pyspy_parts(raw: Path) -> tuple[dict[str, float], int]:
    """Share of GIL-holding samples by part, from py-spy's collapsed stacks."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        counts[classify(stack.split(";"))] += int(number)
    total = sum(counts.values()) or 1
    return {part: count / total for part, count in counts.most_common()}, total


def print_parts(raw: Path, worker: dict[str, float]) -> None:
    """The GIL-holding samples by part, scaled to the worker's user CPU per reminder.

    The worker's system time (system calls, futex wake-ups) is outside the samples.
    """
    shares, samples = pyspy_parts(raw)
    print(
        f"\npy-spy --gil of one worker ({samples} samples, {raw}): user CPU "
        f"{worker['user_us']:.0f} µs by part; system {worker['system_us']:.0f} µs apart"
    )
    for part, share in shares.items():
        print(f"  {part:46} {share:6.1%}  ~{share * worker['user_us']:4.0f} µs")


# -- report --------------------------------------------------------------------------------


def _print_cpu(label: str, result: dict[str, Any]) -> None:
    cpu = result["cpu"]
    total = sum(v["us"] for v in cpu.values())
    print(f"\n{label}: {result['per_second']:,.0f}/s, {total:,.0f} µs of CPU per item in all")
    for name, v in cpu.items():
        print(
            f"  {name:32} {v['us']:7.0f} µs  (user {v['user_us']:5.0f}, system "
            f"{v['system_us']:5.0f}; {v['switches']:5.1f} context switches)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", choices=["pipeline", "noop"])
    parser.add_argument(
        "--noop",
        default="real,defaults,bare",
        help="no-op brokers: real, real-<Middleware>+<Middleware>, defaults, bare",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="name=path of a source tree whose worker runs (default: this tree)",
    )
    parser.add_argument("--pyspy", action="store_true")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="run the workers with Prometheus on"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_logging("WARNING")
    variants = [tuple(v.split("=", 1)) for v in args.variant] or [("this tree", str(ROOT))]
    roots = {name: Path(path).resolve() for name, path in variants}

    env = Env(args.metrics_port)
    results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        for repeat in range(args.repeat):
            order = list(roots.items())
            if repeat % 2:
                order.reverse()  # alternate which variant goes first
            if args.only != "noop":
                for name, root in order:
                    result = run_pipeline(env, root, args.tasks, args.processes, args.threads)
                    results[f"pipeline [{name}]"].append(result)
                    _print_cpu(f"pipeline [{name}] #{repeat + 1}", result)
            if args.only != "pipeline":
                for name, root in order:
                    for mode in args.noop.split(","):
                        result = run_noop(env, root, mode, args.tasks, args.processes, args.threads)
                        results[f"no-op {mode} [{name}]"].append(result)
                        _print_cpu(f"no-op {mode} [{name}] #{repeat + 1}", result)
        for name, root in roots.items() if args.pyspy else ():
            raw = Path(tempfile.mkdtemp(prefix="cpu-pyspy-")) / "worker.txt"
            result = run_pipeline(env, root, args.tasks, args.processes, args.threads, raw)
            _print_cpu(f"pipeline under py-spy [{name}]", result)
            print_parts(raw, result["cpu"]["worker"])
    finally:
        env.close()
    print(
        "\nmedians over repeats (µs per item: worker processes / their parent / PostgreSQL /"
        " Redis / producer; rate)"
    )
    for label, runs in results.items():

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(
                sum(v["us"] for k, v in r["cpu"].items() if k.split(" (")[0] == key) for r in runs
            )

        rate = statistics.median(r["per_second"] for r in runs)
        parent = med("worker group's parent")
        print(
            f"  {label:40} {med('worker'):6.0f} / {parent:4.0f}"
            f" / {med('postgres'):5.0f} / {med('redis'):4.0f} / {med('producer'):4.0f}"
            f"   {rate:7,.0f}/s  (n={len(runs)})"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


# -- the no-op app, in a worker ----------------------------------------------------------


def noop_broker(mode: str) -> dramatiq.Broker:
    """The broker of a no-op worker: see the module docstring for ``mode``."""
    if mode.startswith("real"):
        from workers.app import broker

        dropped = set(mode.split("-", 1)[1].split("+")) if "-" in mode else set()
        broker.middleware[:] = [m for m in broker.middleware if type(m).__name__ not in dropped]
        return broker
    from dramatiq.middleware import default_middleware

    settings = load_settings()
    broker = GroupAckRedisBroker(
        url=settings.redis_url,
        namespace=settings.redis_namespace,
        middleware=[kind() for kind in default_middleware] if mode == "defaults" else [],
    )
    dramatiq.set_broker(broker)
    return broker


if NOOP_MODE:
    broker = noop_broker(NOOP_MODE)

    @dramatiq.actor(queue_name=QUEUE_NAME, actor_name=NOOP_ACTOR, broker=broker)
    def noop(task_id: str, due_at: str) -> None:
        """Accept a message shaped like a reminder and do nothing."""


if __name__ == "__main__":
    main()
