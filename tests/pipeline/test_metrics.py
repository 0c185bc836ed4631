"""Metrics a user can scrape: the worker group's port and the API's /metrics (SPEC §9)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import queue_depth
from tests.pipeline.conftest import BIN, Stack
from tests.processes import free_port
from workers.producer import scan_due_tasks

ROOT = Path(__file__).resolve().parents[2]


def sample(text: str, name: str) -> float:
    """Sum of a metric's samples whose line starts with ``name`` (labels ignored)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


@pytest.mark.slow
def test_worker_group_serves_pipeline_metrics(stack: Stack) -> None:
    """Real time: a real worker process group serves its metrics once it has delivered."""
    port = free_port()
    alice = stack.account()
    stack.add_due_tasks(alice, 3)
    env = stack.env(metrics_port=port)
    env["REMINDERS_METRICS_HOST"] = "127.0.0.1"
    stack.spawn([str(BIN / "reminders"), "worker", "-p", "1", "-t", "2"], env, cwd=ROOT)
    _, actors = stack.broker()
    actors.scan_due_tasks.send()  # the producer, run by the worker group as periodiq would

    assert stack.wait_for(lambda: stack.states().get("sent", 0) == 3, 30), stack.states()

    def scraped() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return ""

    assert stack.wait_for(lambda: sample(scraped(), "reminders_sent_total") == 3, 15)
    text = scraped()
    assert sample(text, "reminders_lateness_seconds_count") == 3
    assert sample(text, "reminders_scan_duration_seconds_count") == 1
    assert sample(text, "reminders_enqueued_total") == 3
    assert 'channel="log"' in text


def test_api_metrics_report_queue_depth(stack: Stack, api_client_for) -> None:
    alice = stack.account()
    stack.add_due_tasks(alice, 4)
    broker, _ = stack.broker()
    scan_due_tasks(stack.sessions, broker, stack.settings())
    client = api_client_for(stack)

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert 'reminders_queue_messages{queue="reminders",state="ready"} 4.0' in text
    assert queue_depth(broker, QUEUE_NAME).ready == 4
    assert 'reminders_dead_letters{queue="reminders"} 0.0' in text
