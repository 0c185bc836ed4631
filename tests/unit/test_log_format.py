"""What a process's log lines look like: JSON for machines, console lines for a person.

``REMINDERS_LOG_FORMAT=auto`` (the default) writes console lines only when stderr is a
terminal, so a log shipper reading a pipe or a file always gets JSON; ``json`` and
``console`` force one. Alembic's INFO chatter is DEBUG. Each case runs a real Python
process that logs through `shared.logs.configure_logging`, on a real pseudo-terminal or a
pipe.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.processes import REPO
from tests.terminal import Terminal

PROGRAM = """
import logging, sys
from shared.logs import configure_logging, get_logger
configure_logging(sys.argv[1], sys.argv[2])
get_logger("producer").info("scan.finished", enqueued=3)
logging.getLogger("gunicorn.error").info("Booting worker with pid: %s", 42)
logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")
print("done", file=sys.stderr, flush=True)
"""


def on_terminal(level: str, log_format: str) -> list[str]:
    terminal = Terminal([sys.executable, "-c", PROGRAM, level, log_format], {}, REPO)
    try:
        assert terminal.finish() == 0, terminal.raw()
        return terminal.lines()
    finally:
        terminal.close()


def piped(level: str, log_format: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, level, log_format],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def logged(lines: list[str]) -> list[str]:
    return [line for line in lines if line != "done"]


@pytest.mark.parametrize("log_format", ["auto", "console"])
def test_a_terminal_gets_console_lines(log_format: str) -> None:
    lines = logged(on_terminal("INFO", log_format))

    assert len(lines) == 2, lines
    ours, library = lines
    assert not ours.startswith("{") and not library.startswith("{"), lines
    assert "[info" in ours and "scan.finished" in ours and "enqueued=3" in ours, ours
    assert "Booting worker with pid: 42" in library and "[gunicorn.error]" in library, library


@pytest.mark.parametrize("log_format", ["auto", "json"])
def test_a_pipe_gets_json_lines(log_format: str) -> None:
    events = [json.loads(line) for line in logged(piped("INFO", log_format))]

    assert [(e["event"], e["level"]) for e in events] == [
        ("scan.finished", "info"),
        ("log", "info"),
    ]
    assert events[0]["enqueued"] == 3
    assert events[1]["message"] == "Booting worker with pid: 42"


def test_json_is_kept_on_a_terminal_when_asked() -> None:
    events = [json.loads(line) for line in logged(on_terminal("INFO", "json"))]

    assert [e["event"] for e in events] == ["scan.finished", "log"]


def test_console_lines_in_a_file_carry_no_colours() -> None:
    lines = logged(piped("INFO", "console"))

    assert len(lines) == 2 and "scan.finished" in lines[0], lines
    assert not any("\x1b[" in line for line in lines), lines


def test_migrations_say_nothing_at_info_and_speak_at_debug() -> None:
    assert not [line for line in piped("INFO", "json") if "Running upgrade" in line]

    [migration] = [json.loads(x) for x in piped("DEBUG", "json") if "Running upgrade" in x]
    assert (migration["level"], migration["logger"]) == ("debug", "alembic.runtime.migration")
