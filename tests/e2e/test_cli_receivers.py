"""``reminders dlq receivers`` prints each receiver's limits state (SPEC §4.9), as
``GET /ops/receivers`` gives it: a table, troubled first, or ``--json``.

The real ``reminders`` command against the test's own PostgreSQL schema and Redis
namespace; the workers' gate is driven directly to set the scene (requests released, so
nothing in it depends on how long the command takes to start).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime
from typing import Any

from dramatiq import Message
from dramatiq.common import current_millis

from shared.broker.gate import Limits, Verdict, make_gate, webhook_limits
from shared.broker.queue import make_broker
from shared.store.db import unit_of_work
from shared.store.models import Endpoint
from tests.conftest import create_account
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import BIN, Stack
from tests.pipeline.test_ops import ROOT

stack = pipeline_harness.stack  # own schema and namespace

WEBHOOK = {
    "webhook_url": "https://hooks.example/reminders",
    "webhook_secret": "s",
    "webhook_max_concurrency": 2,
    "webhook_max_per_second": 0.5,
}
HOUR_MS = 3_600_000


def reminder() -> Message[Any]:
    return Message(
        queue_name="reminders",
        actor_name="send_reminder",
        args=(str(uuid.uuid4()), "2030-01-31T09:00:00+00:00"),
        kwargs={},
        options={"redis_message_id": uuid.uuid4().hex},
        message_id=str(uuid.uuid4()),
    )


def receivers_command(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "reminders"), "dlq", "receivers", *args],
        env=stack.env(**WEBHOOK),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dlq_receivers_prints_each_receiver_s_state_troubled_first(stack: Stack) -> None:
    empty = receivers_command(stack)
    assert (empty.returncode, empty.stdout) == (
        0,
        "no receiver has requests in flight, reminders parked or counts\n",
    )

    settings = stack.settings(**WEBHOOK)
    now = current_millis()
    gate = make_gate(settings, make_broker(settings), clock_ms=lambda: now)
    ada = create_account(stack.engine, "ada")
    endpoint_id = uuid.uuid4()
    with unit_of_work(stack.sessions) as session:
        session.add(
            Endpoint(
                id=endpoint_id,
                owner_id=ada.id,
                url="https://receiver.example/hook",
                secret="not read here",
                max_concurrency=8,
                max_per_second=None,
            )
        )
    limits = webhook_limits(settings)
    asked = reminder()
    assert gate.admit("webhook", limits, asked).verdict is Verdict.ADMITTED
    until = now + HOUR_MS
    gate.release(
        "webhook", asked.message_id, duration_ms=1_400, back_off_ms=HOUR_MS, throttled=True
    )
    done = reminder()
    endpoint_limits = Limits(max_concurrency=8, max_per_second=None)
    assert gate.admit(f"endpoint:{endpoint_id}", endpoint_limits, done).verdict is Verdict.ADMITTED
    gate.release(f"endpoint:{endpoint_id}", done.message_id, duration_ms=20)

    listed = receivers_command(stack)
    as_json = receivers_command(stack, "--json")

    assert listed.returncode == 0, listed.stderr
    [header, webhook_line, endpoint_line] = listed.stdout.splitlines()
    assert header.split() == [
        "RECEIVER",
        "OWNER",
        "MAX_CONCURRENCY",
        "MAX_PER_SECOND",
        "IN_FLIGHT",
        "PARKED",
        "BACKING_OFF_UNTIL",
        "SLOW",
        "AVERAGE_MS",
        "DEFERRED",
        "THROTTLED",
    ]
    shown_until = datetime.fromtimestamp(until / 1000, UTC).isoformat().replace("+00:00", "Z")
    assert webhook_line.split() == [
        "webhook", "-", "2", "0.5", "0", "0", shown_until, "yes", "1400", "0", "1"
    ]  # fmt: skip
    assert endpoint_line.split() == [
        f"endpoint:{endpoint_id}", "ada", "8", "-", "0", "0", "-", "no", "20", "0", "0"
    ]  # fmt: skip
    assert "receiver.example" not in listed.stdout

    assert as_json.returncode == 0, as_json.stderr
    webhook, endpoint = json.loads(as_json.stdout)
    assert webhook == {
        "receiver": "webhook",
        "endpoint_id": None,
        "owner": None,
        "max_concurrency": 2,
        "max_per_second": 0.5,
        "in_flight": 0,
        "parked": 0,
        "backing_off_until": shown_until,
        "slow": True,
        "average_ms": 1400,
        "deferred": 0,
        "throttled": 1,
    }
    assert (endpoint["endpoint_id"], endpoint["owner"]) == (str(endpoint_id), "ada")
    assert (endpoint["max_concurrency"], endpoint["max_per_second"]) == (8, None)
