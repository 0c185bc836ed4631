"""The ``/ops`` page's search, in a real Chromium: by task or message ID and by owner, and
a bulk action by filter acts on exactly what the search lists, never more.

As `tests/e2e/test_ops_page.py`: the real app behind a real HTTP server on 127.0.0.1, dead
letters made for real by workers against a webhook answering 500.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest

from tests.conftest import create_account
from tests.e2e import test_ops_page as ops_harness
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import Receiver, Stack, reminder_id
from workers.producer import scan_due_tasks

receiver = pipeline_harness.receiver  # a local webhook endpoint
stack = pipeline_harness.stack  # own schema, namespace, workers
browser = ops_harness.browser  # Debian's Chromium
page = ops_harness.page  # a fresh profile and one tab
server = ops_harness.server  # the real app on 127.0.0.1
dead_letter_row, reminder = ops_harness.dead_letter_row, ops_harness.reminder
sign_in = ops_harness.sign_in

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def dead_by_owner(stack: Stack, receiver: Receiver, counts: dict[str, int]) -> dict[str, list[str]]:
    """Reminders dead-lettered for real, ``counts[name]`` of them for each owner; returns
    each owner's message IDs."""
    receiver.script = lambda n: 500
    tasks = {}
    start = datetime.now(UTC) + timedelta(minutes=10)
    for name, count in counts.items():
        owner = stack.account(name)
        tasks[name] = [
            stack.add_task(owner, start + timedelta(minutes=len(tasks) * 10 + n), 3600)
            for n in range(count)
        ]
    broker, _ = stack.broker(webhook_url=receiver.url, **ops_harness.POISON)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    total = sum(counts.values())
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states().get("failed", 0) == total, 30)
    return {name: [str(reminder_id(task)) for task in owned] for name, owned in tasks.items()}


def listed(page: Any) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#dead-letters tr[data-message-id]", "rows => rows.map(r => r.dataset.messageId)"
    )
    return ids


def search(page: Any, text: str) -> None:
    page.fill("input[name=q]", text)
    page.press("input[name=q]", "Enter")
    page.wait_for_url(f"**/ops?*q={quote_plus(text)}*")


def test_search_by_owner_lists_their_dead_letters_and_retry_all_matching_retries_only_those(
    stack: Stack, receiver: Receiver, server: str, page: Any, tmp_path: Path
) -> None:
    mids = dead_by_owner(stack, receiver, {"owen": 2, "ada.l": 1})
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)
    assert sorted(listed(page)) == sorted(mids["owen"] + mids["ada.l"])

    search(page, "ada.l")
    assert listed(page) == mids["ada.l"]
    assert dead_letter_row(page, mids["ada.l"][0]).locator("td[data-label=owner]").inner_text() == (
        "ada.l"
    )
    search(page, "owen")
    assert sorted(listed(page)) == sorted(mids["owen"])
    search(page, str(reminder(stack, mids["owen"][1]).task_id))  # a task ID still works
    assert listed(page) == [mids["owen"][1]]
    search(page, "nobody")  # a user name, but no dead letter is theirs
    assert listed(page) == []
    assert page.locator("#no-dead-letters").inner_text() == "No dead letters match."

    search(page, "ada.l")
    page.get_by_role("button", name="Retry all matching…").click()
    count = page.locator("#confirm-count").inner_text()
    assert count.startswith("1 dead letter would be retried (matching search “ada.l”)")
    assert page.locator("#confirm-items li").all_inner_texts() == mids["ada.l"]
    page.screenshot(path=str(tmp_path / "search-owner-confirm.png"), full_page=True)
    page.get_by_role("button", name="Retry 1").click()
    page.wait_for_url(f"{server}/ops?q=ada.l")

    assert page.get_by_role("status").inner_text().startswith("Retrying 1 of 1")
    assert reminder(stack, mids["ada.l"][0]).state == "queued"
    assert {reminder(stack, mid).state for mid in mids["owen"]} == {"failed"}


def test_a_search_that_can_match_nothing_lists_nothing_and_a_bulk_action_on_it_touches_nothing(
    stack: Stack, receiver: Receiver, server: str, page: Any
) -> None:
    mids = dead_by_owner(stack, receiver, {"owen": 2})["owen"]
    olivia = create_account(stack.engine, "olivia", operator=True)
    sign_in(page, server, olivia.token)
    typed = "owen smith"  # neither an ID nor a user name

    search(page, typed)
    assert listed(page) == []
    assert "nothing matches this" in page.get_by_role("alert").inner_text()
    page.get_by_role("button", name="Discard all matching…").click()
    assert page.locator("#confirm-count").inner_text().startswith("Nothing matches")
    assert page.get_by_role("button", name="Discard 0").count() == 0

    # Even confirmed by hand, the action applies the same search: nothing is touched.
    with httpx.Client(timeout=10) as client:
        signed_in = client.post(f"{server}/ops/sign-in", data={"token": olivia.token})
        assert signed_in.status_code == 303
        for action in ("discard-matching", "retry-matching"):
            done = client.post(
                f"{server}/ops/page/dead-letters/bulk",
                data={"action": action, "q": typed, "confirmed": "yes"},
                headers={"Origin": server},
            )
            assert done.status_code == 303
    for mid in mids:
        row = reminder(stack, mid)
        assert (row.state, row.discarded_at) == ("failed", None)
