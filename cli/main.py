"""The ``reminders`` command line: the composition root that wires api, workers and shared.

``db upgrade``, ``users create|token|revoke``, ``scan``, ``dlq``, ``endpoints list`` and
``secret-key`` act once and exit.
``web``, ``worker`` and ``scheduler`` are the Procfile's long-running processes (gunicorn,
dramatiq and periodiq with this service's settings). ``dev`` runs all three on the
embedded default; the other commands run beside it use its database and Redis server
(`cli.environment`).
"""

from __future__ import annotations

import json
import os
from typing import NoReturn

import click

from cli.dlq import dlq
from cli.endpoints import endpoints_group
from cli.environment import (
    CommandError,
    ReportingGroup,
    beside_running_instance,
    command_settings,
    prepare_database_directory,
)
from cli.output import emit_json
from cli.processes import (
    executable,
    scheduler_argv,
    scheduler_env,
    web_argv,
    worker_argv,
    worker_env,
)
from shared.config import Settings, settings_or_exit
from shared.exit_status import ExitStatus
from shared.logs import configure_logging
from shared.store.db import make_engine, make_session_factory
from shared.store.schema import upgrade


@click.group(cls=ReportingGroup)
def main() -> None:
    """Reminders: tasks with due dates, each reminded exactly once."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every pending migration (Alembic) to DATABASE_URL."""
    settings = command_settings(create_database=True)
    prepare_database_directory(settings)
    engine = make_engine(settings.resolved_database_url, peer_timeout=settings.peer_timeout_seconds)
    upgrade(engine)
    click.echo(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")


@main.group()
def users() -> None:
    """API users and their tokens."""


def _show_token(name: str, token: str, operator: bool, as_json: bool) -> None:
    """A new token, labelled (or as JSON for scripts): it is shown only this once."""
    if as_json:
        emit_json({"user": name, "token": token, "operator": operator})
        return
    click.echo(f"user:  {name}{' (operator)' if operator else ''}")
    click.echo(
        f"token: {token}  (shown once: only its hash is stored; "
        f"`reminders users token {name}` issues another)"
    )


@users.command("create")
@click.argument("name")
@click.option("--operator", is_flag=True, help="May use the /ops endpoints and page.")
@click.option("--json", "as_json", is_flag=True, help="Print the user and token as JSON.")
def users_create(name: str, operator: bool, as_json: bool) -> None:
    """Create user NAME and print its API token (shown only this once)."""
    from shared.store.accounts import DuplicateUser, create_user

    settings = command_settings()
    sessions = make_session_factory(
        make_engine(settings.resolved_database_url, peer_timeout=settings.peer_timeout_seconds)
    )
    try:
        token = create_user(sessions, name, operator=operator)
    except DuplicateUser as exc:
        raise CommandError(ExitStatus.DATA, str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    _show_token(name, token, operator, as_json)


@users.command("token")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the user and token as JSON.")
def users_token(name: str, as_json: bool) -> None:
    """Give user NAME a new API token and print it (shown only this once).

    The way back in after ``users revoke``; the user's other live tokens stay valid.
    """
    from sqlalchemy import select

    from shared.store.accounts import issue_token
    from shared.store.db import unit_of_work
    from shared.store.models import User

    settings = command_settings()
    sessions = make_session_factory(
        make_engine(settings.resolved_database_url, peer_timeout=settings.peer_timeout_seconds)
    )
    with unit_of_work(sessions) as session:
        user = session.execute(select(User.id, User.is_operator).where(User.name == name)).first()
        if user is None:
            raise CommandError(ExitStatus.NOT_FOUND, f"no user named {name!r}")
        token = issue_token(session, user.id)
    _show_token(name, token, user.is_operator, as_json)


@users.command("revoke")
@click.argument("name")
def users_revoke(name: str) -> None:
    """Revoke every token of user NAME (``users token NAME`` issues a new one)."""
    from shared.store.accounts import revoke_tokens

    settings = command_settings()
    sessions = make_session_factory(
        make_engine(settings.resolved_database_url, peer_timeout=settings.peer_timeout_seconds)
    )
    count = revoke_tokens(sessions, name)
    if count is None:
        raise CommandError(ExitStatus.NOT_FOUND, f"no user named {name!r}")
    click.echo(f"revoked {count} token(s) of {name}")


main.add_command(dlq)
main.add_command(endpoints_group)


@main.command("secret-key")
def secret_key() -> None:
    """Print a new key for REMINDERS_SECRET_KEY (encrypts endpoint secrets at rest)."""
    from shared.delivery.secret_box import generate_key

    click.echo(generate_key())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def scan(as_json: bool) -> None:
    """Run the producer once now and print what it enqueued."""
    from shared.broker.queue import make_broker
    from workers.producer import scan_due_tasks

    settings = command_settings(redis=True)
    configure_logging("WARNING", settings.log_format)
    sessions = make_session_factory(
        make_engine(settings.resolved_database_url, peer_timeout=settings.peer_timeout_seconds)
    )
    result = scan_due_tasks(sessions, make_broker(settings), settings)
    summary = {
        "enqueued": result.enqueued,
        "requeued": result.requeued,
        "missed": result.missed,
        "marked_failed": result.repaired_failed,
        "message_ids": result.message_ids,
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"enqueued {result.enqueued}, requeued {result.requeued}, missed {result.missed}, "
        f"marked failed {result.repaired_failed}"
    )
    for message_id in result.message_ids:
        click.echo(f"  {message_id}")


def _process_env(settings: Settings) -> dict[str, str]:
    """This process's environment, pointed at the ``dev`` running on its data directory."""
    env = dict(os.environ)
    beside = beside_running_instance(settings)
    if beside is not None:
        env.update(
            DATABASE_URL=beside.resolved_database_url,
            REDIS_URL=beside.redis_url,
            REMINDERS_REDIS_NAMESPACE=beside.redis_namespace,
        )
    return env


def _exec(argv: list[str], env: dict[str, str]) -> NoReturn:
    try:
        path = executable(argv[0], env)
    except FileNotFoundError as exc:
        raise CommandError(ExitStatus.UNAVAILABLE, str(exc)) from None
    os.execve(path, [path, *argv[1:]], env)


@main.command()
@click.option("--processes", "-p", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", "-t", default=8, show_default=True, type=click.IntRange(1, 256))
def worker(processes: int, threads: int) -> None:
    """Run a group of Dramatiq worker processes (delivery and the producer)."""
    settings = settings_or_exit()
    _exec(worker_argv(processes, threads), worker_env(settings, _process_env(settings), threads))


@main.command()
def scheduler() -> None:
    """Run the periodiq scheduler that triggers the producer on REMINDERS_SCAN_CRON."""
    _exec(scheduler_argv(), scheduler_env(_process_env(settings_or_exit())))


@main.command()
@click.option("--bind", default="127.0.0.1:8000", show_default=True)
@click.option("--workers", "web_workers", default=2, show_default=True, type=click.IntRange(1, 64))
def web(bind: str, web_workers: int) -> None:
    """Run the HTTP API under gunicorn."""
    _exec(web_argv(bind, web_workers), _process_env(settings_or_exit()))


@main.command()
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--processes", "-p", default=1, show_default=True, type=click.IntRange(1, 16))
def dev(port: int, processes: int) -> None:
    """Run API, scheduler and workers on the embedded default (SQLite, embedded Redis).

    One per data directory: a second is refused. Other commands run beside it (same
    REMINDERS_DATA_DIR) use its database and Redis server.
    """
    from cli.embedded import run_embedded

    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    raise SystemExit(run_embedded(settings, port=port, processes=processes))
