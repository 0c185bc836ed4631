"""Every way a ``reminders`` command ends has its exit status (`shared.exit_status`).

A script tells from the status alone what went wrong: 64 the command line, 65 data that
refuse the argument, 66 something named that does not exist, 69 a server that does not
answer, 78 the configuration. Each case is the real command, against the test's own
PostgreSQL schema and Redis namespace, or a closed port.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from shared.exit_status import ExitStatus
from tests.e2e.test_embedded_cli import one_line_error, run_cli, service_env
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import BIN, Stack
from tests.pipeline.test_ops import cli
from tests.processes import free_port

stack = pipeline_harness.stack  # the pipeline tests' fixture: own schema and namespace


def error(done: subprocess.CompletedProcess[str], status: ExitStatus) -> str:
    """The last line of a failed command's error, once its status is checked."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_a_wrong_command_line_exits_64(stack: Stack) -> None:
    usage = ExitStatus.USAGE
    assert usage == 64

    assert "No such command" in error(cli(stack, "dlq", "forget"), usage)
    assert "No such option" in error(cli(stack, "scan", "--everything"), usage)
    assert "No such option" in error(cli(stack, "--verbose", "scan"), usage)
    assert "Missing argument" in error(cli(stack, "dlq", "show"), usage)
    assert "give a MESSAGE_ID or --all" in error(cli(stack, "dlq", "retry"), usage)
    assert "--yes" in error(cli(stack, "dlq", "purge", "--all"), usage)
    assert "at least 8 hex digits" in error(cli(stack, "dlq", "show", "6f1c2a9"), usage)
    assert "user name" in error(cli(stack, "users", "create", "no spaces"), usage)


def test_a_bad_configuration_variable_exits_78(stack: Stack) -> None:
    env = stack.env()
    for name, value in (("REMINDERS_MAX_RETRIES", "many"), ("REMINDERS_LOG_FORMAT", "xml")):
        done = subprocess.run(
            [str(BIN / "reminders"), "dlq", "list"],
            env={**env, name: value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        line = error(done, ExitStatus.CONFIG)
        assert line.startswith(f"configuration error: {name}={value!r}"), line
    assert ExitStatus.CONFIG == 78


def test_names_that_do_not_exist_exit_66_and_names_taken_65(stack: Stack) -> None:
    unknown = str(uuid.uuid4())
    for command in ("show", "retry", "purge"):
        line = error(cli(stack, "dlq", command, unknown), ExitStatus.NOT_FOUND)
        assert line == f"Error: {unknown} is not a dead letter", line
    line = error(cli(stack, "dlq", "show", unknown[:8]), ExitStatus.NOT_FOUND)
    assert line == f"Error: no dead letter's ID starts with {unknown[:8]}", line
    assert "no user named" in error(cli(stack, "users", "token", "nobody"), ExitStatus.NOT_FOUND)
    assert "no user named" in error(cli(stack, "users", "revoke", "nobody"), ExitStatus.NOT_FOUND)
    assert "no user named" in error(cli(stack, "endpoints", "list", "nobody"), 66)

    assert cli(stack, "users", "create", "alice").returncode == 0
    assert "exists already" in error(cli(stack, "users", "create", "alice"), ExitStatus.DATA)
    assert ExitStatus.DATA == 65


def test_an_unreachable_redis_exits_69(tmp_path: Path) -> None:
    closed = free_port()
    env = service_env(tmp_path / "data", REDIS_URL=f"redis://127.0.0.1:{closed}/0")
    assert run_cli(env, tmp_path, "db", "upgrade").returncode == 0

    for args in (
        ["dlq", "list"],
        ["dlq", "show", str(uuid.uuid4())],
        ["dlq", "queues"],
        ["dlq", "receivers"],
    ):
        done = run_cli(env, tmp_path, *args)
        assert f"cannot reach Redis at redis://127.0.0.1:{closed}/0" in one_line_error(done)
        assert done.returncode == ExitStatus.UNAVAILABLE == 69, args


def test_an_unreachable_sentinel_set_exits_69_naming_it_without_its_password(
    tmp_path: Path,
) -> None:
    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    url = f"redis+sentinel://app:do-not-print@{hosts}/reminders/0"
    env = service_env(tmp_path / "data", REDIS_URL=url)
    assert run_cli(env, tmp_path, "db", "upgrade").returncode == 0

    done = run_cli(env, tmp_path, "dlq", "queues")

    line = one_line_error(done)
    assert line.startswith(
        f"Error: cannot reach Redis at redis+sentinel://app:***@{hosts}/reminders/0: "
        "no Sentinel names a primary of 'reminders' that is up ("
    ), line
    assert "Connection refused" in line
    assert "do-not-print" not in done.stdout + done.stderr
    assert done.returncode == ExitStatus.UNAVAILABLE
