"""The yardsticks measured in every run, so figures compare across machines as ratios.

- *The single loop* (the seeds' design): one process, one loop, per task an atomic
  ``UPDATE … RETURNING`` plus an insert into a log table, one transaction each.
- *The no-op ceiling*: a no-op Dramatiq actor with the same worker settings, fed as the
  producer feeds the real one (batches through ``shared.broker.redis_broker.enqueue_batch``), in
  two variants: the plain broker (``bench.noop_app``) and the real worker's broker with all
  its middleware (``bench.noop_real_app``).
- *pgbench*: a one-insert transaction against a scratch table of the run's schema, with
  1 and 8 clients: the rate of durable commits this PostgreSQL gives.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dramatiq import Message

from bench.harness import PG, Env, wait_until, worker_group
from bench.noop_app import NOOP_QUEUE
from bench.noop_real_app import NOOP_ACTOR
from shared.broker.queue import QUEUE_NAME, make_broker
from shared.broker.redis_broker import enqueue_batch, queue_depth

CEILING_VARIANTS = {
    # variant: (module the workers load, queue, actor)
    "plain": ("bench.noop_app", NOOP_QUEUE, "noop"),
    "real": ("bench.noop_real_app", QUEUE_NAME, NOOP_ACTOR),
}


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


def bench_noop_ceiling(
    env: Env, tasks: int, processes: int, threads: int, variant: str = "plain"
) -> dict[str, float]:
    """Messages per second through a no-op actor, from the first enqueue to an empty queue."""
    module, queue_name, actor_name = CEILING_VARIANTS[variant]
    env.reset()
    broker = make_broker(env.settings)
    messages = [
        Message(
            queue_name=queue_name,
            actor_name=actor_name,
            args=(str(uuid.uuid4()), "2031-01-01T00:00:00+00:00"),
            kwargs={},
            options={},
            message_id=str(uuid.uuid4()),
        )
        for _ in range(tasks)
    ]
    with worker_group(env, module, processes, threads):
        started = time.perf_counter()
        for start in range(0, tasks, env.settings.scan_batch_size):
            enqueue_batch(broker, messages[start : start + env.settings.scan_batch_size])

        def drained() -> bool:
            depth = queue_depth(broker, queue_name)
            return depth.ready == 0 and depth.in_flight == 0

        wait_until(drained, timeout=1800, interval=0.1)
        elapsed = time.perf_counter() - started
    broker.close()
    return {"seconds": elapsed, "per_second": tasks / elapsed}


# -- pgbench ---------------------------------------------------------------------------------

ONE_INSERT = "INSERT INTO pgbench_one_insert (at) VALUES (now());\n"


def pgbench_path() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pgbench"),
        key=lambda path: int(re.search(r"/(\d+)/bin/", path).group(1)),  # type: ignore[union-attr]
    )
    if not candidates:
        raise SystemExit("the anchors need pgbench (postgresql-client or the server package)")
    return candidates[-1]


def bench_pgbench(env: Env, clients: int, seconds: int) -> dict[str, float]:
    """Transactions per second of one ``INSERT`` each (autocommit), ``clients`` connections."""
    with env.connect() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS pgbench_one_insert "
            "(id bigserial PRIMARY KEY, at timestamptz NOT NULL)"
        )
        conn.execute("TRUNCATE pgbench_one_insert")
        conn.commit()
    script = Path(tempfile.mkdtemp()) / "one_insert.sql"
    script.write_text(ONE_INSERT)
    pg_env = {**os.environ, "PGOPTIONS": f"-csearch_path={env.schema}"}
    argv = [
        pgbench_path(),
        "--no-vacuum",
        f"--file={script}",
        f"--client={clients}",
        f"--jobs={min(clients, os.cpu_count() or 1)}",
        f"--time={seconds}",
        PG,
    ]
    done = subprocess.run(
        argv, env=pg_env, capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    tps = re.search(r"tps = ([\d.]+) \((?:without|excluding)", done.stdout)
    if tps is None:
        raise RuntimeError(f"pgbench printed no rate:\n{done.stdout}\n{done.stderr}")
    latency = re.search(r"latency average = ([\d.]+) ms", done.stdout)
    shutil.rmtree(script.parent, ignore_errors=True)
    with env.connect() as conn:
        conn.execute("DROP TABLE pgbench_one_insert")
        conn.commit()
    return {
        "clients": clients,
        "per_second": float(tps.group(1)),
        "latency_ms": float(latency.group(1)) if latency else float("nan"),
    }


def bench_anchors(
    env: Env,
    tasks: int,
    messages: int,
    threads: int,
    pgbench_seconds: int,
    processes: tuple[int, ...] = (2,),
) -> dict[str, dict[str, float]]:
    """The single loop (``tasks``), the no-op ceiling (both variants, ``messages``) and
    pgbench (1 and 8 clients)."""
    anchors = {"seed_loop": bench_seed_loop(env, tasks)}
    for p in processes:
        for variant in CEILING_VARIANTS:
            anchors[f"noop_{variant}_{p}p"] = bench_noop_ceiling(env, messages, p, threads, variant)
    for clients in (1, 8):
        anchors[f"pgbench_{clients}c"] = bench_pgbench(env, clients, pgbench_seconds)
    return anchors
