"""The ceiling of the end-to-end benchmark: a no-op Dramatiq actor on the same broker setup.

Loaded by ``dramatiq bench.noop_app`` with the same environment and worker settings as the
real workers, so the difference is only what the reminder actor does.
"""

from __future__ import annotations

import dramatiq

from shared.broker.queue import make_broker
from shared.config import load_settings

NOOP_QUEUE = "bench_noop"

broker = make_broker(load_settings())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=NOOP_QUEUE, actor_name="noop", broker=broker)
def noop(task_id: str, due_at: str) -> None:
    """Accept a message shaped like a reminder and do nothing."""
