"""Helpers for tests that run the service's real processes: the Procfile, ports, their logs."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from shared.config import Settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def service_env(settings: Settings) -> dict[str, str]:
    """The environment of a real service process configured with ``settings``.

    This process's environment without any of the service's variables, then each setting
    under its variable name, and this virtualenv's scripts first on ``PATH``.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("REMINDERS_", "DATABASE_URL", "REDIS_URL"))
    }
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if value not in (None, "") and info.validation_alias is not None:
            env[str(info.validation_alias)] = str(value)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def procfile() -> dict[str, str]:
    """The Procfile's process lines by name."""
    lines: dict[str, str] = {}
    for raw in (REPO / "Procfile").read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        name, _, command = raw.partition(":")
        assert command.strip(), f"not a Procfile line: {raw!r}"
        lines[name.strip()] = command.strip()
    return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects among a log file's lines."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                found.append(value)
    return found
