"""A scheduler tick that arrives late still runs the producer, unless a later run already
covered it (`workers.ticks.LateTicks`).

Real time: each test runs a real Dramatiq worker for a few ticks' processing, under 5 s.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pendulum

from shared.broker.queue import SCAN_QUEUE_NAME
from tests.pipeline.conftest import Stack


def tick(at: datetime) -> str:
    """The ``scheduled_at`` periodiq's scheduler gives a tick due at ``at``."""
    return str(pendulum.instance(at).replace(microsecond=0))


def scans_done(stack: Stack, broker) -> bool:
    """No tick waiting or being processed."""
    client, queue = broker.client, f"{stack.namespace}:{SCAN_QUEUE_NAME}"
    held = f"{stack.namespace}:__acks__.*.{SCAN_QUEUE_NAME}"  # a worker's unacknowledged ones
    acks = sum(client.scard(key) for key in client.scan_iter(held))
    return client.llen(queue) == 0 and acks == 0


def test_a_tick_ninety_seconds_late_still_enqueues_the_due_reminders(stack: Stack) -> None:
    """Its send waited out a 90 s partition; periodiq alone would drop it as older than 30 s
    and the reminders would wait for the next tick."""
    stack.add_due_tasks(stack.account(), 3)
    broker, actors = stack.broker()
    actors.scan_due_tasks.send_with_options(
        scheduled_at=tick(datetime.now(UTC) - timedelta(seconds=90))
    )
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states() == {"sent": 3}, 20)


def test_a_late_tick_a_later_run_covered_is_skipped_and_the_next_one_runs(
    stack: Stack,
) -> None:
    """Ticks queued during an outage (one a minute, or one tick sent by two schedulers): the
    first runs, the ones due before that run started are skipped, a newer one runs."""
    alice = stack.account()
    broker, actors = stack.broker()
    first = datetime.now(UTC) - timedelta(minutes=3)
    actors.scan_due_tasks.send_with_options(scheduled_at=tick(first))
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: scans_done(stack, broker), 20)
        stack.add_due_tasks(alice, 2)
        for minutes in (2, 1):  # due before the first run started: covered by it
            actors.scan_due_tasks.send_with_options(
                scheduled_at=tick(first + timedelta(minutes=minutes))
            )
        actors.scan_due_tasks.send_with_options(scheduled_at=tick(first))  # a duplicate
        assert stack.wait_for(lambda: scans_done(stack, broker), 20)
        assert stack.states() == {"waiting": 2}  # none of those ran the producer

        actors.scan_due_tasks.send_with_options(
            scheduled_at=tick(datetime.now(UTC) + timedelta(seconds=1))
        )
        assert stack.wait_for(lambda: stack.states() == {"sent": 2}, 20)
