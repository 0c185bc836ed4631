"""The three long-running processes of the Procfile, as argv and environment.

``reminders web|worker|scheduler`` exec them; ``reminders dev`` starts all three as
children. One definition serves both, so the embedded default runs what production runs.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from shared.config import Settings


def executable(name: str, env: dict[str, str]) -> str:
    """The path of a console script (or ``python``), preferring this interpreter's environment."""
    if name == "python":
        return sys.executable
    search = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed")
    return found


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent SIGTERM when this process dies (Linux).

    So the children of ``reminders dev`` do not outlive it even when it is SIGKILLed.
    Elsewhere None (no such signal): a leftover embedded server is then stopped by the
    next ``dev`` instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def web_argv(
    bind: str, workers: int, threads: int = 4, control_socket: Path | None = None
) -> list[str]:
    """gunicorn with our settings; ``control_socket``: where it listens for ``gunicornc``
    (none otherwise, `api.gunicorn_conf`)."""
    argv = [
        "gunicorn",
        "--config",
        "python:api.gunicorn_conf",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]
    if control_socket is not None:
        argv += ["--control-socket", str(control_socket)]
    return [*argv, "api.wsgi:app"]


def worker_argv(processes: int, threads: int) -> list[str]:
    """Dramatiq through ``cli.launch``, so its own logs are JSON too."""
    return [
        "python",
        "-m",
        "cli.launch",
        "dramatiq",
        "workers.app",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]


def scheduler_argv() -> list[str]:
    return ["python", "-m", "cli.launch", "periodiq", "workers.app"]


# Messages each worker process fetches ahead, per thread. Dramatiq's default (2) leaves its
# consumer sleeping in back-off whenever that small window is full of unacknowledged
# messages, which caps throughput well below what the threads can do.
PREFETCH_PER_THREAD = 16
IDLE_POLL_MS = 200


def worker_env(settings: Settings, base: dict[str, str], threads: int) -> dict[str, str]:
    """A worker group's environment: prefetch, and Prometheus files when metrics are on."""
    env = dict(base)
    env.setdefault("dramatiq_queue_prefetch", str(threads * PREFETCH_PER_THREAD))
    # How long an idle consumer may sleep between polls of Redis (Dramatiq's default: 1 s).
    # A delayed reminder waits for one poll of the delay queue's consumer, then one of the
    # queue's: a shorter cap keeps it within a fraction of a second of its remind time.
    env.setdefault("dramatiq_worker_timeout", str(IDLE_POLL_MS))
    if settings.metrics_port:
        metrics_dir = Path(tempfile.gettempdir()) / f"reminders-metrics-{settings.metrics_port}"
        shutil.rmtree(metrics_dir, ignore_errors=True)  # stale files would add old counts
        metrics_dir.mkdir(parents=True)
        env.update(
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
            dramatiq_prom_db=str(metrics_dir),
            dramatiq_prom_port=str(settings.metrics_port),
            dramatiq_prom_host=env.get("REMINDERS_METRICS_HOST", "0.0.0.0"),
        )
    return env


def scheduler_env(base: dict[str, str]) -> dict[str, str]:
    # periodiq reads cron in local time; the producer does not care, but UTC keeps ticks regular.
    return {**base, "TZ": "UTC"}
