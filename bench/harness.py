"""What every benchmark shares: its own schema and Redis namespace, data loading, processes.

A run works in one PostgreSQL schema and one Redis key namespace of its own (`Env`) and
removes both at the end. Worker groups are started with the Procfile's worker command
(``python -m cli.launch dramatiq workers.app …``, what ``reminders worker`` execs) and the
environment ``reminders worker`` gives them (`cli.processes.worker_env`), loading either the
real ``workers.app`` or one of the no-op variants in this package.
"""

from __future__ import annotations

import io
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli.processes import scheduler_env, worker_argv, worker_env  # noqa: E402
from shared.config import Settings, load_settings  # noqa: E402
from shared.delivery.endpoints import DEFAULT_MAX_CONCURRENCY  # noqa: E402
from shared.delivery.secret_box import SecretBox  # noqa: E402
from shared.delivery.signing import new_endpoint_secret  # noqa: E402
from shared.planning.keys import hash_token, message_id, new_token  # noqa: E402
from shared.store.db import make_engine, make_session_factory  # noqa: E402
from shared.store.schema import upgrade  # noqa: E402

BIN = Path(sys.executable).parent
PG = os.environ.get("REMINDERS_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("REMINDERS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


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
            # The tree this harness sits in, whatever is installed in the virtualenv.
            PYTHONPATH=str(ROOT),
        )
        env.update(more)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def reset(self) -> None:
        """Empty every table and the namespace between measurements."""
        with self.connect() as conn:
            conn.execute(
                "TRUNCATE reminders, tasks, api_tokens, idempotency_keys, operator_actions, "
                "secret_key_canary, "
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


def machine() -> dict[str, Any]:
    """Where the figures came from: every figure of a run is reported with this."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    virt = ""
    with suppress(OSError, subprocess.SubprocessError):
        virt = subprocess.run(
            ["systemd-detect-virt"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    with psycopg.connect(PG) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg_version = row[0] if row else "?"
        row = conn.execute("SHOW synchronous_commit").fetchone()
        sync_commit = row[0] if row else "?"
    redis_version = redis.Redis.from_url(REDIS).info("server").get("redis_version", "?")
    return {
        "host": platform.node(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "virtualisation": virt or "unknown",
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "synchronous_commit": sync_commit,
        "redis": redis_version,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


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


LEAD = timedelta(hours=1)  # every loaded task is reminded an hour before it is due


def load_reminders(
    env: Env,
    owner: uuid.UUID,
    remind_ats: Sequence[datetime],
    endpoint_id: uuid.UUID | None = None,
) -> datetime:
    """COPY one open task per remind time, with its waiting reminder row, as the API makes them;
    the tasks name ``endpoint_id`` (one of ``owner``'s endpoints) or the deployment's channel.

    Returns the creation time written on the rows (``created_at``/``planned_at``).
    """
    now = datetime.now(UTC)
    created = now.isoformat()
    tasks, reminders = io.StringIO(), io.StringIO()
    endpoint = "\\N" if endpoint_id is None else str(endpoint_id)  # COPY's NULL
    for remind_at in remind_ats:
        task_id, due_at = uuid.uuid4(), remind_at + LEAD
        due, remind = due_at.isoformat(), remind_at.isoformat()
        tasks.write(
            f"{task_id}\t{owner}\tbench task\t{due}\tUTC\t[3600]\topen\t{created}\t{created}\t"
            f"{endpoint}\n"
        )
        key = message_id(task_id, due_at, 3600)
        reminders.write(
            f"{key}\t{task_id}\t{due}\t3600\t{remind}\twaiting\t0\tf\t"
            f"{created}\t{created}\t{created}\n"
        )
    with env.connect() as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY tasks (id, owner_id, title, due_at, time_zone, reminder_offsets, status, "
            "created_at, updated_at, endpoint_id) FROM STDIN"
        ) as copy:
            copy.write(tasks.getvalue())
        with cur.copy(
            "COPY reminders (message_id, task_id, due_at, offset_seconds, remind_at, state, "
            "attempts, late, planned_at, created_at, updated_at) FROM STDIN"
        ) as copy:
            copy.write(reminders.getvalue())
        conn.commit()
        cur.execute("ANALYZE tasks")
        cur.execute("ANALYZE reminders")
        conn.commit()
    return now


def add_endpoint(
    env: Env,
    owner: uuid.UUID,
    url: str,
    secret_key: str,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_per_second: float | None = None,
) -> uuid.UUID:
    """One of ``owner``'s endpoints, as the API makes it: a fresh signing secret encrypted
    with ``secret_key`` (the workers' ``REMINDERS_SECRET_KEY``) and its limits."""
    endpoint_id, now = uuid.uuid4(), datetime.now(UTC)
    secret = SecretBox([secret_key]).encrypt(new_endpoint_secret())
    with env.connect() as conn:
        conn.execute(
            "INSERT INTO endpoints (id, owner_id, url, enabled, secret, max_concurrency, "
            "max_per_second, created_at, updated_at) VALUES (%s, %s, %s, true, %s, %s, %s, %s, %s)",
            (endpoint_id, owner, url, secret, max_concurrency, max_per_second, now, now),
        )
    return endpoint_id


def load_tasks(env: Env, owner: uuid.UUID, total: int, due: int) -> None:
    """``total`` tasks with their waiting reminder rows; ``due`` of them are due now."""
    now = datetime.now(UTC).replace(microsecond=0)
    # Due tasks: reminded an hour before a due time 30 min ahead. Others: next year.
    remind_ats = [
        now + timedelta(minutes=30) - LEAD if n < due else now + timedelta(days=365, seconds=n)
        for n in range(total)
    ]
    load_reminders(env, owner, remind_ats)


def count_sent(env: Env) -> int:
    with env.connect() as conn:
        row = conn.execute("SELECT count(*) FROM reminders WHERE state = 'sent'").fetchone()
        return int(row[0]) if row else 0


@contextmanager
def service(
    argv: list[str], env: dict[str, str], cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running process in its own session, its output in a temporary file, stopped after;
    ``cwd``: the source tree it runs (this one by default)."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=log, start_new_session=True)
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):  # it may have ended on its own
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextmanager
def worker_group(
    env: Env, module: str, processes: int, threads: int, **more_env: str
) -> Iterator[psutil.Process]:
    """A worker group as ``reminders worker`` runs it (command, prefetch), loading ``module``;
    ``more_env``: settings of the deployment under test (``REMINDERS_WEBHOOK_URL``, …)."""
    argv = worker_argv(processes, threads)
    argv[0], argv[argv.index("workers.app")] = sys.executable, module
    # INFO, as in production: the log channel's delivery *is* its ``reminder.sent`` line.
    base = env.process_env(REMINDERS_LOG_LEVEL="INFO", **more_env)
    group_env = worker_env(load_settings(base), base, threads)
    with service(argv, group_env) as proc:
        group = psutil.Process(proc.pid)
        # Every worker process's broker adds its heartbeat at its first fetch from Redis: the
        # group is ready when all have, so its start-up is never part of a measurement.
        heartbeats = redis.Redis.from_url(REDIS)
        key = f"{env.namespace}:__heartbeats__"
        deadline = time.monotonic() + 60
        while heartbeats.zcard(key) < processes and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker group exited with status {proc.returncode}")
            time.sleep(0.1)
        heartbeats.close()
        time.sleep(0.5)  # every consumer thread of every process polling
        yield group


@contextmanager
def scheduler(env: Env) -> Iterator[subprocess.Popen[bytes]]:
    """The real scheduler (``reminders scheduler``: periodiq through ``cli.launch``, TZ=UTC)."""
    argv = [sys.executable, "-m", "cli.launch", "periodiq", "workers.app"]
    with service(argv, scheduler_env(env.process_env(REMINDERS_LOG_LEVEL="INFO"))) as proc:
        yield proc


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


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
