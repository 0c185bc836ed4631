"""``reminders dlq``: the dead-letter commands, and what else operators read of the broker:
queue depths and the receivers' limits state (a table by default, ``--json`` for scripts).

Actions are recorded as done by ``cli:<name>`` (``--as``, default: the login name). Beside a
running ``reminders dev`` they act on its database and embedded Redis server. A dead letter
is named by its message ID; an undecodable one (``UndecodableMessage``) by its broker id;
either by a unique prefix of at least `MIN_PREFIX` hex digits, as git names commits.
"""

from __future__ import annotations

import getpass
import re
import uuid
from dataclasses import asdict

import click

from cli.environment import CommandError, command_settings
from cli.output import emit_json, jsonable, printable, table
from shared.broker.gate import make_gate, webhook_limits
from shared.broker.queue import make_broker
from shared.exit_status import ExitStatus
from shared.ops.dead_letters import (
    DeadLetterDesk,
    DeadLetterFilter,
    DeadLetterView,
    RetryOutcome,
    as_uuid,
)
from shared.ops.receivers import receivers as receiver_views
from shared.store.db import make_engine, make_session_factory

PAGE = 200
MIN_PREFIX = 8  # hex digits: about one ID in four billion shares a given prefix
SHOWN_CANDIDATES = 10
HEX_PREFIX = re.compile(r"[0-9a-fA-F][0-9a-fA-F-]*")


def _desk() -> DeadLetterDesk:
    settings = command_settings(redis=True)
    return DeadLetterDesk(
        make_session_factory(
            make_engine(settings.resolved_database_url, peer_timeout=settings.peer_timeout_seconds)
        ),
        make_broker(settings),
    )


def _operator(name: str | None) -> str:
    return f"cli:{name or getpass.getuser()}"


def _named(desk: DeadLetterDesk, value: str) -> tuple[uuid.UUID, str]:
    """The dead letter ``value`` names, and its whole identifier (to act on, to print).

    A whole message ID (a UUID in any spelling) or broker id is taken as it is; the
    command then says whether it is a dead letter. Anything else of hex digits (and
    dashes) is a prefix that must start the identifier of exactly one live dead letter.

    Raises:
        click.BadParameter: not an identifier, or a prefix of fewer than `MIN_PREFIX` digits.
        CommandError: no dead letter's identifier starts with the prefix, or several do.
    """
    if not value or len(value) > 200 or not value.isprintable() or " " in value:
        raise click.BadParameter(f"{value!r} is not a message ID (a UUID) or a broker id")
    try:
        return uuid.UUID(value), value
    except ValueError:
        pass
    digits = value.replace("-", "")
    if not HEX_PREFIX.fullmatch(value) or len(digits) > 32:
        return as_uuid(value), value  # a broker id that is no UUID: named only whole
    if len(digits) < MIN_PREFIX:
        raise click.BadParameter(
            f"{value!r} is too short: give at least {MIN_PREFIX} hex digits of a message ID"
        )
    found = desk.starting_with(value, limit=SHOWN_CANDIDATES + 1)
    if not found:
        raise CommandError(ExitStatus.NOT_FOUND, f"no dead letter's ID starts with {value}")
    if len(found) > 1:
        count = f"more than {SHOWN_CANDIDATES}" if len(found) > SHOWN_CANDIDATES else len(found)
        shown = [letter.identifier for letter in found[:SHOWN_CANDIDATES]]
        raise CommandError(
            ExitStatus.DATA,
            f"{value} is ambiguous: the IDs of {count} dead letters start with it "
            f"({', '.join(shown)}{', …' if len(found) > SHOWN_CANDIDATES else ''}); "
            "give more digits",
        )
    return found[0].message_id, found[0].identifier


def _not_a_dead_letter(identifier: str) -> CommandError:
    return CommandError(ExitStatus.NOT_FOUND, f"{identifier} is not a dead letter")


NOT_RETRYABLE = (
    "{} cannot be retried: the broker could not decode it, or no reminder matches it, so "
    "there is nothing to send; discard it with `reminders dlq purge {}`"
)


@click.group()
def dlq() -> None:
    """Inspect, retry and discard dead letters."""


@dlq.command("list")
@click.option("--error", "error_type", help="Only this final error type.")
@click.option("--older-than", type=click.IntRange(0), help="Failed at least this many seconds ago.")
@click.option("--json", "as_json", is_flag=True)
def list_(error_type: str | None, older_than: int | None, as_json: bool) -> None:
    """Dead letters, newest first, with their final error."""
    desk = _desk()
    letters: list[DeadLetterView] = []
    after = None
    while True:
        page, after = desk.page(
            DeadLetterFilter.by_age(error_type, older_than), limit=PAGE, after=after
        )
        letters.extend(page)
        if after is None:
            break
    if as_json:
        emit_json(
            {
                "items": [{**asdict(x), "message_id": x.identifier} for x in letters],
                "error_types": desk.error_types(),
            }
        )
        return
    if not letters:
        click.echo("no dead letters")
        return
    click.echo(
        table(
            ["message_id", "task_id", "failed_at", "attempts", "in_broker", "error"],
            [
                [
                    x.identifier,
                    x.task_id,
                    x.failed_at,
                    x.attempts,
                    "yes" if x.in_broker else "expired",
                    x.error,
                ]
                for x in letters
            ],
        )
    )
    by_type = ", ".join(f"{k} {v}" for k, v in desk.error_types().items())
    click.echo("\nby error type: " + printable(by_type))


@dlq.command()
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True)
def show(message_id: str, as_json: bool) -> None:
    """One dead letter, with Dramatiq's traceback (MESSAGE_ID: whole, or 8+ hex digits)."""
    desk = _desk()
    wanted, identifier = _named(desk, message_id)
    letter = desk.show(wanted)
    if letter is None:
        raise _not_a_dead_letter(identifier)
    shown = {**asdict(letter), "message_id": letter.identifier}
    if as_json:
        emit_json(shown)
        return
    for key, value in shown.items():
        if key != "traceback":
            click.echo(f"{key:>11}: {printable(str(jsonable(value)))}")
    traceback = printable(letter.traceback or "(expired)", keep_newlines=True)
    click.echo(f"  traceback (the attempt before the last):\n{traceback}")


@dlq.command()
@click.argument("message_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Every dead letter matching the filters.")
@click.option("--error", "error_type", help="With --all: only this final error type.")
@click.option(
    "--older-than", type=click.IntRange(0), help="With --all: failed at least N seconds ago."
)
@click.option("--dry-run", is_flag=True, help="Say what would be retried; change nothing.")
@click.option("--as", "name", help="Operator name to record (default: login name).")
@click.option("--json", "as_json", is_flag=True)
def retry(
    message_id: str | None,
    everything: bool,
    error_type: str | None,
    older_than: int | None,
    dry_run: bool,
    name: str | None,
    as_json: bool,
) -> None:
    """Enqueue a dead letter again with retries reset (still delivered at most once)."""
    if everything == bool(message_id):
        raise click.UsageError("give a MESSAGE_ID or --all")
    desk = _desk()
    if message_id:
        wanted, identifier = _named(desk, message_id)
        if dry_run:
            # What retry() would do to a live dead letter; reads only.
            found = desk.show(wanted)
            if found is None:
                outcome = RetryOutcome.NOT_FOUND
            elif not found.retryable:
                outcome = RetryOutcome.NOT_RETRYABLE
            else:
                outcome = RetryOutcome.REQUEUED
        else:
            outcome = desk.retry(wanted, _operator(name))
        if outcome is RetryOutcome.NOT_FOUND:
            raise _not_a_dead_letter(identifier)
        if outcome is RetryOutcome.NOT_RETRYABLE:
            raise CommandError(ExitStatus.DATA, NOT_RETRYABLE.format(identifier, identifier))
        if as_json:
            emit_json({"message_id": identifier, "outcome": outcome.value, "dry_run": dry_run})
        elif dry_run:
            click.echo(f"{identifier}: would requeue")
        else:
            click.echo(f"{identifier}: {outcome.value.replace('_', ' ')}")
        return
    ids = desk.retry_matching(
        DeadLetterFilter.by_age(error_type, older_than), _operator(name), dry_run=dry_run
    )
    if as_json:
        emit_json({"dry_run": dry_run, "count": len(ids), "message_ids": ids})
        return
    verb = "would retry" if dry_run else "retried"
    click.echo(f"{verb} {len(ids)} dead letter(s)")
    for item in ids:
        click.echo(f"  {printable(str(item))}")


@dlq.command()
@click.argument("message_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Discard every dead letter.")
@click.option("--yes", is_flag=True, help="Confirm --all without asking.")
@click.option("--as", "name", help="Operator name to record (default: login name).")
def purge(message_id: str | None, everything: bool, yes: bool, name: str | None) -> None:
    """Discard dead letters: the occurrences stay failed, marked discarded."""
    if everything == bool(message_id):
        raise click.UsageError("give a MESSAGE_ID or --all")
    desk = _desk()
    if message_id:
        wanted, identifier = _named(desk, message_id)
        if not desk.discard(wanted, _operator(name)):
            raise _not_a_dead_letter(identifier)
        click.echo(f"discarded {identifier}")
        return
    if not yes:
        raise click.UsageError("purge --all discards every dead letter: add --yes to confirm")
    click.echo(f"discarded {desk.discard_all(_operator(name))} dead letter(s)")


@dlq.command()
@click.option("--json", "as_json", is_flag=True)
def queues(as_json: bool) -> None:
    """Ready, delayed, in-flight and dead messages per queue."""
    depths = _desk().queues()
    if as_json:
        emit_json([asdict(depth) for depth in depths])
        return
    click.echo(
        table(
            ["queue", "ready", "delayed", "in_flight", "dead"],
            [[d.queue, d.ready, d.delayed, d.in_flight, d.dead] for d in depths],
        )
    )


@dlq.command()
@click.option("--json", "as_json", is_flag=True)
def receivers(as_json: bool) -> None:
    """Each receiver's limits state, troubled first: requests in flight, reminders parked,
    back-off (Retry-After), slow lane, and its limits (as GET /ops/receivers)."""
    settings = command_settings(redis=True)
    found = receiver_views(
        make_gate(settings, make_broker(settings)),
        make_session_factory(make_engine(settings.resolved_database_url)),
        webhook_limits(settings),
    )
    if as_json:
        emit_json([asdict(view) for view in found])
        return
    if not found:
        click.echo("no receiver has requests in flight, reminders parked or counts")
        return
    click.echo(
        table(
            [
                "receiver",
                "owner",
                "max_concurrency",
                "max_per_second",
                "in_flight",
                "parked",
                "backing_off_until",
                "slow",
                "average_ms",
                "deferred",
                "throttled",
            ],
            [
                [
                    r.receiver,
                    r.owner or ("(deleted)" if r.endpoint_deleted else "-"),
                    _limit(r.max_concurrency),
                    _limit(r.max_per_second),
                    r.in_flight,
                    r.parked,
                    r.backing_off_until or "-",
                    "yes" if r.slow else "no",
                    "-" if r.average_ms is None else r.average_ms,
                    r.deferred,
                    r.throttled,
                ]
                for r in found
            ],
        )
    )


def _limit(value: float | None) -> str:
    """A limit as given (8, 20, 0.5); "-" for none."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else str(value)
