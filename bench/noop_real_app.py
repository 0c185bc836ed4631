"""The no-op ceiling with the real worker's broker: its middleware, its queues, a no-op actor.

Loaded by ``dramatiq bench.noop_real_app``. It imports ``workers.app``, so the broker is the
one the real worker builds (``shared.broker.queue.make_broker`` plus what
``workers.actors.declare_actors`` adds: failed-attempt recording, the database gate,
periodiq's middleware) and the worker consumes the same queues. The no-op actor listens on
the reminders queue itself: the difference from the real pipeline is only what
``send_reminder`` does. ``bench.noop_app`` is the plain variant (Dramatiq's default
middleware and retries, one queue).
"""

from __future__ import annotations

import dramatiq

from shared.broker.queue import QUEUE_NAME
from workers.app import broker

NOOP_ACTOR = "bench_noop"


@dramatiq.actor(queue_name=QUEUE_NAME, actor_name=NOOP_ACTOR, broker=broker)
def noop(task_id: str, due_at: str) -> None:
    """Accept a message shaped like a reminder and do nothing."""
