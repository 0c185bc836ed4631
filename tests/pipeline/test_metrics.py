"""Metrics a user can scrape: the worker group's port and the API's /metrics (SPEC §9)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import queue_depth
from tests.pipeline.conftest import BIN, Stack
from tests.processes import free_port, json_lines, tail
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


def scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return ""


def sent_in_log(log: Path) -> int:
    return sum(1 for event in json_lines(log) if event.get("event") == "reminder.sent")


@pytest.mark.slow
def test_two_worker_groups_on_one_host_each_serve_their_own_counts(
    stack: Stack, tmp_path: Path
) -> None:
    """Real time: real worker groups, started one after the other on one host (one temporary
    directory), share the queue; each group's port serves what that group delivered.

    A third group started on the first one's port (as an overlapping restart would) cannot
    serve, but leaves the first group's files alone."""
    first_port, second_port = free_port(), free_port()
    env = stack.env()
    env["REMINDERS_METRICS_HOST"] = "127.0.0.1"
    owner = stack.account()
    _, actors = stack.broker()
    groups: dict[str, tuple[int, Path]] = {}

    def start(name: str, port: int) -> None:
        log = tmp_path / f"{name}.log"
        argv = [str(BIN / "reminders"), "worker", "-p", "1", "-t", "2"]
        stack.spawn_logged(argv, {**env, "REMINDERS_METRICS_PORT": str(port)}, log)
        groups[name] = (port, log)

    def deliver(count: int) -> None:
        before = stack.states().get("sent", 0)
        stack.add_due_tasks(owner, count)
        actors.scan_due_tasks.send()
        assert stack.wait_for(lambda: stack.states().get("sent", 0) == before + count, 60), (
            stack.states()
        )

    start("first", first_port)
    deliver(10)  # all by the first group, counted in its files before the others start
    assert stack.wait_for(lambda: sample(scrape(first_port), "reminders_sent_total") == 10, 15)
    start("second", second_port)
    start("third", first_port)
    for name in ("second", "third"):
        log = groups[name][1]
        assert stack.wait_for(lambda log=log: "ready for action" in log.read_text(), 30), name
    deliver(30)

    by_group = {name: sent_in_log(log) for name, (_, log) in groups.items()}
    assert sum(by_group.values()) == 40 and by_group["first"] >= 10, by_group
    for name in ("first", "second"):
        port, log = groups[name]
        served = by_group[name]
        assert stack.wait_for(
            lambda port=port, served=served: sample(scrape(port), "reminders_sent_total") == served,
            15,
        ), (name, by_group, sample(scrape(port), "reminders_sent_total"), tail(log))


def test_a_new_group_keeps_a_live_groups_metrics_dir_and_removes_an_ended_ones(
    tmp_path: Path,
) -> None:
    """Each group's directory is locked by the group's main process while it lives."""
    from cli.processes import GROUP_LOCK, claim_metrics_dir

    holder = subprocess.Popen(
        [
            str(BIN / "python"),
            "-c",
            "import sys, time; from pathlib import Path; from cli.processes import "
            "claim_metrics_dir; print(claim_metrics_dir(9400, Path(sys.argv[1])), flush=True); "
            "time.sleep(60)",
            str(tmp_path),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        live = Path(holder.stdout.readline().strip())
        (live / "counter_1.db").write_bytes(b"live")
        ended = Path(tmp_path / "reminders-metrics-9400-ended")
        ended.mkdir()
        (ended / GROUP_LOCK).touch()  # nobody holds its lock: its group is gone

        mine = claim_metrics_dir(9400, tmp_path)

        assert (live / "counter_1.db").read_bytes() == b"live"
        assert not ended.exists()
        assert mine.is_dir() and mine != live and (mine / GROUP_LOCK).exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    claim_metrics_dir(9400, tmp_path)  # the holder has ended now: its directory goes
    assert not live.exists()


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
