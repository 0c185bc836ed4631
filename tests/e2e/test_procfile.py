"""The Procfile's processes, started exactly as written, remind a task created over HTTP.

SPEC §8: production runs the ``Procfile`` (``release``, ``web`` under gunicorn,
``scheduler``, ``worker``) against PostgreSQL and Redis, and ``compose.yaml`` runs the
same commands. Here each Procfile line runs under ``bash -c`` as a real process on the
test's own schema and Redis namespace; the compose file and Dockerfile are checked
against the Procfile so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import BIN, Receiver, Stack
from tests.processes import REPO, free_port, json_lines, procfile, tail
from workers.producer import scan_due_tasks

stack = pipeline_harness.stack  # the pipeline tests' fixture: own schema, namespace, processes
receiver = pipeline_harness.receiver
APP_SERVICES = ("web", "scheduler", "worker")


def run_line(
    stack: Stack, name: str, line: str, env: dict[str, str], logs: Path
) -> subprocess.Popen[bytes]:
    """Start one Procfile line as the platform would: ``bash -c <line>``."""
    with (logs / f"{name}.log").open("wb") as out:
        return stack.spawn(
            ["bash", "-c", line], env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )


@pytest.mark.slow
def test_procfile_processes_deliver_a_task_created_over_http(stack: Stack, tmp_path: Path) -> None:
    lines = procfile()
    assert set(lines) >= {"release", *APP_SERVICES}
    port = free_port()
    env = stack.env(data_dir=str(tmp_path / "data"))
    env.update(PORT=str(port), WEB_CONCURRENCY="2", WORKER_PROCESSES="2", WORKER_THREADS="4")
    assert env["PATH"].split(os.pathsep)[0] == str(BIN)

    release = subprocess.run(
        ["bash", "-c", lines["release"]], env=env, cwd=REPO, capture_output=True, timeout=60
    )
    assert release.returncode == 0, release.stderr.decode(errors="replace")[-2000:]

    processes = {
        name: run_line(stack, name, lines[name], env, tmp_path) for name in ("web", "worker")
    }
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=5) as http:
        deadline = time.monotonic() + 30
        healthy = False
        while not healthy and time.monotonic() < deadline:
            assert processes["web"].poll() is None, tail(tmp_path / "web.log")
            with contextlib.suppress(httpx.TransportError):
                healthy = http.get("/healthz").status_code == 200
            if not healthy:
                time.sleep(0.2)
        assert healthy, tail(tmp_path / "web.log")

        created_user = subprocess.run(
            [str(BIN / "reminders"), "users", "create", "e2e-user", "--json"],
            env=env,
            cwd=REPO,
            capture_output=True,
            timeout=30,
        )
        assert created_user.returncode == 0, created_user.stderr.decode(errors="replace")
        token = json.loads(created_user.stdout)["token"]
        headers = {"Authorization": f"Bearer {token}"}

        due_at = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
        response = http.post(
            "/tasks",
            headers=headers,
            json={
                "title": "renew passport",
                "due_at": due_at.isoformat(),
                "remind_before_seconds": 3600,
            },
        )
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        assert response.headers["Location"].endswith(f"/tasks/{task_id}")

        # Its remind time has passed, so the API enqueued it as it created it; the scheduler
        # runs beside the others all the same, and its scans find nothing left to enqueue.
        processes["scheduler"] = run_line(stack, "scheduler", lines["scheduler"], env, tmp_path)
        reminder: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited:\n{tail(tmp_path / f'{name}.log')}"
            reminder = http.get(f"/tasks/{task_id}", headers=headers).json()["reminder"]
            if reminder["state"] == "sent":
                break
            time.sleep(0.5)
        assert reminder.get("state") == "sent", (
            reminder,
            tail(tmp_path / "scheduler.log"),
            tail(tmp_path / "worker.log"),
        )

        expected_id = str(
            uuid.uuid5(
                uuid.NAMESPACE_URL,
                f"reminders:{task_id}:{due_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}:3600",
            )
        )
        assert reminder["message_id"] == expected_id
        assert (reminder["attempts"], reminder["last_error"]) == (1, None)
        assert reminder["sent_at"] is not None
        history = http.get(f"/tasks/{task_id}/reminders", headers=headers).json()
        assert len(history if isinstance(history, list) else history["items"]) == 1

    sent = [e for e in json_lines(tmp_path / "worker.log") if e.get("event") == "reminder.sent"]
    assert [(e["message_id"], e["task_id"]) for e in sent] == [(expected_id, task_id)]
    assert "renew passport" not in (tmp_path / "worker.log").read_text(errors="replace")
    scans = [e for e in json_lines(tmp_path / "worker.log") if e.get("event") == "scan.finished"]
    assert sum(e["enqueued"] for e in scans) == 0


def log_messages(path: Path) -> list[str]:
    return [str(line.get("message") or line.get("event")) for line in json_lines(path)]


@pytest.mark.slow
def test_procfile_worker_stops_gracefully_when_its_whole_process_group_gets_sigterm(
    stack: Stack, receiver: Receiver, tmp_path: Path
) -> None:
    """systemd's ``KillMode=control-group`` (and ``kill -TERM -<pgid>``): every process of
    the group gets SIGTERM, the worker processes twice (their main process forwards its own).
    Each still stops as after one: what is in flight is delivered, what was fetched ahead
    goes back to the queue, and nothing is sent twice.

    Real time: real processes and signals, a receiver that takes 3 s to answer."""
    receiver.delay_seconds = 3.0
    settings = {"webhook_url": receiver.url, "webhook_secret": "s"}
    env = stack.env(**settings)
    # Two processes of one thread, each fetching two messages: one in flight, one ahead.
    env.update(WORKER_PROCESSES="2", WORKER_THREADS="1", dramatiq_queue_prefetch="2")
    tasks = stack.add_due_tasks(stack.account(), 6)
    broker, _ = stack.broker(**settings)
    assert scan_due_tasks(stack.sessions, broker, stack.settings(**settings)).enqueued == 6
    line = procfile()["worker"]

    worker = run_line(stack, "worker", line, env, tmp_path)
    assert stack.wait_for(lambda: len(receiver.keys()) == 2, 60), tail(tmp_path / "worker.log")
    os.killpg(worker.pid, signal.SIGTERM)  # the group: bash exec'd the worker, its leader

    assert worker.wait(timeout=30) == 0, tail(tmp_path / "worker.log")
    messages = log_messages(tmp_path / "worker.log")
    assert messages.count("Stopping worker process...") == 2, messages
    assert "worker.stop_signal_repeated" in messages
    assert "Killing worker process..." not in messages
    assert stack.states() == {"sent": 2, "queued": 4}  # the two in flight finished

    run_line(stack, "worker-again", line, env, tmp_path)  # the rest go out after a restart
    assert stack.wait_for(lambda: stack.states() == {"sent": 6}, 60), stack.states()
    keys = receiver.keys()
    assert sorted(keys) == sorted({str(row.message_id) for row in stack.reminders()})
    assert len(keys) == len(tasks)  # each once
    assert {row.attempts for row in stack.reminders()} == {1}


def test_release_runs_where_the_working_directory_is_not_writable(
    stack: Stack, tmp_path: Path
) -> None:
    """Like the image: ``USER nobody`` in a ``WORKDIR`` owned by root, PostgreSQL configured."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop the right to write any directory")
    workdir = tmp_path / "app"
    workdir.mkdir()
    workdir.chmod(0o555)
    env = {k: v for k, v in stack.env().items() if k != "REMINDERS_DATA_DIR"}
    # Root without CAP_DAC_OVERRIDE is held to the directory's mode, like any other user.
    drop = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run([*drop, "touch", str(workdir / "probe")], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("could not make the working directory unwritable here")

    release = subprocess.run(
        [*drop, "bash", "-c", procfile()["release"]],
        env=env,
        cwd=workdir,
        capture_output=True,
        timeout=60,
    )

    assert release.returncode == 0, release.stderr.decode(errors="replace")[-1500:]


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "compose.yaml").read_text()))


def test_compose_commands_match_the_procfile() -> None:
    lines = procfile()
    services = compose()["services"]

    for name in ("release", *APP_SERVICES):
        command = services[name]["command"]
        if isinstance(command, str):
            command = shlex.split(command)
        assert command[:2] == ["sh", "-c"] and len(command) == 3, command
        assert command[2].replace("$$", "$") == lines[name], name

    postgres_env = services["postgres"]["environment"]
    for name in ("release", *APP_SERVICES):
        environment = services[name]["environment"]
        database_url = urlsplit(environment["DATABASE_URL"])
        assert database_url.scheme in {"postgresql", "postgresql+psycopg", "postgres"}
        assert (database_url.hostname, database_url.port or 5432) == ("postgres", 5432), name
        assert database_url.username == postgres_env["POSTGRES_USER"]
        assert database_url.password == postgres_env["POSTGRES_PASSWORD"]
        assert database_url.path.lstrip("/") == postgres_env["POSTGRES_DB"]
        redis_url = urlsplit(environment["REDIS_URL"])
        assert redis_url.scheme == "redis" and redis_url.hostname == "redis", name
        assert (redis_url.port or 6379) == 6379
        # API and workers in separate containers must share the endpoint secrets' key:
        # one from the operator, required (compose stops with the message when unset).
        assert environment["REMINDERS_SECRET_KEY"].startswith("${REMINDERS_SECRET_KEY:?"), name

    healthy = "service_healthy"
    assert services["release"]["depends_on"]["postgres"]["condition"] == healthy
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["release"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == healthy, name
        # PostgreSQL: directly, or through the release that waited for it to be healthy.
        assert depends.get("postgres", {}).get("condition", healthy) == healthy, name
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name

    web = services["web"]
    port = web["environment"]["PORT"]
    assert any(str(mapping).split(":")[-1] == str(port) for mapping in web["ports"])


def test_dockerfile_installs_the_package_with_everything_it_needs() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    instructions = [
        line.strip()
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    copied: set[str] = set()
    for instruction in instructions:
        if instruction.upper().startswith("COPY "):
            *sources, _destination = instruction.split()[1:]
            for source in sources:
                assert (REPO / source).exists(), f"the Dockerfile copies a missing {source}"
                copied.add(source.rstrip("/").removeprefix("./"))
    find = project["tool"]["setuptools"]["packages"]["find"]
    packages = [name.rstrip("*") for name in find["include"]]
    readme = project["project"].get("readme")
    needed = {"pyproject.toml", *packages, *([readme] if isinstance(readme, str) else [])}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"
    assert any(
        instruction.upper().startswith("RUN ")
        and "pip install" in instruction
        and instruction.split()[-1] == "."
        for instruction in instructions
    ), "the image installs the package (pip install .), so the `reminders` command exists"
    assert "reminders" in project["project"]["scripts"]
