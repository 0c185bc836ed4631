"""Several worker hosts (issue 25): how often a healthy worker's heartbeat goes quiet, and what
prefetch costs and buys.

    .venv/bin/python bench/hosts.py --only beats --tree before=/tmp/base --tree after=.
    .venv/bin/python bench/hosts.py --only prefetch --tree before=/tmp/base --tree after=.
    .venv/bin/python bench/hosts.py --only slow-host --repeat 3

Worker groups run ``reminders worker``'s command and environment (``python -m cli.launch
dramatiq workers.app``, `cli.processes.worker_env`) from a source tree of their own
(``--tree name=path``, e.g. ``git archive COMMIT | tar -x -C DIR``; default: this tree), on
PostgreSQL and Redis as ``bench/run.py`` (``REMINDERS_BENCH_*``), in a schema and namespace
of the run's, delivering through the deployment's webhook to `bench.receiver`. The trees of
a run alternate within each repeat, so before and after are measured side by side.

- ``beats``: a group (2 processes x 8 threads) in four states — idle; busy (a receiver that
  answers at once, 20,000 reminders); blocked (every request held 4 s, under the 5 s webhook
  timeout, with more reminders than the windows hold, so every thread waits and every
  window is full); blocked with two processes spinning on the two cores — for
  ``--beat-seconds`` each. Every 20 ms the harness reads each worker process's stamp in
  ``__heartbeats__``: the longest silence (the largest gap between two stamps seen), and
  how many silences were longer than 2, 5, 10 and 15 s (each one would be a false recovery
  with that heartbeat timeout: the process's messages given to another while it still
  delivers them). The idle group is the yardstick: it polls Redis every 200 ms.
- ``prefetch``: reminders per second of one group (2 x 8) to a receiver that answers at
  once, at ``REMINDERS_PREFETCH_PER_THREAD`` 1, 2, 4 and 16, each as a ratio to 16 in the
  same repeat of the same tree (the anchor: the setting's old value).
- ``slow-host``: two groups of 1 process x 8 threads, one of them behind a link with
  ``--latency`` of delay each way (`tests.tcp_proxy.TcpProxy`: its PostgreSQL, Redis and
  receiver connections, as a host in another zone), share ``--count`` reminders due at
  once, at prefetch 1, 2, 4 and 16: the rate of both together as a ratio to the fast group
  alone at the same prefetch (the anchor, in the same repeat), the slow group's share, and
  the most its process held fetched and unsent at any sample (its window).

Timings are measured here, never asserted by the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from dramatiq import Message

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    REDIS,
    Env,
    count_sent,
    load_reminders,
    machine,
    make_user,
    service,
    wait_until,
)
from bench.noop_real_app import NOOP_ACTOR  # noqa: E402
from bench.receiver import ReceiverProcess, receiver_process  # noqa: E402
from cli.processes import worker_env  # noqa: E402
from shared.broker.queue import QUEUE_NAME, make_broker  # noqa: E402
from shared.broker.redis_broker import enqueue_batch, queue_depth  # noqa: E402
from shared.config import load_settings  # noqa: E402
from shared.delivery.secret_box import generate_key  # noqa: E402
from shared.delivery.signing import new_endpoint_secret  # noqa: E402
from shared.logs import configure_logging  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402
from workers.producer import scan_due_tasks  # noqa: E402

PREFETCHES = (1, 2, 4, 16)
SILENCES = (2.0, 5.0, 10.0, 15.0)  # heartbeat timeouts judged, seconds
BLOCKED_HOLD = 4.0  # seconds a blocked group's every request is held (webhook timeout: 5 s)


@contextmanager
def group(
    env: Env,
    root: Path,
    processes: int,
    threads: int,
    module: str = "workers.app",
    **settings: str,
) -> Iterator[list[str]]:
    """A worker group from source tree ``root`` loading ``module``, with ``settings``
    (environment variables); yields its processes' broker instance ids once each has
    stamped its heartbeat."""
    base = env.process_env(PYTHONPATH=str(root), **settings)
    group_env = worker_env(load_settings(base), base, threads)
    argv = [sys.executable, "-m", "cli.launch", "dramatiq", module]
    argv += ["--processes", str(processes), "--threads", str(threads)]
    client = redis.Redis.from_url(REDIS)
    key = f"{env.namespace}:__heartbeats__"
    before = {member.decode() for member in client.zrange(key, 0, -1)}
    with service(argv, group_env, cwd=root) as proc:
        deadline = time.monotonic() + 60
        ids: list[str] = []
        while len(ids) < processes:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker group did not start ({proc.returncode})")
            ids = [m.decode() for m in client.zrange(key, 0, -1) if m.decode() not in before]
            time.sleep(0.1)
        client.close()
        time.sleep(0.5)  # every consumer thread polling
        yield ids


# One key for every group of a run, whatever its tree (each would otherwise make its own in
# its tree's data directory, and refuse to start next to the other's canary).
SECRET_KEY = generate_key()


def webhook(url: str) -> dict[str, str]:
    return {
        "REMINDERS_WEBHOOK_URL": url,
        "REMINDERS_WEBHOOK_SECRET": new_endpoint_secret(),
        "REMINDERS_SECRET_KEY": SECRET_KEY,
    }


def prefetch(per_thread: int, threads: int) -> dict[str, str]:
    """The setting, and Dramatiq's own variable for trees older than the setting."""
    return {
        "REMINDERS_PREFETCH_PER_THREAD": str(per_thread),
        "dramatiq_queue_prefetch": str(per_thread * threads),
    }


def enqueue_due(env: Env, count: int) -> None:
    owner, _ = make_user(env)
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    load_reminders(env, owner, [due] * count)


def scan(env: Env) -> None:
    broker = make_broker(env.settings)
    try:
        scan_due_tasks(env.sessions, broker, env.settings)
    finally:
        broker.close()


# -- beats ---------------------------------------------------------------------------------


class BeatWatch:
    """Reads the stamps of ``ids`` every 20 ms: the silences between them, and the ids
    dropped from the set (judged dead by maintenance)."""

    def __init__(self, namespace: str, ids: list[str]) -> None:
        self.key = f"{namespace}:__heartbeats__"
        self.ids = ids
        self.client = redis.Redis.from_url(REDIS)
        self.gaps: list[float] = []  # seconds between two successive stamps of a process
        self.dropped = 0
        self._last: dict[str, float | None] = dict.fromkeys(ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            scores = self.client.zmscore(self.key, self.ids)
            for member, score in zip(self.ids, scores, strict=True):
                last = self._last[member]
                if score is None:
                    if last is not None:
                        self.dropped += 1
                elif last is not None and score > last:
                    self.gaps.append((score - last) / 1000)
                self._last[member] = score if score is not None else None

    def __enter__(self) -> BeatWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def figures(self) -> dict[str, Any]:
        gaps = sorted(self.gaps) or [0.0]
        return {
            "stamps": len(self.gaps),
            "longest_silence": gaps[-1],
            "p99_silence": gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))],
            "silences_over": {f"{t:g}s": sum(g > t for g in gaps) for t in SILENCES},
            "dropped": self.dropped,
        }


@contextmanager
def cpu_hogs(count: int) -> Iterator[None]:
    """``count`` processes spinning on the CPU."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def run_beats(
    env: Env, root: Path, rx: ReceiverProcess, state: str, seconds: float
) -> dict[str, Any]:
    processes, threads = 2, 8
    env.reset()
    hold = BLOCKED_HOLD if state.startswith("blocked") else 0.0
    if state == "busy":
        enqueue_due(env, 20_000)
    elif state.startswith("blocked"):
        # More than every window and thread hold: each thread waits, each window stays full.
        enqueue_due(env, processes * threads * (16 + 1) * 3)
    settings = webhook(rx.url("beats", hold))
    with group(env, root, processes, threads, **settings) as ids, ExitStack() as more:
        if state == "blocked+cpu":
            more.enter_context(cpu_hogs(2))
        with BeatWatch(env.namespace, ids) as watch:
            if state != "idle":
                scan(env)
            time.sleep(seconds)
    return {**watch.figures(), "sent": count_sent(env)}


# -- prefetch ------------------------------------------------------------------------------


def run_throughput(
    env: Env, root: Path, rx: ReceiverProcess, per_thread: int, count: int
) -> dict[str, Any]:
    processes, threads = 2, 8
    env.reset()
    enqueue_due(env, count)
    settings = {**webhook(rx.url("fast")), **prefetch(per_thread, threads)}
    with group(env, root, processes, threads, **settings):
        started = time.perf_counter()
        scan(env)
        wait_until(lambda: count_sent(env) >= count, timeout=900, interval=0.1)
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "per_second": count / elapsed}


def run_ceiling(env: Env, root: Path, per_thread: int, count: int) -> dict[str, Any]:
    """The no-op ceiling (`bench.noop_real_app`: the real worker's broker and middleware, an
    actor that does nothing), from the first enqueue to an empty queue."""
    processes, threads = 2, 8
    env.reset()
    broker = make_broker(env.settings)
    messages = [
        Message(
            queue_name=QUEUE_NAME,
            actor_name=NOOP_ACTOR,
            args=(str(uuid.uuid4()), "2031-01-01T00:00:00+00:00"),
            kwargs={},
            options={},
            message_id=str(uuid.uuid4()),
        )
        for _ in range(count)
    ]
    settings = {**prefetch(per_thread, threads), "REMINDERS_SECRET_KEY": SECRET_KEY}
    with group(env, root, processes, threads, "bench.noop_real_app", **settings):
        started = time.perf_counter()
        for start in range(0, count, 1000):
            enqueue_batch(broker, messages[start : start + 1000])

        def drained() -> bool:
            depth = queue_depth(broker, QUEUE_NAME)
            return depth.ready == 0 and depth.in_flight == 0

        wait_until(drained, timeout=900, interval=0.05)
        elapsed = time.perf_counter() - started
    broker.close()
    return {"seconds": elapsed, "per_second": count / elapsed}


# -- a slow host ---------------------------------------------------------------------------


def through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}{proxy.host}:{proxy.port}").geturl()


class WindowWatch:
    """Samples how many reminders one broker instance holds fetched and not yet sent."""

    def __init__(self, env: Env, broker_id: str) -> None:
        self.env = env
        self.acks = f"{env.namespace}:__acks__.{broker_id}.{QUEUE_NAME}"
        self.msgs = f"{env.namespace}:{QUEUE_NAME}.msgs"
        self.client = redis.Redis.from_url(REDIS)
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.env.connect() as conn:
            while not self._stop.wait(0.05):
                ids = [i.decode() for i in self.client.smembers(self.acks)]
                bodies = self.client.hmget(self.msgs, ids) if ids else []
                keys = [json.loads(body)["message_id"] for body in bodies if body]
                if not keys:
                    continue
                row = conn.execute(
                    "SELECT count(*) FROM reminders WHERE message_id = ANY(%s::uuid[]) "
                    "AND state <> 'sent'",
                    (keys,),
                ).fetchone()
                conn.commit()
                self.most = max(self.most, int(row[0]) if row else 0)

    def __enter__(self) -> WindowWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def run_slow_host(
    env: Env, root: Path, rx: ReceiverProcess, per_thread: int, count: int, latency: float
) -> dict[str, Any]:
    threads = 8
    redis_server = urlsplit(REDIS)
    pg_server = urlsplit(env.url)
    proxies = [
        TcpProxy(
            (redis_server.hostname or "127.0.0.1", redis_server.port or 6379), latency=latency
        ),
        TcpProxy((pg_server.hostname or "127.0.0.1", pg_server.port or 5432), latency=latency),
        TcpProxy(("127.0.0.1", rx.port), latency=latency),
    ]
    out: dict[str, Any] = {}
    try:
        for both in (False, True):
            env.reset()
            enqueue_due(env, count)
            stats_before = rx.stats()
            fast = {**webhook(rx.url("fast")), **prefetch(per_thread, threads)}
            slow = {
                **webhook(through(rx.url("slow"), proxies[2])),
                **prefetch(per_thread, threads),
                "REDIS_URL": through(REDIS, proxies[0]),
                "DATABASE_URL": through(env.url, proxies[1]),
            }
            with ExitStack() as groups:
                groups.enter_context(group(env, root, 1, threads, **fast))
                window = None
                if both:
                    [slow_id] = groups.enter_context(group(env, root, 1, threads, **slow))
                    window = groups.enter_context(WindowWatch(env, slow_id))
                started = time.perf_counter()
                scan(env)
                wait_until(lambda: count_sent(env) >= count, timeout=900, interval=0.1)
                elapsed = time.perf_counter() - started
            stats = rx.stats()
            slow_sent = stats.get("slow", {}).get("requests", 0) - stats_before.get("slow", {}).get(
                "requests", 0
            )
            label = "both" if both else "fast_alone"
            out[label] = {"seconds": elapsed, "per_second": count / elapsed}
            if both and window is not None:
                out["slow_share"] = slow_sent / count
                out["slow_most_held"] = window.most
    finally:
        for proxy in proxies:
            proxy.close()
    out["ratio"] = out["both"]["per_second"] / out["fast_alone"]["per_second"]
    return out


# -- report --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="beats,prefetch,slow-host")
    parser.add_argument("--tree", action="append", default=[], help="name=path of a source tree")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--beat-seconds", type=float, default=60)
    parser.add_argument("--count", type=int, default=5000, help="reminders per throughput run")
    parser.add_argument("--latency", type=float, default=0.025, help="seconds, each way")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_logging("WARNING")
    trees = [tuple(t.split("=", 1)) for t in args.tree] or [("this tree", str(ROOT))]
    roots = {name: Path(path).resolve() for name, path in trees}
    parts = set(args.only.split(","))
    report: dict[str, Any] = {"machine": machine(), "runs": []}
    print(json.dumps(report["machine"]))
    env = Env()
    try:
        with receiver_process(env) as rx:
            for repeat in range(args.repeat):
                order = list(roots.items())
                if repeat % 2:
                    order.reverse()  # alternate which tree goes first
                for name, root in order:
                    run: dict[str, Any] = {"tree": name, "repeat": repeat + 1}
                    if "beats" in parts:
                        for state in ("idle", "busy", "blocked", "blocked+cpu"):
                            figures = run_beats(env, root, rx, state, args.beat_seconds)
                            run[f"beats {state}"] = figures
                            print(f"[{name} #{repeat + 1}] beats {state}: {figures}", flush=True)
                    if "prefetch" in parts:
                        rates, ceilings = {}, {}
                        for per_thread in (16, *PREFETCHES[:-1]):
                            result = run_throughput(env, root, rx, per_thread, args.count)
                            rates[per_thread] = result["per_second"]
                            result = run_ceiling(env, root, per_thread, args.count * 4)
                            ceilings[per_thread] = result["per_second"]
                        run["prefetch"] = {
                            p: {"per_second": rates[p], "ratio_to_16": rates[p] / rates[16]}
                            for p in PREFETCHES
                        }
                        run["ceiling"] = {
                            p: {
                                "per_second": ceilings[p],
                                "ratio_to_16": ceilings[p] / ceilings[16],
                            }
                            for p in PREFETCHES
                        }
                        print(f"[{name} #{repeat + 1}] prefetch: {run['prefetch']}", flush=True)
                        print(f"[{name} #{repeat + 1}] ceiling: {run['ceiling']}", flush=True)
                    if "slow-host" in parts:
                        for per_thread in PREFETCHES:
                            result = run_slow_host(
                                env, root, rx, per_thread, args.count, args.latency
                            )
                            run[f"slow-host {per_thread}"] = result
                            print(
                                f"[{name} #{repeat + 1}] slow host, prefetch {per_thread}: "
                                f"{result}",
                                flush=True,
                            )
                    report["runs"].append(run)
    finally:
        env.close()
    summarise(report["runs"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


def summarise(runs: list[dict[str, Any]]) -> None:
    """Medians over repeats, per tree."""
    by_tree: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_tree.setdefault(run["tree"], []).append(run)
    for tree, tree_runs in by_tree.items():
        print(f"\n[{tree}] medians of {len(tree_runs)} repeat(s)")
        for key in tree_runs[0]:
            if key.startswith("beats"):
                longest = [r[key]["longest_silence"] for r in tree_runs]
                print(f"  {key:22} longest silence {max(longest):.2f} s (each: {longest})")
            elif key in ("prefetch", "ceiling"):
                for p in PREFETCHES:
                    ratios = [r[key][p]["ratio_to_16"] for r in tree_runs]
                    rates = [r[key][p]["per_second"] for r in tree_runs]
                    print(
                        f"  {key} {p:2}: {statistics.median(rates):6.0f}/s, ratio to 16 "
                        f"{statistics.median(ratios):.2f} (each: {[round(x, 2) for x in ratios]})"
                    )
            elif key.startswith("slow-host"):
                ratios = [r[key]["ratio"] for r in tree_runs]
                shares = [r[key]["slow_share"] for r in tree_runs]
                held = [r[key]["slow_most_held"] for r in tree_runs]
                print(
                    f"  {key:16} both ÷ fast alone {statistics.median(ratios):.2f} "
                    f"(each {[round(x, 2) for x in ratios]}), slow share "
                    f"{statistics.median(shares):.1%}, slow held at most {max(held)}"
                )


if __name__ == "__main__":
    main()
