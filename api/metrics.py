"""``GET /metrics``: Prometheus text for the queue as this API process sees it.

Queue and dead-letter depths are read from the broker at scrape time, so every gunicorn
worker reports the same numbers. Delivery counters (sent, retried, dead-lettered, lateness)
are the worker group's, on its own port (``REMINDERS_METRICS_PORT``).
"""

from __future__ import annotations

from collections.abc import Iterator

from dramatiq.brokers.redis import RedisBroker
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import queue_depth


class QueueDepthCollector(Collector):
    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = queue_depth(self.broker, QUEUE_NAME)
        messages = GaugeMetricFamily(
            "reminders_queue_messages",
            "Messages in the reminder queue, by state.",
            labels=["queue", "state"],
        )
        for state in ("ready", "delayed", "in_flight"):
            messages.add_metric([depth.queue, state], getattr(depth, state))
        yield messages
        dead = GaugeMetricFamily(
            "reminders_dead_letters",
            "Dead-lettered reminder messages held by the broker.",
            labels=["queue"],
        )
        dead.add_metric([depth.queue], depth.dead)
        yield dead


def metrics_registry(broker: RedisBroker) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueDepthCollector(broker))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
