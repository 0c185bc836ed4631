"""``reminders dlq show|retry|purge`` name a dead letter by a unique prefix of its ID.

As git names commits: at least 8 hex digits, dashes ignored; the whole ID is printed
back. A prefix several dead letters share is refused with their IDs and changes nothing;
one that none has says so. The dead letters here are real: reminders dead-lettered by
workers whose webhook answers 500, and an undecodable body the worker set aside in Redis
under a broker id chosen to share a reminder's prefix.
"""

from __future__ import annotations

import getpass
import json
import uuid

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters
from shared.exit_status import ExitStatus
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import Receiver, Stack
from tests.pipeline.test_ops import actions, cli, poison
from tests.pipeline.test_poison_messages import NOT_JSON, put_raw

stack = pipeline_harness.stack  # the pipeline tests' fixtures: own schema, namespace, receiver
receiver = pipeline_harness.receiver

OPERATOR = f"cli:{getpass.getuser()}"


def test_a_unique_prefix_names_a_dead_letter(stack: Stack, receiver: Receiver) -> None:
    _, ids = poison(stack, receiver, count=2)
    retried, discarded = sorted(ids)
    if retried[:8] == discarded[:8]:  # one chance in four billion
        retried, discarded = ids[0], ids[1]

    shown = cli(stack, "dlq", "show", retried[:8], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["message_id"] == retried
    assert "webhook answered 500" in json.loads(shown.stdout)["traceback"]

    dry = cli(stack, "dlq", "retry", retried[:8].upper(), "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, f"{retried}: would requeue\n"), dry.stderr
    receiver.script = lambda n: 200
    done = cli(stack, "dlq", "retry", retried[:13], "--json")  # dashes are fine
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "message_id": retried,
        "outcome": "requeued",
        "dry_run": False,
    }

    purged = cli(stack, "dlq", "purge", discarded.replace("-", "")[:12])
    assert (purged.returncode, purged.stdout) == (0, f"discarded {discarded}\n"), purged.stderr
    assert actions(stack) == [(OPERATOR, "retry", retried), (OPERATOR, "discard", discarded)]
    assert {str(r.message_id): r.state for r in stack.reminders()} == {
        retried: "queued",
        discarded: "failed",
    }


def test_an_ambiguous_prefix_lists_the_dead_letters_and_changes_nothing(
    stack: Stack, receiver: Receiver
) -> None:
    broker, [message_id] = poison(stack, receiver)
    digits = message_id.replace("-", "")
    ninth = "0" if digits[8] != "0" else "1"
    twin = digits[:8] + ninth + uuid.uuid4().hex[9:]  # a broker id: 32 hex digits
    put_raw(stack, broker, {twin: NOT_JSON})
    with stack.run_workers(broker):  # the worker sets the undecodable body aside
        assert stack.wait_for(lambda: len(dead_letters(broker, QUEUE_NAME)) == 2, 20)
    prefix = message_id[:8]

    for args in (["show", prefix], ["retry", prefix], ["retry", prefix, "--dry-run"]):
        done = cli(stack, "dlq", *args)
        assert done.returncode == ExitStatus.DATA, (args, done.stdout, done.stderr)
        assert done.stderr.strip().splitlines() == [
            f"Error: {prefix} is ambiguous: the IDs of 2 dead letters start with it "
            f"({', '.join(sorted([message_id, twin]))}); give more digits"
        ]
    assert cli(stack, "dlq", "purge", prefix).returncode == ExitStatus.DATA
    assert stack.states() == {"failed": 1}
    assert actions(stack) == []
    assert len(dead_letters(broker, QUEUE_NAME)) == 2

    # One more digit tells them apart.
    assert cli(stack, "dlq", "purge", twin[:9]).stdout == f"discarded {twin}\n"
    [left] = dead_letters(broker, QUEUE_NAME)
    assert left.message_id == message_id
    shown = cli(stack, "dlq", "show", prefix, "--json")
    assert json.loads(shown.stdout)["message_id"] == message_id

    other = f"{int(prefix, 16) ^ 0xFFFFFFFF:08x}"
    unknown = cli(stack, "dlq", "retry", other)
    assert unknown.returncode == ExitStatus.NOT_FOUND
    assert unknown.stderr.strip() == f"Error: no dead letter's ID starts with {other}"
    too_short = cli(stack, "dlq", "show", message_id[:7])
    assert too_short.returncode == ExitStatus.USAGE
    assert "at least 8 hex digits" in too_short.stderr
