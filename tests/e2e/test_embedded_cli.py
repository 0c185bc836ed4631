"""The embedded default (``reminders dev``) and the one-shot CLI commands beside it.

SPEC §7 and §8: with no configuration ``reminders dev`` runs the whole service on a
SQLite file and an embedded Redis-protocol server, and prints the API address and a
token once the API answers. A CLI command run next to it (same data directory) talks to
that instance's database and server, never silently to another one. One data directory
holds at most one instance, and nothing of an instance outlives it. A command that cannot
reach its database or broker says so in one line.

Each ``dev`` here is a real process in its own temporary directory, on a free port, with
``REDIS_URL`` and ``DATABASE_URL`` unset; every wait is bounded and every process it
started is stopped (and checked gone) when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from shared.exit_status import ExitStatus
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import BIN, Receiver, Stack
from tests.pipeline.test_ops import actions, cli, poison
from tests.processes import free_port, json_lines, tail

stack = pipeline_harness.stack  # the pipeline tests' fixtures: own schema, namespace, receiver
receiver = pipeline_harness.receiver

BANNER = "Reminders is running"
TOKEN = re.compile(r"rem_[A-Za-z0-9_-]{20,}")


def service_env(data_dir: Path, **more: str) -> dict[str, str]:
    """The environment of a user with nothing configured but ``REMINDERS_DATA_DIR``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REMINDERS_", "DATABASE_URL", "REDIS_URL"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["REMINDERS_DATA_DIR"] = str(data_dir)
    # Should anything reach the shared Redis on the default port, it stays in its own keys.
    env["REMINDERS_REDIS_NAMESPACE"] = f"test-{uuid.uuid4().hex[:12]}"
    env.update(more)
    return env


def run_cli(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "reminders"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def embedded_servers(under: Path) -> list[psutil.Process]:
    """valkey-server processes working in a directory below ``under``."""
    found = []
    for process in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if str(process.info["name"]).startswith("valkey-server") and Path(
                process.cwd()
            ).is_relative_to(under):
                found.append(process)
    return found


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def wait_until(condition: Any, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


@dataclass
class Dev:
    """One ``reminders dev`` process, its output in a file."""

    process: subprocess.Popen[bytes]
    log: Path
    port: int
    data_dir: Path
    env: dict[str, str]
    tree: list[psutil.Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def banner(self, timeout: float = 60) -> str:
        """The output up to the banner, once it is printed; fails if dev exits first."""
        deadline = time.monotonic() + timeout
        while BANNER not in self.output():
            assert self.process.poll() is None, f"dev exited:\n{tail(self.log)}"
            assert time.monotonic() < deadline, f"no banner:\n{tail(self.log)}"
            time.sleep(0.05)
        self.tree = psutil.Process(self.process.pid).children(recursive=True)
        return self.output()

    def token(self) -> str:
        line = next(x for x in self.output().splitlines() if "token:" in x)
        found = TOKEN.search(line)
        assert found, line
        return found.group(0)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, self.data_dir.parent, *args)

    def stop(self, signum: int = signal.SIGINT, timeout: float = 40) -> int | None:
        """Signal dev (as Ctrl-C does), wait, and kill what is left of it; its status."""
        with contextlib.suppress(psutil.Error):
            self.tree = [*self.tree, *psutil.Process(self.process.pid).children(recursive=True)]
        if self.process.poll() is None:
            self.process.send_signal(signum)
        status: int | None
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            status = None
        return status

    def kill_leftovers(self, servers: bool = True) -> None:
        """Kill its processes and (``servers``) every embedded server in its data directory."""
        for process in [*self.tree, *(embedded_servers(self.data_dir) if servers else [])]:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_dev(
    tmp_path: Path,
    name: str = "dev",
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Dev:
    data_dir = data_dir or tmp_path / "project" / ".reminders"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp_path / f"{name}.log"
    full_env = service_env(data_dir, **(env or {}))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "reminders"), "dev", "--port", str(port)],
            env=full_env,
            cwd=data_dir.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C would reach dev alone here too
        )
    return Dev(process, log, port, data_dir, full_env)


@contextlib.contextmanager
def running_dev(tmp_path: Path, name: str = "dev", **env: str) -> Iterator[Dev]:
    """A dev instance up to its banner; stopped after, leaving no process behind."""
    dev = start_dev(tmp_path, name, env=env)
    try:
        dev.banner()
        yield dev
    finally:
        status = dev.stop()
        leftovers = alive(dev.tree) + embedded_servers(dev.data_dir)
        dev.kill_leftovers()
        assert status == 0, f"dev ended with {status}:\n{tail(dev.log)}"
        assert not leftovers, f"left running: {leftovers}"


def _banner_lines(output: str) -> list[str]:
    """The banner's own lines: from its first line to "Ctrl-C stops everything."."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if BANNER in line)
    end = next(i for i, line in enumerate(lines) if i > start and "Ctrl-C stops" in line)
    return lines[start : end + 1]


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The error of a failed command, checked to be a single line and no traceback."""
    assert done.returncode != 0, done.stdout
    text = (done.stderr + done.stdout).strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, text
    return text


def create_task(dev: Dev, token: str) -> str:
    due_at = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    response = httpx.post(
        f"{dev.base_url}/tasks",
        headers={"Authorization": f"Bearer {token}"},
        json={"title": "water the plants", "due_at": due_at.isoformat()},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def reminder_state(dev: Dev, token: str, task_id: str) -> str:
    response = httpx.get(
        f"{dev.base_url}/tasks/{task_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    return str(response.json()["reminder"]["state"])


# -- the banner --------------------------------------------------------------------------


@pytest.mark.slow
def test_banner_is_printed_once_the_api_answers_and_says_what_is_running(
    tmp_path: Path,
) -> None:
    with running_dev(tmp_path) as dev:
        banner = dev.banner()
        # No retry: the moment the banner is out, the API answers.
        assert httpx.get(f"{dev.base_url}/healthz", timeout=5).status_code == 200

        assert f"http://127.0.0.1:{dev.port}" in banner
        assert re.search(r"token:\s+rem_\S+ +\(an operator token", banner), banner
        assert "delivery: log channel" in banner
        assert "REMINDERS_ALLOW_PRIVATE_ENDPOINTS" not in banner
        # Not a terminal: every line but the banner's is a JSON object, and the migrations
        # (Alembic at INFO) said nothing.
        text_lines = [x for x in banner.splitlines() if x.strip() and not x.startswith("{")]
        assert text_lines == [x for x in _banner_lines(banner) if x.strip()], text_lines
        assert json_lines(dev.log), banner
        assert not [e for e in json_lines(dev.log) if e.get("logger", "").startswith("alembic")]
        token = dev.token()
        tasks = httpx.get(
            f"{dev.base_url}/tasks", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        assert tasks.status_code == 200, tasks.text


# -- the CLI beside a running dev ----------------------------------------------------------


@pytest.mark.slow
def test_cli_beside_dev_scans_into_and_lists_from_its_embedded_server(tmp_path: Path) -> None:
    hook = Receiver(script=lambda n: 400).start()  # refused: dead-lettered at once
    try:
        with running_dev(
            tmp_path, REMINDERS_WEBHOOK_URL=hook.url, REMINDERS_WEBHOOK_SECRET="s"
        ) as dev:
            assert f"delivery: webhook to {hook.url}" in dev.banner()
            token = dev.token()
            task_id = create_task(dev, token)

            scanned = dev.cli("scan", "--json")
            assert scanned.returncode == 0, scanned.stderr
            # The scan enqueued into dev's server, so dev's worker delivers it.
            assert wait_until(lambda: reminder_state(dev, token, task_id) == "failed", 30), (
                reminder_state(dev, token, task_id),
                tail(dev.log),
            )

            listed = dev.cli("dlq", "list", "--json")
            assert listed.returncode == 0, listed.stderr
            [item] = json.loads(listed.stdout)["items"]
            assert item["task_id"] == task_id
            assert item["in_broker"] is True
            table = dev.cli("dlq", "list")
            assert "expired" not in table.stdout and "yes" in table.stdout, table.stdout
            queues = {q["queue"]: q for q in json.loads(dev.cli("dlq", "queues", "--json").stdout)}
            assert queues["reminders"]["dead"] == 1
            assert len(hook.receipts) == 1
    finally:
        hook.stop()


@pytest.mark.slow
def test_the_data_is_private_and_the_embedded_server_needs_its_password(tmp_path: Path) -> None:
    data_dir = tmp_path / "project" / ".reminders"
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o755)  # as an earlier version left it
    with running_dev(tmp_path) as dev:
        output = dev.banner()
        assert f"made {data_dir} private to its owner (mode 0755 -> 0700)" in output, output
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((data_dir / "instance.json").stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "redis" / "valkey.conf").stat().st_mode) == 0o600

        redis_url = json.loads((data_dir / "instance.json").read_text())["redis_url"]
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        stranger = redis.Redis(port=port, socket_connect_timeout=3, socket_timeout=3)
        with pytest.raises(redis.AuthenticationError):
            stranger.ping()
        with pytest.raises(redis.AuthenticationError):
            stranger.keys("*")
        stranger.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password="guess", socket_timeout=3).ping()
        owner = redis.Redis.from_url(redis_url, socket_timeout=3)
        assert owner.ping() is True
        owner.close()

        # The commands beside dev find the password in the instance file.
        listed = dev.cli("dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["items"] == []
        assert dev.cli("dlq", "queues").returncode == 0
    # A new data directory is private from the start (no notice then).
    with running_dev(tmp_path / "fresh") as fresh:
        assert "private to its owner" not in fresh.banner()
        assert stat.S_IMODE(fresh.data_dir.stat().st_mode) == 0o700


def test_db_upgrade_makes_the_data_directory_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "project" / ".reminders"
    data_dir.mkdir(parents=True, mode=0o755)
    data_dir.chmod(0o755)

    done = run_cli(service_env(data_dir), data_dir.parent, "db", "upgrade")

    assert done.returncode == 0, done.stderr
    assert f"made {data_dir} private to its owner (mode 0755 -> 0700)" in done.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert (data_dir / "reminders.db").is_file()


@pytest.mark.slow
def test_a_revoked_user_is_given_a_new_token(tmp_path: Path) -> None:
    with running_dev(tmp_path) as dev:
        created = dev.cli("users", "create", "alice", "--json")
        assert created.returncode == 0, created.stderr
        made = json.loads(created.stdout)
        assert (made["user"], made["operator"]) == ("alice", False)
        first = made["token"]
        assert dev.cli("users", "revoke", "alice").returncode == 0

        issued = dev.cli("users", "token", "alice")
        assert issued.returncode == 0, issued.stderr
        label = re.fullmatch(r"user:  alice\ntoken: (\S+)  \(shown once: .*\)\n", issued.stdout)
        assert label, issued.stdout
        second = label.group(1)

        def status(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return httpx.get(f"{dev.base_url}/tasks", headers=headers, timeout=5).status_code

        assert TOKEN.fullmatch(first) and TOKEN.fullmatch(second), (made, issued.stdout)
        assert (status(first), status(second)) == (401, 200)
        nobody = dev.cli("users", "token", "nobody")
        assert "no user named" in one_line_error(nobody)
        assert nobody.returncode == ExitStatus.NOT_FOUND == 66


# -- one instance per data directory, nothing left behind ----------------------------------


def _snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(path.relative_to(directory)): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.suffix not in {".db", ".log", ".db-wal", ".db-shm"}
    }


@pytest.mark.slow
def test_a_second_dev_on_the_same_data_directory_is_refused_before_touching_anything(
    tmp_path: Path,
) -> None:
    with running_dev(tmp_path, "first") as first:
        before = _snapshot(first.data_dir)
        second = start_dev(tmp_path, "second", data_dir=first.data_dir)
        try:
            status = second.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            second.stop()
            second.kill_leftovers(servers=False)  # the first's server works there too
        output = second.output().strip()

        assert status == ExitStatus.TRY_AGAIN == 75, output
        assert len(output.splitlines()) == 1, output
        assert "already running" in output and str(first.data_dir) in output, output
        assert BANNER not in output
        assert _snapshot(first.data_dir) == before
        assert len(embedded_servers(tmp_path)) == 1
        assert httpx.get(f"{first.base_url}/healthz", timeout=5).status_code == 200
        assert first.cli("dlq", "queues").returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_dev_stops_every_process_and_the_embedded_server(
    tmp_path: Path, signum: int
) -> None:
    dev = start_dev(tmp_path)
    try:
        dev.banner()
        assert len(embedded_servers(tmp_path)) == 1
        status = dev.stop(signum)

        assert status == 0, tail(dev.log)
        assert alive(dev.tree) == []
        assert embedded_servers(tmp_path) == []
        # With dev stopped, the CLI does not fall back to another Redis server: its Redis
        # server is unavailable, and the status says so.
        listed = dev.cli("dlq", "list")
        stopped = one_line_error(listed)
        assert "not running" in stopped and str(dev.data_dir) in stopped, stopped
        assert listed.returncode == ExitStatus.UNAVAILABLE == 69
    finally:
        dev.kill_leftovers()


@pytest.mark.slow
def test_a_killed_dev_takes_its_processes_along_and_the_next_dev_starts(tmp_path: Path) -> None:
    dev = start_dev(tmp_path)
    try:
        dev.banner()
        dev.process.kill()
        dev.process.wait(timeout=10)

        assert wait_until(lambda: not alive(dev.tree), 20), alive(dev.tree)
        assert embedded_servers(tmp_path) == []
        # What the killed dev left in its data directory does not pass for a running one.
        assert "not running" in one_line_error(dev.cli("dlq", "list"))
    finally:
        dev.kill_leftovers()

    with running_dev(tmp_path, "again") as again:
        assert again.cli("dlq", "queues").returncode == 0


@pytest.mark.slow
def test_a_child_that_dies_stops_dev_and_the_embedded_server(tmp_path: Path) -> None:
    dev = start_dev(tmp_path)
    try:
        dev.banner()
        [web] = [
            p
            for p in psutil.Process(dev.process.pid).children()
            if "gunicorn" in " ".join(p.cmdline())
        ]
        web.kill()
        status = dev.process.wait(timeout=40)

        assert status == ExitStatus.SOFTWARE == 70
        assert "web exited" in dev.output()
        assert wait_until(lambda: not alive(dev.tree), 20), alive(dev.tree)
        assert embedded_servers(tmp_path) == []
    finally:
        dev.kill_leftovers()


# -- one-line errors -----------------------------------------------------------------------


def test_commands_outside_the_project_folder_say_so_in_one_line(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = service_env(Path(".reminders"))
    del env["REMINDERS_DATA_DIR"]

    for args in (["dlq", "list"], ["scan"], ["users", "create", "bob"], ["users", "token", "bob"]):
        done = run_cli(env, elsewhere, *args)
        error = one_line_error(done)
        assert "no database" in error and str(elsewhere / ".reminders") in error, (args, error)
        assert done.returncode == ExitStatus.NOT_FOUND == 66, args
    assert list(elsewhere.iterdir()) == []


def test_an_unusable_data_directory_is_named_in_one_line(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    env = service_env(not_a_directory / "data")

    for args in (["dev", "--port", str(free_port())], ["db", "upgrade"], ["dlq", "list"]):
        done = run_cli(env, tmp_path, *args)
        error = one_line_error(done)
        assert "REMINDERS_DATA_DIR" in error and str(not_a_directory) in error, (args, error)
        assert done.returncode == ExitStatus.CONFIG == 78, args
    assert embedded_servers(tmp_path) == []


def test_an_unreachable_broker_or_database_is_one_line(tmp_path: Path) -> None:
    closed = free_port()
    env = service_env(tmp_path / "data", REDIS_URL=f"redis://127.0.0.1:{closed}/0")
    assert run_cli(env, tmp_path, "db", "upgrade").returncode == 0

    for args in (["scan"], ["dlq", "queues"]):
        done = run_cli(env, tmp_path, *args)
        error = one_line_error(done)
        assert error.startswith(f"Error: cannot reach Redis at redis://127.0.0.1:{closed}/0: ")
        assert done.returncode == 69
    env["REDIS_URL"] = f"redis://:hunter2@127.0.0.1:{closed}/0"
    error = one_line_error(run_cli(env, tmp_path, "dlq", "queues"))
    assert f"redis://:***@127.0.0.1:{closed}/0" in error and "hunter2" not in error

    env = service_env(
        tmp_path / "data", DATABASE_URL=f"postgresql://reminders:hunter2@127.0.0.1:{closed}/app"
    )
    done = run_cli(env, tmp_path, "users", "create", "carol")
    error = one_line_error(done)
    where = f"postgresql+psycopg://reminders:***@127.0.0.1:{closed}/app"
    assert error.startswith(f"Error: cannot reach the database at {where}: "), error
    assert "hunter2" not in error
    assert done.returncode == 69


# -- dry runs --------------------------------------------------------------------------------


def test_a_dry_run_retry_of_one_dead_letter_changes_nothing(
    stack: Stack, receiver: Receiver
) -> None:
    _, [message_id] = poison(stack, receiver)
    receiver.script = lambda n: 200

    dry = cli(stack, "dlq", "retry", message_id, "--dry-run")
    dry_json = cli(stack, "dlq", "retry", message_id, "--dry-run", "--json")

    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == f"{message_id}: would requeue"
    assert json.loads(dry_json.stdout) == {
        "message_id": message_id,
        "outcome": "requeued",
        "dry_run": True,
    }
    assert stack.states() == {"failed": 1}
    assert actions(stack) == []
    listed = json.loads(cli(stack, "dlq", "list", "--json").stdout)["items"]
    assert [(x["message_id"], x["in_broker"]) for x in listed] == [(message_id, True)]
    missing = cli(stack, "dlq", "retry", str(uuid.uuid4()), "--dry-run")
    assert missing.returncode == ExitStatus.NOT_FOUND and "not a dead letter" in missing.stderr


# -- what goes where -------------------------------------------------------------------------


def test_an_action_answers_on_stdout_and_logs_its_event_on_stderr(
    stack: Stack, receiver: Receiver
) -> None:
    _, [message_id] = poison(stack, receiver)

    done = cli(stack, "dlq", "retry", message_id, "--json", "--as", "pat")

    assert done.returncode == 0, done.stderr
    # stdout is the answer alone, for a script to parse; the audit event is a log line.
    assert json.loads(done.stdout) == {
        "message_id": message_id,
        "outcome": "requeued",
        "dry_run": False,
    }
    [event] = [json.loads(line) for line in done.stderr.splitlines()]
    assert (event["event"], event["operator"], event["message_id"]) == (
        "ops.retry",
        "cli:pat",
        message_id,
    )
