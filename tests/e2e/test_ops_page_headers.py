"""The ops pages' security headers, as Chromium enforces them.

As `tests/e2e/test_ops_page.py`: the real app behind a real HTTP server on 127.0.0.1, a
dead letter made for real, Debian's Chromium driven by Playwright. A page served from
127.0.0.1 (the same site: the ``SameSite`` cookie goes along) frames ``/ops`` and gets
nothing shown or clickable in the frame; the Content-Security-Policy keeps the page itself
whole: its style, charts and live refresh, with no violation reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.wrappers import Response

from shared.store.models import OperatorAction
from tests.conftest import create_account, served
from tests.e2e import test_ops_page as ops_harness
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import Receiver, Stack

receiver = pipeline_harness.receiver  # a local webhook endpoint
stack = pipeline_harness.stack  # own schema, namespace, workers
browser = ops_harness.browser  # Debian's Chromium
page = ops_harness.page  # a fresh profile and one tab
server = ops_harness.server  # the real app on 127.0.0.1
dead_letter_row, reminder, sign_in = (
    ops_harness.dead_letter_row,
    ops_harness.reminder,
    ops_harness.sign_in,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def neighbour(server: str) -> Iterator[str]:
    """Another server on 127.0.0.1 (another port: the same site) whose page frames /ops."""
    html = (
        "<!doctype html><title>neighbour</title><p>Win a prize: click below!</p>"
        f'<iframe id="framed" src="{server}/ops" width="1300" height="700"></iframe>'
    )

    def app(environ: Any, start_response: Any) -> Any:
        return Response(html, mimetype="text/html")(environ, start_response)

    with served(app) as url:
        yield f"{url}/"


def operator_actions(stack: Stack) -> list[str]:
    with stack.sessions() as session:
        return [action.action for action in session.query(OperatorAction)]


def test_a_same_site_page_that_frames_ops_gets_nothing_to_click(
    stack: Stack, receiver: Receiver, server: str, neighbour: str, page: Any, tmp_path: Path
) -> None:
    [mid] = ops_harness.poison(stack, receiver).message_ids
    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)
    assert dead_letter_row(page, mid).count() == 1  # signed in, the page shows it

    page.goto(neighbour)
    page.wait_for_load_state("load")
    framed = page.frame_locator("#framed")

    assert framed.locator("#dead-letters").count() == 0
    assert framed.get_by_role("button", name="Retry").count() == 0
    assert [frame.url for frame in page.frames if frame.url.startswith(server)] == []
    # A click where the frame is does nothing to the dead letter.
    box = page.locator("#framed").bounding_box()
    assert box is not None
    for x, y in ((0.9, 0.5), (0.5, 0.5), (0.1, 0.9)):
        page.mouse.click(box["x"] + box["width"] * x, box["y"] + box["height"] * y)
    page.screenshot(path=str(tmp_path / "framed.png"))
    assert reminder(stack, mid).state == "failed"
    assert operator_actions(stack) == []


def test_the_policy_keeps_the_page_whole_and_reports_no_violation(
    stack: Stack, receiver: Receiver, server: str, page: Any, tmp_path: Path
) -> None:
    [mid] = ops_harness.poison(stack, receiver).message_ids
    errors: list[str] = []
    page.on(
        "console",
        lambda m: errors.append(f"{m.location['url']}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server}/ops/sign-in")
    assert page.evaluate("getComputedStyle(document.querySelector('form.narrow')).maxWidth") == (
        "448px"  # the page's own style applies
    )

    sign_in(page, server, create_account(stack.engine, "olivia", operator=True).token)
    response = page.goto(f"{server}/ops")
    assert response is not None and response.status == 200
    headers = response.all_headers()
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert "no-store" in headers["cache-control"]

    # Style, charts and script all work.
    assert page.evaluate("getComputedStyle(document.body).maxWidth") == "1216px"
    assert page.evaluate("getComputedStyle(document.querySelector('p.small')).fontSize") == (
        "13.6px"
    )
    charts = page.locator("#charts svg")
    assert charts.count() >= 1
    first = charts.first.bounding_box()
    assert first is not None and first["width"] > 200 and first["height"] > 50
    assert page.get_by_role("button", name="Pause updates").is_visible()  # shown by script
    stamp = page.locator("#updated").inner_text()
    page.wait_for_function(
        "stamp => document.getElementById('updated').textContent !== stamp",
        arg=stamp,
        timeout=15_000,
    )
    assert page.locator("#updated").inner_text().startswith("Updated ")  # a live refresh
    assert dead_letter_row(page, mid).count() == 1

    # The other pages: details and a confirmation.
    page.locator(f'a[href$="/ops/page/dead-letters/{mid}"]').first.click()
    page.wait_for_url(f"{server}/ops/page/dead-letters/{mid}")
    page.get_by_role("link", name="Discard…").click()
    page.wait_for_url(f"{server}/ops/page/dead-letters/{mid}/discard")
    assert page.evaluate("getComputedStyle(document.body).maxWidth") == "1216px"
    page.screenshot(path=str(tmp_path / "confirm.png"), full_page=True)

    assert errors == []
