"""The ``/ops`` page's Receivers table, in a real Chromium, while real workers deliver
(SPEC §4.9): the deployment's webhook limited to one request at a time, answering slowly,
shows its request in flight, the reminders parked behind it and the slow lane, then drains.

As `tests/e2e/test_ops_page.py`: the real app behind a real HTTP server on 127.0.0.1, a real
Dramatiq worker and a webhook receiver on 127.0.0.1. Real time: the receiver holds each
request 2.5 s, so three reminders take about 8 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from tests.conftest import create_account, served
from tests.e2e import test_ops_page as ops_harness
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import Receiver, Stack
from workers.producer import scan_due_tasks

receiver = pipeline_harness.receiver  # a local webhook endpoint
stack = pipeline_harness.stack  # own schema, namespace, workers
browser = ops_harness.browser  # Debian's Chromium
page = ops_harness.page  # a fresh profile and one tab
sign_in, reload_until, table = ops_harness.sign_in, ops_harness.reload_until, ops_harness.table

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

COLUMNS = [
    "receiver",
    "owner",
    "limits",
    "in flight",
    "parked",
    "backing off until",
    "slow lane",
    "average",
    "deferred",
    "throttled",
]
HOLD_SECONDS = 2.5


@pytest.fixture
def limited(stack: Stack, receiver: Receiver) -> dict[str, Any]:
    """The deployment webhook's settings: one request at a time to a slow receiver."""
    receiver.delay_seconds = HOLD_SECONDS
    return {"webhook_url": receiver.url, "webhook_secret": "s", "webhook_max_concurrency": 1}


@pytest.fixture
def server(stack: Stack, limited: dict[str, Any]) -> Iterator[str]:
    """The real app, with the webhook's limits, on 127.0.0.1."""
    with served(create_app(stack.settings(**limited), engine=stack.engine)) as url:
        yield url


def webhook_row(page: Any) -> dict[str, str] | None:
    for cells in table(page, "#receivers"):
        if cells[0] == "deployment webhook":
            return dict(zip(COLUMNS, cells, strict=True))
    return None


def test_the_receivers_table_shows_a_limited_slow_webhook_while_workers_deliver(
    stack: Stack,
    receiver: Receiver,
    limited: dict[str, Any],
    server: str,
    page: Any,
    tmp_path: Path,
) -> None:
    olivia = create_account(stack.engine, "olivia", operator=True)
    sign_in(page, server, olivia.token)
    assert page.locator("#no-receivers").inner_text().startswith("None: no receiver has")

    owner = stack.account("owen")
    for n in range(3):
        stack.add_task(owner, datetime.now(UTC) + timedelta(minutes=10 + n), 3600)
    broker, _ = stack.broker(**limited)
    scan_due_tasks(stack.sessions, broker, stack.settings(**limited))
    with stack.run_workers(broker):
        # One request at the receiver, the two others parked behind it; after a second in
        # flight the webhook is slow.
        def busy() -> bool:
            row = webhook_row(page)
            return row is not None and (row["in flight"], row["parked"]) == ("1", "2")

        assert reload_until(page, busy, timeout=10), table(page, "#receivers")
        assert reload_until(page, lambda: (webhook_row(page) or {})["slow lane"] == "yes")
        row = webhook_row(page)
        assert row is not None and row["limits"] == "1 at once, no rate limit"
        assert row["in flight"] == "1" and row["backing off until"] == ""
        page.screenshot(path=str(tmp_path / "ops-receivers-busy.png"), full_page=True)

        assert stack.wait_for(lambda: stack.states() == {"sent": 3}, 30)

    assert len(receiver.receipts) == 3
    page.reload()
    row = webhook_row(page)
    assert row is not None
    assert (row["in flight"], row["parked"], row["slow lane"]) == ("0", "0", "yes")
    assert int(row["average"].removesuffix(" ms")) >= HOLD_SECONDS * 1000
    assert int(row["deferred"]) >= 2 and row["throttled"] == "0"
    page.screenshot(path=str(tmp_path / "ops-receivers-drained.png"), full_page=True)

    # On a phone-sized screen the table stacks, one labelled field a line, without
    # horizontal scrolling.
    page.set_viewport_size({"width": 420, "height": 900})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    box = page.locator('#receivers tr[data-receiver="webhook"]').bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 420
    page.screenshot(path=str(tmp_path / "ops-receivers-420.png"), full_page=True)
