"""``reminders dev``: the whole service on one machine with nothing else installed.

A SQLite file and an embedded Valkey server (`cli.embedded_redis`) in
``REMINDERS_DATA_DIR``, the schema migrated, a ``dev`` operator with a fresh token, and
the Procfile's three processes as children. The data directory is claimed first
(`cli.instance`): a second ``dev`` on it is refused before it touches anything, and the
commands run beside this one find its database and Redis server. The API starts first;
once it answers, the worker and the scheduler start and the banner is printed at once,
ahead of their start-up lines, so a terminal does not scroll it away. If any child exits,
the others are stopped and ``dev`` exits with `ExitStatus.SOFTWARE`; Ctrl-C, SIGTERM or
SIGHUP stop everything, the Redis server last. Every child runs in its own session (a
terminal's Ctrl-C reaches ``dev`` alone, which stops each child once) and, on Linux, dies
with ``dev`` even if ``dev`` is SIGKILLed. The API's gunicorn has its control socket in
the data directory, this instance's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click
from sqlalchemy import select

from cli.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from cli.environment import CommandError, data_dir_of, make_private_directory, unusable_data_dir
from cli.instance import Instance, InstanceLock, InstanceRunning, claim
from cli.processes import (
    die_with_parent,
    executable,
    scheduler_argv,
    scheduler_env,
    web_argv,
    worker_argv,
    worker_env,
)
from shared.config import Settings
from shared.exit_status import ExitStatus
from shared.store.accounts import create_user, issue_token
from shared.store.db import make_engine, make_session_factory, unit_of_work
from shared.store.models import User
from shared.store.schema import upgrade

DEV_USER = "dev"
STOP_GRACE_SECONDS = 15
API_START_TIMEOUT_SECONDS = 60
POLL_SECONDS = 0.05
CONTROL_SOCKET = "gunicorn.ctl"
# sun_path holds 108 bytes on Linux (104 on the BSDs), its terminating NUL included.
UNIX_PATH_MAX = 104


class _Stopping:
    """Set by SIGINT, SIGTERM or SIGHUP; every wait of ``dev`` checks it."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True


def _dev_token(database_url: str) -> str:
    """A fresh token for the ``dev`` operator, created on first run."""
    sessions = make_session_factory(make_engine(database_url))
    with unit_of_work(sessions) as session:
        user_id = session.scalars(select(User.id).where(User.name == DEV_USER)).first()
        if user_id is not None:
            return issue_token(session, user_id)
    return create_user(sessions, DEV_USER, operator=True)


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _api_answers(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _delivery(settings: Settings) -> str:
    if settings.webhook_url:
        return f"webhook to {settings.webhook_url}"
    return (
        "log channel (each reminder is written to the worker log; "
        "set REMINDERS_WEBHOOK_URL to send them to a webhook)"
    )


def _banner(settings: Settings, data_dir: str, api_url: str, token: str) -> str:
    private = (
        "  warning:  REMINDERS_ALLOW_PRIVATE_ENDPOINTS is on: endpoints may use http:// and "
        "loopback or private addresses (local setups only)\n"
        if settings.allow_private_endpoints
        else ""
    )
    return (
        f"\nReminders is running (data in {data_dir}).\n"
        f"  API:      {api_url}\n"
        f"  token:    {token}  (an operator token of user {DEV_USER!r}: the API and /ops)\n"
        f"  delivery: {_delivery(settings)}\n"
        f"{private}"
        f"  try:      curl -H 'Authorization: Bearer {token}' {api_url}/tasks\n"
        "Ctrl-C stops everything.\n"
    )


def _control_socket(data_dir: Path) -> Path | None:
    """Where the API's gunicorn listens for ``gunicornc``: this instance's own socket, in
    its data directory; none where that path is too long for a Unix socket."""
    path = data_dir / CONTROL_SOCKET
    return path if len(os.fsencode(path)) < UNIX_PATH_MAX else None


class _Children:
    """The Procfile's processes of one ``dev``."""

    def __init__(self) -> None:
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.running[name] = subprocess.Popen(
            [executable(argv[0], env), *argv[1:]],
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

    def exited(self) -> tuple[str, int] | None:
        """The first child found exited, with its status."""
        for name, child in self.running.items():
            status = child.poll()
            if status is not None:
                return name, status
        return None

    def stop(self) -> None:
        for child in self.running.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in self.running.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _claim_data_dir(settings: Settings, port: int) -> InstanceLock:
    """The data directory, held for this run; one line and exit if it cannot be."""
    data_dir = data_dir_of(settings)
    try:
        notice = make_private_directory(data_dir)
        if notice:
            click.echo(notice, err=True)
        lock = claim(data_dir)
    except OSError as exc:
        raise unusable_data_dir(settings, exc) from None
    except InstanceRunning as exc:
        raise CommandError(
            ExitStatus.TRY_AGAIN,
            f"{exc}: stop it first, or set REMINDERS_DATA_DIR to another directory",
        ) from None
    if _port_in_use(port):
        lock.release()
        raise CommandError(
            ExitStatus.TRY_AGAIN, f"port {port} of 127.0.0.1 is in use: pick another with --port"
        )
    return lock


def _wait(
    until: Callable[[], bool],
    stopping: _Stopping,
    children: _Children,
    *,
    timeout: float | None,
    interval: float,
) -> str | None:
    """Poll ``until``; None once true, else why not: "stopping", a child's exit, the time."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not until():
        if stopping.requested:
            return "stopping"
        exited = children.exited()
        if exited is not None:
            return f"{exited[0]} exited with status {exited[1]}"
        if deadline is not None and time.monotonic() >= deadline:
            return f"the API did not answer within {timeout:g} s"
        time.sleep(interval)
    return None


def run_embedded(settings: Settings, *, port: int, processes: int) -> int:
    """Run everything until a child exits or we are told to stop; returns the exit status."""
    run = _DevRun(settings, _claim_data_dir(settings, port), port, processes)
    with contextlib.ExitStack() as cleanup:
        # Undone in reverse: the children, then the Redis server they use, then the lock.
        cleanup.callback(run.lock.release)
        if run.redis_server is not None:
            cleanup.callback(run.redis_server.stop)
        cleanup.callback(run.children.stop)
        try:
            return run.run()
        except EmbeddedRedisError as exc:
            raise CommandError(ExitStatus.UNAVAILABLE, str(exc)) from None


class _DevRun:
    """One ``dev`` on a claimed data directory."""

    def __init__(self, settings: Settings, lock: InstanceLock, port: int, processes: int) -> None:
        self.settings = settings
        self.lock = lock
        self.port = port
        self.processes = processes
        self.api_url = f"http://127.0.0.1:{port}"
        self.stopping = _Stopping()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.stopping)
        self.redis_server = None
        if "redis_url" not in settings.model_fields_set:
            self.redis_server = EmbeddedRedis(lock.data_dir / "redis")
        self.children = _Children()

    def _environment(self) -> dict[str, str]:
        """The children's environment; starts the embedded Redis server unless configured."""
        env = dict(os.environ)
        env["DATABASE_URL"] = self.settings.resolved_database_url
        env["REMINDERS_DATA_DIR"] = str(self.lock.data_dir)
        env["REDIS_URL"] = self.settings.redis_url
        if self.redis_server is not None:
            leftover = self.redis_server.stop_leftover()
            if leftover:
                click.echo(f"stopped the Redis server (pid {leftover}) of an earlier dev", err=True)
            env["REDIS_URL"] = self.redis_server.start()
        return env

    def run(self) -> int:
        settings, database_url = self.settings, self.settings.resolved_database_url
        env = self._environment()
        if self.stopping.requested:
            return ExitStatus.OK
        upgrade(make_engine(database_url))
        token = _dev_token(database_url)
        self.lock.publish(
            Instance(
                pid=os.getpid(),
                database_url=database_url,
                redis_url=env["REDIS_URL"],
                redis_namespace=settings.redis_namespace,
                api_url=self.api_url,
            )
        )
        data_dir = self.lock.data_dir
        web = web_argv(
            f"127.0.0.1:{self.port}", workers=1, control_socket=_control_socket(data_dir)
        )
        self.children.start("web", web, env)
        why = _wait(
            lambda: _api_answers(self.api_url),
            self.stopping,
            self.children,
            timeout=API_START_TIMEOUT_SECONDS,
            interval=POLL_SECONDS,
        )
        if why is None:
            # Started before the banner, which then comes ahead of their start-up lines.
            self.children.start(
                "worker",
                worker_argv(self.processes, threads=4),
                worker_env(settings, env, threads=4),
            )
            self.children.start("scheduler", scheduler_argv(), scheduler_env(env))
            click.echo(_banner(settings, str(data_dir), self.api_url, token))
            sys.stdout.flush()
            why = _wait(lambda: False, self.stopping, self.children, timeout=None, interval=0.5)
        if why == "stopping":
            return ExitStatus.OK
        click.echo(f"{why}; stopping the others", err=True)
        return ExitStatus.SOFTWARE
