"""The three long-running processes of the Procfile, as argv and environment.

``reminders web|worker|scheduler`` exec them; ``reminders dev`` starts all three as
children. One definition serves both, so the embedded default runs what production runs.
"""

from __future__ import annotations

import ctypes
import fcntl
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


IDLE_POLL_MS = 200
CONSUMER_RESTART_MS = 1000


def worker_env(settings: Settings, base: dict[str, str], threads: int) -> dict[str, str]:
    """A worker group's environment: prefetch, and Prometheus files when metrics are on."""
    env = dict(base)
    # What each process may fetch ahead of its threads: all a slow or cut-off one holds back.
    env.setdefault("dramatiq_queue_prefetch", str(threads * settings.prefetch_per_thread))
    # How long an idle consumer may sleep between polls of Redis (Dramatiq's default: 1 s).
    # A delayed reminder waits for one poll of the delay queue's consumer, then one of the
    # queue's: a shorter cap keeps it within a fraction of a second of its remind time.
    env.setdefault("dramatiq_worker_timeout", str(IDLE_POLL_MS))
    # How long a consumer that lost Redis waits before it connects again (Dramatiq's default:
    # 3 s): delivery resumes within about this long of Redis answering again.
    env.setdefault("dramatiq_restart_delay", str(CONSUMER_RESTART_MS))
    if settings.metrics_port:
        metrics_dir = claim_metrics_dir(settings.metrics_port)
        env.update(
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
            dramatiq_prom_db=str(metrics_dir),
            dramatiq_prom_port=str(settings.metrics_port),
            dramatiq_prom_host=env.get("REMINDERS_METRICS_HOST", "0.0.0.0"),
        )
    return env


METRICS_DIR_PREFIX = "reminders-metrics-"
GROUP_LOCK = "group.lock"


def claim_metrics_dir(port: int, root: Path | None = None) -> Path:
    """A new Prometheus multiprocess directory for the worker group this process starts.

    Each group writes its own (``reminders-metrics-<port>-<random>`` in the temporary
    directory), so two groups on one host never add up or delete each other's files. The
    group's main process holds a lock on ``group.lock`` inside it for as long as it lives:
    the lock's descriptor is kept through ``exec``, and ``reminders dev`` holds it itself.
    Directories left by groups that have ended (their lock free) are removed here; a live
    group's never are.
    """
    root = Path(tempfile.gettempdir()) if root is None else root
    remove_ended_metrics_dirs(root)
    directory = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{port}-", dir=root))
    # Locked under another name, then renamed: another start never sees the lock unheld.
    draft = directory / f".{GROUP_LOCK}"
    descriptor = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    draft.rename(directory / GROUP_LOCK)
    os.set_inheritable(descriptor, True)
    return directory


def remove_ended_metrics_dirs(root: Path) -> None:
    """Remove the metrics directories under ``root`` whose group has ended."""
    for directory in root.glob(f"{METRICS_DIR_PREFIX}*"):
        try:
            descriptor = os.open(directory / GROUP_LOCK, os.O_RDWR)
        except OSError:
            continue  # not a group's (or one still being made)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            continue  # its group is running
        try:
            shutil.rmtree(directory, ignore_errors=True)
        finally:
            os.close(descriptor)


def scheduler_env(base: dict[str, str]) -> dict[str, str]:
    # periodiq reads cron in local time; the producer does not care, but UTC keeps ticks regular.
    return {**base, "TZ": "UTC"}
