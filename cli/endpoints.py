"""``reminders endpoints``: users' webhook endpoints and their health, for operators.

A table by default, ``--json`` for scripts. Never a secret: operators see where reminders
go, whether they arrive and how fast each endpoint takes them (its delivery limits), not how
they are signed.
"""

from __future__ import annotations

from dataclasses import asdict

import click

from cli.environment import CommandError, command_settings
from cli.output import emit_json, table
from shared.delivery import endpoints
from shared.exit_status import ExitStatus
from shared.store.db import make_engine, make_session_factory


@click.group("endpoints")
def endpoints_group() -> None:
    """Users' own webhook endpoints."""


@endpoints_group.command("list")
@click.argument("user", required=False)
@click.option("--failing", is_flag=True, help="Only disabled endpoints and failing ones.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def endpoints_list(user: str | None, failing: bool, as_json: bool) -> None:
    """List the endpoints of USER (default: every user), disabled and failing first."""
    settings = command_settings()
    sessions = make_session_factory(
        make_engine(settings.resolved_database_url, peer_timeout=settings.peer_timeout_seconds)
    )
    with sessions() as session:
        if user is not None and not endpoints.user_exists(session, user):
            raise CommandError(ExitStatus.NOT_FOUND, f"no user named {user!r}")
        found = endpoints.health(session, user, failing_only=failing)
    if as_json:
        emit_json([asdict(endpoint) for endpoint in found])
        return
    if not found:
        click.echo("no endpoints")
        return
    headers = (
        "endpoint",
        "owner",
        "url",
        "state",
        "max_concurrency",
        "max_per_second",
        "failing since",
        "last success",
        "last error",
    )
    rows = [
        (
            endpoint.id,
            endpoint.owner,
            endpoint.url,
            "enabled" if endpoint.enabled else "DISABLED",
            endpoint.max_concurrency,
            _rate(endpoint.max_per_second),
            endpoint.failing_since,
            endpoint.last_success_at,
            _problem(endpoint),
        )
        for endpoint in found
    ]
    click.echo(table(headers, rows))


def _problem(endpoint: endpoints.EndpointHealth) -> str:
    """Why it is disabled, or its last error while it is failing; nothing when healthy."""
    if not endpoint.enabled:
        return endpoint.disabled_reason or ""
    return (endpoint.last_error or "") if endpoint.failing_since else ""


def _rate(per_second: float | None) -> str:
    """Requests per second as the owner gave them (20, 0.5); "-" for no rate limit."""
    if per_second is None:
        return "-"
    return str(int(per_second)) if per_second.is_integer() else str(per_second)
