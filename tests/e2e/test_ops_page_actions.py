"""The ``/ops`` page's details, safe actions, live view, charts and layout, in a real Chromium.

As `tests/e2e/test_ops_page.py`: the real app behind a real HTTP server on 127.0.0.1, dead
letters made for real by workers against a webhook answering 500, Debian's Chromium driven
by Playwright. Each test checks what the operator sees on the page and what it did to the
rows. Screenshots of each state are written to the test's temporary directory.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from shared.delivery import endpoints
from shared.delivery.secret_box import SecretBox, generate_key
from shared.store.db import unit_of_work
from shared.store.models import Endpoint, Reminder
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
POISON = ops_harness.POISON
dead_letter_row, reminder = ops_harness.dead_letter_row, ops_harness.reminder
sign_in, table = ops_harness.sign_in, ops_harness.table

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

TITLE = "TITLE-ON-THE-OPS-PAGE-5d1e"
NOTES = "NOTES-ON-THE-OPS-PAGE-77a0"


def dead(stack: Stack, receiver: Receiver, count: int) -> tuple[Any, list[str]]:
    """``count`` reminders dead-lettered for real, their tasks titled with a marker."""
    receiver.script = lambda n: 500
    owner = stack.account("owen")
    tasks = [
        stack.add_task(
            owner, datetime.now(UTC) + timedelta(minutes=10 + n), 3600, title=TITLE, notes=NOTES
        )
        for n in range(count)
    ]
    broker, _ = stack.broker(webhook_url=receiver.url, **POISON)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states().get("failed", 0) == count, 30)
    return broker, [str(reminder_id(task)) for task in tasks]


def shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_dead_letter_s_details_name_owner_occurrence_and_traceback_never_its_content(
    stack: Stack, receiver: Receiver, server: str, page: Any, tmp_path: Path
) -> None:
    _, [mid] = dead(stack, receiver, 1)
    row = reminder(stack, mid)
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)

    dead_letter_row(page, mid).get_by_role("link", name=mid).click()
    page.wait_for_url(f"{server}/ops/page/dead-letters/{mid}")
    facts = dict(
        zip(
            page.locator("#facts dt").all_inner_texts(),
            page.locator("#facts dd").all_inner_texts(),
            strict=True,
        )
    )
    assert facts["message"] == mid and facts["task"] == str(row.task_id)
    assert facts["owner"] == "owen"
    assert facts["occurrence due"] == f"{row.due_at:%Y-%m-%d %H:%M:%S} UTC"
    assert facts["reminder"] == "3600 s before"
    assert facts["delivered to"] == "the deployment's channel"
    assert facts["attempts"] == "2"
    assert facts["final error"] == "TransientDeliveryError: webhook answered 500"
    assert "TransientDeliveryError" in page.locator("pre#traceback").inner_text()
    text = page.locator("body").inner_text()
    assert TITLE not in text and NOTES not in text and TITLE not in page.content()
    shot(page, tmp_path, "details")


def test_discard_asks_first_and_cancel_keeps_the_dead_letter(
    stack: Stack, receiver: Receiver, server: str, page: Any, tmp_path: Path
) -> None:
    _, [mid] = dead(stack, receiver, 1)
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)

    dead_letter_row(page, mid).get_by_role("link", name="Discard…").click()
    assert (
        page.locator("#confirm-count").inner_text().startswith("1 dead letter would be discarded")
    )
    assert page.locator("#confirm-items").inner_text() == mid
    shot(page, tmp_path, "discard-confirmation")
    page.get_by_role("link", name="Cancel").click()
    page.wait_for_url(f"{server}/ops")
    assert dead_letter_row(page, mid).count() == 1
    assert reminder(stack, mid).discarded_at is None

    # With the keyboard alone: to the Discard link, Enter, and Enter on the confirmation
    # (its button has the focus).
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.action") == "discard":
            break
    else:
        raise AssertionError("Tab never reached the Discard link")
    page.keyboard.press("Enter")
    page.wait_for_selector("#confirm")
    assert page.evaluate("document.activeElement.id") == "confirm"
    page.keyboard.press("Enter")
    page.wait_for_url(f"{server}/ops")
    assert page.get_by_role("status").inner_text().startswith(f"Discarded {mid}")
    assert dead_letter_row(page, mid).count() == 0
    dropped = reminder(stack, mid)
    assert (dropped.state, dropped.discarded_by) == ("failed", "olivia")


def test_bulk_retry_of_a_filter_counts_first_then_the_page_reports_each_one_sent(
    stack: Stack, receiver: Receiver, server: str, page: Any, tmp_path: Path
) -> None:
    broker, mids = dead(stack, receiver, 3)
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)

    # The filter applies as it changes: no Apply click.
    page.locator("select[name=error_type]").select_option("TransientDeliveryError")
    page.wait_for_url(re.compile(r".*/ops\?error_type=TransientDeliveryError(&q=)?$"))
    page.get_by_role("button", name="Retry all matching…").click()
    count = page.locator("#confirm-count").inner_text()
    assert count.startswith("3 dead letters would be retried (matching error type")
    assert sorted(page.locator("#confirm-items li").all_inner_texts()) == sorted(mids)
    assert {reminder(stack, mid).state for mid in mids} == {"failed"}  # a dry run so far
    shot(page, tmp_path, "bulk-retry-count")

    receiver.script = lambda n: 200
    with stack.run_workers(broker):
        page.get_by_role("button", name="Retry 3").click()
        page.wait_for_url(f"{server}/ops?error_type=TransientDeliveryError")
        assert page.get_by_role("status").inner_text().startswith("Retrying 3 of 3")
        # The page updates itself (no reload here) until each is reported sent.
        page.wait_for_function(
            "() => document.querySelectorAll('#retried tr[data-message-id]').length === 3 &&"
            " Array.from(document.querySelectorAll('#retried tr[data-message-id]'))"
            ".every(r => r.innerText.includes('sent at'))",
            timeout=30_000,
        )
    assert {reminder(stack, mid).state for mid in mids} == {"sent"}
    assert sorted(receiver.keys()[-3:]) == sorted(mids)
    # Retried and sent since, they were still dead-lettered when they were.
    dead_lettered = page.eval_on_selector_all(
        "#chart-dead-lettered [data-minute]", "els => els.map(e => Number(e.dataset.value))"
    )
    assert sum(dead_lettered) == 3
    outcomes = {cells[1]: cells[3] for cells in table(page, "#retried")}
    assert set(outcomes) == set(mids) and all(o.startswith("sent at") for o in outcomes.values())
    assert page.locator("#retrying").inner_text().count("TransientDeliveryError") == 0
    shot(page, tmp_path, "bulk-retry-sent")


def test_the_sent_chart_shows_the_rows_of_each_minute(
    stack: Stack, receiver: Receiver, server: str, page: Any, tmp_path: Path
) -> None:
    owner = stack.account("owen")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    counts = {now - timedelta(minutes=3): 4, now - timedelta(minutes=17): 2}
    for minute, count in counts.items():
        for n in range(count):
            task = stack.add_task(owner, minute + timedelta(days=2, minutes=n), 3600)
            with unit_of_work(stack.sessions) as session:
                session.execute(
                    update(Reminder)
                    .where(Reminder.task_id == task.id)
                    .values(
                        state="sent",
                        sent_at=minute + timedelta(seconds=10 + n),
                        remind_at=minute,
                    )
                )
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)

    points = page.eval_on_selector_all(
        "#chart-sent [data-minute]",
        "els => els.map(e => [e.dataset.minute, Number(e.dataset.value)])",
    )
    assert len(points) == 60
    shown = {minute: value for minute, value in points if value}
    assert shown == {f"{minute:%Y-%m-%dT%H:%MZ}": count for minute, count in counts.items()}

    # The pointer anywhere in a minute's column, well above its bar or over no bar at all,
    # is over what shows that minute's value (its title, as the browser's tooltip).
    busy, quiet = now - timedelta(minutes=3), now - timedelta(minutes=10)
    for minute, value in ((busy, "4"), (quiet, "0")):
        hovered = hover(page, "#chart-sent", minute)
        assert hovered == {"title": f"{minute:%H:%M} UTC: {value}", "highlighted": True}
    shot(page, tmp_path, "charts")


def hover(page: Any, chart: str, minute: datetime) -> dict[str, Any]:
    """Move the pointer into ``minute``'s column near the top of the plot; what is under
    it: its title and whether it is highlighted."""
    stamp = f"{minute:%Y-%m-%dT%H:%MZ}"
    column = page.locator(f'{chart} [data-hover-minute="{stamp}"]').bounding_box()
    assert column is not None
    x, y = column["x"] + column["width"] / 2, column["y"] + 3
    page.mouse.move(x, y)
    under: dict[str, Any] = page.evaluate(
        """([x, y]) => {
            const el = document.elementFromPoint(x, y);
            const title = el && el.querySelector(':scope > title');
            return {title: title ? title.textContent : null,
                    highlighted: el !== null && getComputedStyle(el).fillOpacity !== '0'};
        }""",
        [x, y],
    )
    return under


def test_at_420_px_the_page_has_no_horizontal_scroll(
    stack: Stack, receiver: Receiver, server: str, browser: Any, tmp_path: Path
) -> None:
    _, mids = dead(stack, receiver, 2)
    context = browser.new_context(viewport={"width": 420, "height": 900})
    try:
        narrow = context.new_page()
        sign_in(narrow, server, create_account(stack.engine, "olivia", operator=True).token)
        for path in ("/ops", f"/ops/page/dead-letters/{mids[0]}"):
            narrow.goto(f"{server}{path}")
            width = narrow.evaluate("document.documentElement.scrollWidth")
            assert width <= 420, (path, width)
            shot(narrow, tmp_path, "narrow-" + path.strip("/").replace("/", "-"))
            if path == "/ops":  # the rows are there, stacked, not cut off
                row = narrow.locator(f'tr[data-message-id="{mids[0]}"]')
                assert row.is_visible()
                box = row.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 420
                # The search box shows its whole placeholder, here and on a wide screen.
                fit = placeholder_fit(narrow)
                assert fit["text"] <= fit["room"], fit
                narrow.locator("#filter").screenshot(path=str(tmp_path / "narrow-filter.png"))
                narrow.set_viewport_size({"width": 1400, "height": 900})
                fit = placeholder_fit(narrow)
                assert fit["text"] <= fit["room"], fit
                narrow.set_viewport_size({"width": 420, "height": 900})
    finally:
        context.close()


def placeholder_fit(page: Any) -> dict[str, Any]:
    """The search box's placeholder: its text's width in the box's font, and the room the
    box has for text (its inner width less padding), in CSS pixels."""
    fit: dict[str, Any] = page.evaluate(
        """() => {
            const input = document.querySelector('#filter input[name=q]');
            const style = getComputedStyle(input);
            const context = document.createElement('canvas').getContext('2d');
            context.font = style.font;
            return {
                placeholder: input.placeholder,
                text: context.measureText(input.placeholder).width,
                room: input.clientWidth - parseFloat(style.paddingLeft)
                    - parseFloat(style.paddingRight),
                scroll: input.scrollWidth <= input.clientWidth,
            };
        }"""
    )
    assert fit["placeholder"] and fit["scroll"], fit
    return fit


def test_a_form_posted_from_another_site_is_refused_and_the_favicon_is_served(
    stack: Stack, receiver: Receiver, server: str
) -> None:
    _, [mid] = dead(stack, receiver, 1)
    olivia = create_account(stack.engine, "olivia", operator=True)
    url = f"{server}/ops/page/dead-letters/{mid}/discard"
    with httpx.Client(timeout=10) as client:
        signed_in = client.post(f"{server}/ops/sign-in", data={"token": olivia.token})
        assert signed_in.status_code == 303
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            refused = client.post(url, data={"confirmed": "yes"}, headers=headers)
            assert refused.status_code == 403, headers
            assert "sent from another site" in refused.text
        assert reminder(stack, mid).discarded_at is None
        same_site = client.post(url, data={"confirmed": "yes"}, headers={"Origin": server})
        assert same_site.status_code == 303
    assert reminder(stack, mid).discarded_by == "olivia"
    icon = httpx.get(f"{server}/favicon.ico", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_no_request_of_the_page_fails(
    stack: Stack, receiver: Receiver, server: str, page: Any
) -> None:
    dead(stack, receiver, 1)
    failed: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)
    page.wait_for_timeout(6_000)  # one live refresh
    assert failed == []
    icon = page.evaluate("document.querySelector('link[rel=icon]').href")
    assert icon == f"{server}/favicon.ico"


def test_a_disabled_endpoint_is_shown_with_its_owner_and_reason_and_enabled_again(
    stack: Stack, server: str, page: Any, tmp_path: Path
) -> None:
    owner = stack.account("erin")
    box = SecretBox([generate_key()])
    with unit_of_work(stack.sessions) as session:
        endpoint, secret = endpoints.create(
            session, box, owner.id, "https://hooks.example/erin", None, datetime.now(UTC)
        )
        endpoint_id = endpoint.id
    start = datetime.now(UTC) - timedelta(days=6)
    for at in (start, datetime.now(UTC)):
        failed = endpoints.Attempt(
            "reminder", str(uuid.uuid4()), False, 503, 12, "answered 503", at
        )
        endpoints.record_attempt(stack.engine, endpoint_id, failed, timedelta(days=5))
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)

    row = page.locator(f'#endpoints tr[data-endpoint-id="{endpoint_id}"]')
    cells = row.locator("td").all_inner_texts()
    assert cells[0].splitlines() == [str(endpoint_id), "https://hooks.example/erin"]
    assert (cells[1], cells[2]) == ("erin", "disabled")
    assert cells[4].startswith("every delivery attempt failed since")
    assert "answered 503" in cells[4] and secret not in page.content()
    shot(page, tmp_path, "endpoint-disabled")

    row.get_by_role("button", name="Enable again").click()
    page.wait_for_url(f"{server}/ops")
    assert page.get_by_role("status").inner_text().startswith(f"Endpoint {endpoint_id} is enabled")
    assert page.locator(f'#endpoints tr[data-endpoint-id="{endpoint_id}"]').count() == 0
    with unit_of_work(stack.sessions) as session:
        enabled = session.get(Endpoint, endpoint_id)
        assert enabled is not None and enabled.enabled and enabled.failing_since is None
    assert table(page, "#actions")[0][1:3] == ["olivia", "enable_endpoint"]


def test_discarding_a_selection_touches_only_the_ticked_rows(
    stack: Stack, receiver: Receiver, server: str, page: Any
) -> None:
    _, (drop, keep) = dead(stack, receiver, 2)
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)

    dead_letter_row(page, drop).get_by_role("checkbox").check()
    page.get_by_role("button", name="Discard selected").click()
    assert (
        page.locator("#confirm-count")
        .inner_text()
        .startswith("1 dead letter would be discarded (the selected ones)")
    )
    assert page.locator("#confirm-items").inner_text() == drop
    page.get_by_role("button", name="Discard 1").click()
    page.wait_for_url(f"{server}/ops")
    assert page.get_by_role("status").inner_text().startswith("Discarded 1 of 1")
    assert dead_letter_row(page, drop).count() == 0 and dead_letter_row(page, keep).count() == 1
    assert reminder(stack, drop).discarded_by == "olivia"
    assert reminder(stack, keep).discarded_at is None
