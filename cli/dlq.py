"""``reminders dlq``: the dead-letter commands (a table by default, ``--json`` for scripts).

Actions are recorded as done by ``cli:<name>`` (``--as``, default: the login name). Beside a
running ``reminders dev`` they act on its database and embedded Redis server. A dead letter
is named by its message ID; an undecodable one (``UndecodableMessage``) by its broker id.
"""

from __future__ import annotations

import getpass
import uuid
from dataclasses import asdict

import click

from cli.environment import CommandError, command_settings
from cli.output import emit_json, jsonable, table
from shared.broker.queue import make_broker
from shared.exit_status import ExitStatus
from shared.ops.dead_letters import (
    DeadLetterDesk,
    DeadLetterFilter,
    DeadLetterView,
    RetryOutcome,
    as_uuid,
)
from shared.store.db import make_engine, make_session_factory

PAGE = 200


def _desk() -> DeadLetterDesk:
    settings = command_settings(redis=True)
    return DeadLetterDesk(
        make_session_factory(make_engine(settings.resolved_database_url)), make_broker(settings)
    )


def _operator(name: str | None) -> str:
    return f"cli:{name or getpass.getuser()}"


def _message_id(value: str) -> uuid.UUID:
    """A message ID, or the broker id of an undecodable dead letter (any non-blank word)."""
    if not value or len(value) > 200 or not value.isprintable() or " " in value:
        raise click.BadParameter(f"{value!r} is not a message ID (a UUID) or a broker id")
    return as_uuid(value)


def _identifier(letter: DeadLetterView) -> str:
    """What operators type to name ``letter``: an undecodable message has only a broker id."""
    if letter.broker_id is not None and letter.message_id == as_uuid(letter.broker_id):
        return letter.broker_id
    return str(letter.message_id)


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
                "items": [{**asdict(x), "message_id": _identifier(x)} for x in letters],
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
                    _identifier(x),
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
    click.echo("\nby error type: " + ", ".join(f"{k} {v}" for k, v in desk.error_types().items()))


@dlq.command()
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True)
def show(message_id: str, as_json: bool) -> None:
    """One dead letter, with Dramatiq's traceback."""
    letter = _desk().show(_message_id(message_id))
    if letter is None:
        raise CommandError(ExitStatus.NOT_FOUND, f"{message_id} is not a dead letter")
    shown = {**asdict(letter), "message_id": _identifier(letter)}
    if as_json:
        emit_json(shown)
        return
    for key, value in shown.items():
        if key != "traceback":
            click.echo(f"{key:>11}: {jsonable(value)}")
    click.echo(f"  traceback (the attempt before the last):\n{letter.traceback or '(expired)'}")


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
        wanted = _message_id(message_id)
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
            raise CommandError(ExitStatus.NOT_FOUND, f"{message_id} is not a dead letter")
        if outcome is RetryOutcome.NOT_RETRYABLE:
            raise CommandError(ExitStatus.DATA, NOT_RETRYABLE.format(message_id, message_id))
        if as_json:
            emit_json({"message_id": message_id, "outcome": outcome.value, "dry_run": dry_run})
        elif dry_run:
            click.echo(f"{message_id}: would requeue")
        else:
            click.echo(f"{message_id}: {outcome.value.replace('_', ' ')}")
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
        click.echo(f"  {item}")


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
        if not desk.discard(_message_id(message_id), _operator(name)):
            raise CommandError(ExitStatus.NOT_FOUND, f"{message_id} is not a dead letter")
        click.echo(f"discarded {message_id}")
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
