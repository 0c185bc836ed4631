"""One key everywhere (`shared.delivery.key_canary`): the API, the worker group and the
scheduler each stop at start, with exit status 78 and one line naming
REMINDERS_SECRET_KEY, when their key is not the one the deployment's other processes use —
instead of dead-lettering at the first delivery to an endpoint. With the same key they run.

Real processes (gunicorn, Dramatiq, periodiq) on the test's own schema and namespace.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from shared.delivery.secret_box import generate_key
from shared.exit_status import ExitStatus
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import BIN, Stack
from tests.processes import free_port, tail

stack = pipeline_harness.stack  # the pipeline tests' fixture: own schema and namespace

READY = {  # what each process logs once it runs
    "worker": "Worker process is ready for action.",
    "scheduler": "Registered periodic actors:",
    "web": "Booting worker",
}


def argv(process: str) -> list[str]:
    reminders = str(BIN / "reminders")
    if process == "worker":
        return [reminders, "worker", "--processes", "2", "--threads", "1"]
    if process == "scheduler":
        return [reminders, "scheduler"]
    return [reminders, "web", "--bind", f"127.0.0.1:{free_port()}", "--workers", "1"]


def start(stack: Stack, process: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return stack.spawn_logged(argv(process), env, log)


def refused(process: subprocess.Popen[bytes], log: Path) -> str:
    """The line a process that stopped at start ended with, once its status is checked."""
    assert process.wait(timeout=60) == ExitStatus.CONFIG, tail(log)
    lines = [line for line in log.read_text().splitlines() if "REMINDERS_SECRET_KEY" in line]
    assert lines, tail(log)
    assert "Traceback" not in log.read_text(), tail(log)
    return lines[0]


def runs(stack: Stack, process: subprocess.Popen[bytes], log: Path, ready: str) -> None:
    assert stack.wait_for(lambda: ready in log.read_text() or process.poll() is not None, 60)
    assert process.poll() is None and ready in log.read_text(), tail(log)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("process", ["worker", "scheduler", "web"])
def test_a_process_with_another_key_stops_at_start_naming_it(
    stack: Stack, tmp_path: Path, process: str
) -> None:
    key = generate_key()
    first = start(stack, "worker", stack.env(secret_key=key), tmp_path / "first.log")
    runs(stack, first, tmp_path / "first.log", READY["worker"])  # it wrote the canary

    same = start(stack, process, stack.env(secret_key=key), tmp_path / "same.log")
    runs(stack, same, tmp_path / "same.log", READY[process])
    other = start(stack, process, stack.env(secret_key=generate_key()), tmp_path / "other.log")
    line = refused(other, tmp_path / "other.log")

    assert line.startswith("configuration error: REMINDERS_SECRET_KEY: it cannot decrypt "), line
    assert "every API, worker and scheduler process must have the same" in line
    assert key not in (tmp_path / "other.log").read_text()


@pytest.mark.slow
def test_hosts_without_a_key_each_make_their_own_and_the_second_stops(
    stack: Stack, tmp_path: Path
) -> None:
    """REMINDERS_SECRET_KEY unset on two hosts (each its own data directory)."""
    unset = {k: v for k, v in stack.env().items() if k != "REMINDERS_SECRET_KEY"}
    api_host = {**unset, "REMINDERS_DATA_DIR": str(tmp_path / "api-host")}
    worker_host = {**unset, "REMINDERS_DATA_DIR": str(tmp_path / "worker-host")}
    web = start(stack, "web", api_host, tmp_path / "web.log")
    runs(stack, web, tmp_path / "web.log", READY["web"])
    started = time.monotonic()

    line = refused(
        start(stack, "worker", worker_host, tmp_path / "worker.log"), tmp_path / "worker.log"
    )

    assert time.monotonic() - started < 60
    key_file = tmp_path / "worker-host" / "secret.key"
    assert f"REMINDERS_SECRET_KEY: empty, so this process uses the key in {key_file}" in line
