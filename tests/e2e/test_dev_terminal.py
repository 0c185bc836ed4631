"""``reminders dev`` as a person runs it: in a terminal.

The banner is not buried: it comes before the worker's and the scheduler's start-up lines
(only the API server's few lines precede it), the migrations say nothing, and every log
line is a console line, not JSON. The banner says when private endpoints are allowed.
``dev`` runs on a real pseudo-terminal (`tests.terminal`) in its own temporary directory.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_embedded_cli import (
    BANNER,
    embedded_servers,
    service_env,
)
from tests.pipeline.conftest import BIN
from tests.processes import free_port
from tests.terminal import Terminal

# gunicorn's records, by logger, as the console renderer names them.
API_SERVER_LOGGERS = ("[gunicorn.error]", "[gunicorn.access]")


@contextlib.contextmanager
def dev_on_a_terminal(tmp_path: Path, **more: str) -> Iterator[Terminal]:
    data_dir = tmp_path / "project" / ".reminders"
    data_dir.parent.mkdir(parents=True)
    env = service_env(data_dir, **more)
    argv = [str(BIN / "reminders"), "dev", "--port", str(free_port())]
    terminal = Terminal(argv, env, data_dir.parent)
    try:
        yield terminal
        terminal.process.send_signal(signal.SIGINT)
        assert terminal.finish(timeout=40) == 0, terminal.raw()[-3000:]
    finally:
        terminal.close()
        for server in embedded_servers(data_dir):
            server.kill()


@pytest.mark.slow
def test_in_a_terminal_the_banner_comes_first_and_logs_are_console_lines(
    tmp_path: Path,
) -> None:
    with dev_on_a_terminal(tmp_path, REMINDERS_ALLOW_PRIVATE_ENDPOINTS="true") as terminal:
        assert terminal.wait_for("Ctrl-C stops everything.", 90), terminal.raw()[-3000:]
        # The worker and the scheduler have started up by the time the first scan ran.
        assert terminal.wait_for("scan.finished", 60), terminal.raw()[-3000:]
        lines = [line for line in terminal.lines() if line.strip()]

    start = next(i for i, line in enumerate(lines) if BANNER in line)
    before = lines[:start]
    banner = lines[start : start + 7]
    after = lines[start + 7 :]
    # Ahead of the banner only the API server's lines (it answered before the banner):
    # no migrations, no worker or scheduler start-up.
    assert all(line.endswith(API_SERVER_LOGGERS) for line in before), before
    assert not [line for line in lines if "alembic" in line or "Running upgrade" in line]
    assert any("periodiq" in line for line in after), after
    assert any("Worker process is ready" in line for line in after), after
    # Console lines, not JSON: time, level, event or message, logger.
    logs = [*before, *after]
    assert logs and not [line for line in logs if line.lstrip().startswith("{")], logs
    assert all("[info" in line or "[warning" in line for line in logs), logs
    assert "\x1b[" in terminal.raw()  # coloured, as a terminal shows them
    assert any(
        "warning:" in line and "REMINDERS_ALLOW_PRIVATE_ENDPOINTS is on" in line for line in banner
    ), banner
