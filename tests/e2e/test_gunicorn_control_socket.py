"""Each ``reminders dev``'s API has its own gunicorn control socket; ``reminders web`` none.

Each instance's gunicorn listens for ``gunicornc`` on its own socket in its data
directory, never on the per-user default, so stopping one leaves the other's alone;
``reminders web`` opens none unless told where. Every process here is real, with ``HOME``
in the test's temporary directory, so a socket at the per-user default would be seen.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_embedded_cli import (
    running_dev,
    service_env,
)
from tests.pipeline.conftest import BIN
from tests.processes import free_port, tail


def no_xdg(env: dict[str, str], home: Path) -> dict[str, str]:
    """``env`` with ``HOME`` at ``home`` and no ``XDG_RUNTIME_DIR``: gunicorn's per-user
    default control socket would then be ``home/.gunicorn/gunicorn.ctl``."""
    home.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in env.items() if key != "XDG_RUNTIME_DIR"}
    env["HOME"] = str(home)
    return env


def socket_at(path: Path) -> bool:
    return path.exists() and stat.S_ISSOCK(path.stat().st_mode)


def listeners(control_socket: Path) -> list[str]:
    """What the gunicorn listening on ``control_socket`` says it is bound to."""
    shown = subprocess.run(
        [str(BIN / "gunicornc"), "-s", str(control_socket), "-c", "show listeners", "-j"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return [str(listener["address"]) for listener in json.loads(shown.stdout)["listeners"]]


@pytest.mark.slow
def test_two_devs_each_keep_their_own_control_socket(tmp_path: Path) -> None:
    home = tmp_path / "home"
    per_user = {"HOME": str(home), "XDG_RUNTIME_DIR": ""}  # the default: ~/.gunicorn/
    with running_dev(tmp_path / "a", **per_user) as first:
        with running_dev(tmp_path / "b", **per_user) as second:
            sockets = [first.data_dir / "gunicorn.ctl", second.data_dir / "gunicorn.ctl"]
            assert all(socket_at(path) for path in sockets), tail(second.log)
            assert listeners(sockets[0]) == [first.base_url]
            assert listeners(sockets[1]) == [second.base_url]
        # The second stopped: its socket went with it, the first's is still there.
        assert not sockets[1].exists()
        assert listeners(sockets[0]) == [first.base_url]
    assert not sockets[0].exists()
    assert not (home / ".gunicorn").exists()


def test_web_opens_no_control_socket_at_the_per_user_default(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = no_xdg(service_env(tmp_path / "data"), home)
    env["REDIS_URL"] = os.environ.get("REMINDERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    upgraded = subprocess.run(
        [str(BIN / "reminders"), "db", "upgrade"], env=env, capture_output=True, timeout=60
    )
    assert upgraded.returncode == 0, upgraded.stderr
    port = free_port()
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        web = subprocess.Popen(
            [str(BIN / "reminders"), "web", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        answered = False
        while not answered and time.monotonic() < deadline and web.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                answered = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success
            time.sleep(0.1)
        assert answered, tail(log)
        # The arbiter opens its control socket right after it starts its workers, before
        # any of them can answer.
        assert not (home / ".gunicorn").exists(), tail(log)
        assert "Control socket" not in log.read_text(), tail(log)
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(timeout=30)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait(timeout=10)
