"""The ``/ops`` page as an operator uses it: a real Chromium against the real app over HTTP.

SPEC §6: ``GET /ops`` is the operators' web page (queues, dead letters with Retry and
Discard buttons, recent actions). Here the app is served by a real HTTP server on
127.0.0.1, dead letters are made for real (workers, a webhook answering 500), and a
headless Chromium (Debian's, driven by Playwright) signs in, reads the page and clicks
its buttons. Outcomes are checked where a person would see them (the page) and where the
guarantee lives (the reminder row, the task as its owner's API shows it, the webhook).

Needs ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``.ci/run`` installs it):
without it the tests skip, and under ``CI=true`` they fail.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import update

from shared.broker.queue import QUEUE_NAME
from shared.broker.redis_broker import dead_letters
from shared.store.db import unit_of_work
from shared.store.models import Reminder, User
from tests.conftest import IN_CI, Account, create_account, served
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import Receiver, Stack, reminder_id
from workers.producer import scan_due_tasks

stack = pipeline_harness.stack  # own schema, namespace, workers
receiver = pipeline_harness.receiver  # a local webhook endpoint

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
POISON = {"webhook_secret": "s", "max_retries": 1, "min_backoff_ms": 50, "max_backoff_ms": 200}
FINAL_ERROR = "TransientDeliveryError: webhook answered 500"
UI_TIMEOUT_MS = 15_000


def _missing(what: str) -> None:
    message = f"{what} (install Debian's chromium and the test extra's playwright)"
    if IN_CI:
        pytest.fail(message + " (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright; never a browser build Playwright downloads."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"playwright is not importable: {exc}")
    if shutil.which(CHROMIUM) is None:
        _missing(f"{CHROMIUM} is missing")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (no cookies) and one tab."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def server(stack: Stack) -> Iterator[str]:
    """The real app behind a real HTTP server on 127.0.0.1; yields its base URL."""
    from api.app import create_app

    app = create_app(stack.settings(), engine=stack.engine)
    with served(app) as url:
        yield url


@dataclass
class Poisoned:
    broker: RedisBroker
    owner: Account
    task_ids: list[uuid.UUID]
    message_ids: list[str]


def poison(stack: Stack, receiver: Receiver, count: int = 1) -> Poisoned:
    """``count`` reminders dead-lettered for real: the webhook answers 500 to everything."""
    receiver.script = lambda n: 500
    owner = stack.account("owen")
    tasks = [
        stack.add_task(owner, datetime.now(UTC) + timedelta(minutes=10 + n), 3600)
        for n in range(count)
    ]
    broker, _ = stack.broker(webhook_url=receiver.url, **POISON)
    scan_due_tasks(stack.sessions, broker, stack.settings())
    with stack.run_workers(broker):
        assert stack.wait_for(lambda: stack.states().get("failed", 0) == count, 30)
    assert stack.states() == {"failed": count}
    return Poisoned(
        broker=broker,
        owner=owner,
        task_ids=[task.id for task in tasks],
        message_ids=[str(reminder_id(task)) for task in tasks],
    )


def reminder(stack: Stack, mid: str) -> Reminder:
    with stack.sessions() as session:
        row = session.get(Reminder, uuid.UUID(mid))
        assert row is not None
        return row


def table(page: Any, selector: str) -> list[list[str]]:
    """The visible text of each data row (header row left out) of a table."""
    rows: list[list[str]] = page.eval_on_selector_all(
        f"{selector} tr",
        "rows => rows.filter(r => r.querySelector('td'))"
        ".map(r => Array.from(r.cells).map(c => c.innerText.trim()))",
    )
    return rows


def dead_letter_row(page: Any, mid: str) -> Any:
    return page.locator(f'#dead-letters tr[data-message-id="{mid}"]')


def reload_until(page: Any, condition: Callable[[], bool], timeout: float = 20) -> bool:
    """Reload the page until ``condition()`` holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.3)
        page.reload()


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/ops/sign-in")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def queue_row(page: Any, name: str) -> dict[str, str]:
    for cells in table(page, "#queues"):
        if cells[0] == name:
            return dict(zip(["queue", "ready", "delayed", "in_flight", "dead"], cells, strict=True))
    raise AssertionError(f"no row for queue {name!r} in {table(page, '#queues')}")


def test_operator_signs_in_sees_the_dead_letter_and_retries_it_after_the_fix(
    stack: Stack, receiver: Receiver, server: str, page: Any, tmp_path: Path
) -> None:
    poisoned = poison(stack, receiver)
    [mid], [task_id] = poisoned.message_ids, poisoned.task_ids
    olivia = create_account(stack.engine, "olivia", operator=True)

    # Not signed in: the page sends the browser to sign-in.
    page.goto(f"{server}/ops")
    assert page.url == f"{server}/ops/sign-in"
    assert page.locator("label[for=token]").inner_text() == "Operator token"

    page.fill("#token", olivia.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/ops")
    assert "signed in as olivia" in page.locator("header").inner_text()
    [cookie] = [c for c in page.context.cookies() if c["name"] == "reminders_ops_session"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ops")
    assert olivia.token not in str(page.context.cookies())  # a session ID, not the token
    assert "reminders_ops_session" not in page.evaluate("document.cookie")  # scripts can't

    # The dead letter, with its message ID and the final attempt's error.
    row = dead_letter_row(page, mid)
    assert row.count() == 1
    cells = row.locator("td").all_inner_texts()  # select, failed at, message, task, …
    assert cells[2].splitlines()[0] == mid
    assert (cells[3], cells[4]) == (str(task_id), "owen")
    assert cells[5] == "2"  # one retry: two attempts
    assert cells[6] == FINAL_ERROR
    assert "expired from the broker" not in cells[2]
    assert queue_row(page, "reminders")["dead"] == "1"
    assert "TransientDeliveryError (1)" in page.locator("select[name=error_type]").inner_text()

    # The webhook is fixed; the operator retries with workers running.
    receiver.script = lambda n: 200
    before = len(receiver.receipts)
    with stack.run_workers(poisoned.broker):
        row.get_by_role("button", name="Retry").click()
        page.wait_for_url(f"{server}/ops")
        assert page.get_by_role("status").inner_text().startswith(f"Retrying {mid}: it is on")
        assert reload_until(page, lambda: dead_letter_row(page, mid).count() == 0)
        assert stack.wait_for(lambda: reminder(stack, mid).state == "sent", 20)

    assert page.locator("#no-dead-letters").inner_text() == "No dead letters."
    assert receiver.keys()[before:] == [mid]  # delivered once, with the same key
    assert dead_letters(poisoned.broker, QUEUE_NAME) == []
    task = httpx.get(f"{server}/tasks/{task_id}", headers=poisoned.owner.headers, timeout=10)
    assert task.status_code == 200
    assert task.json()["reminder"]["state"] == "sent"
    assert task.json()["reminder"]["message_id"] == mid

    # The recent-actions table shows who retried what.
    page.reload()
    assert queue_row(page, "reminders")["dead"] == "0"
    actions = table(page, "#actions")
    assert [cells[1:] for cells in actions] == [["olivia", "retry", mid, "requeued"]]
    assert actions[0][0].endswith(" UTC")

    shot = tmp_path / "ops-after-retry.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The notice is shown once, and only this server can set it: not a crafted link.
    assert page.get_by_role("status").count() == 0
    crafted = page.goto(f"{server}/ops?notice=" + "%3Cb%20id%3Dinjected%3Ehi%3C%2Fb%3E")
    assert crafted is not None and crafted.status == 422
    assert page.locator("#injected").count() == 0
    page.goto(f"{server}/ops")

    # Signing out ends the session: /ops needs sign-in again, even with the old cookie.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{server}/ops/sign-in")
    page.goto(f"{server}/ops")
    assert page.url == f"{server}/ops/sign-in"
    page.context.add_cookies([{**cookie, "expires": -1}])
    page.goto(f"{server}/ops")
    assert page.url == f"{server}/ops/sign-in"


def test_operator_discards_one_dead_letter_and_the_occurrence_stays_failed(
    stack: Stack, receiver: Receiver, server: str, page: Any, tmp_path: Path
) -> None:
    poisoned = poison(stack, receiver, count=2)
    drop, keep = poisoned.message_ids
    olivia = create_account(stack.engine, "olivia", operator=True)

    sign_in(page, server, olivia.token)
    assert page.url == f"{server}/ops"
    assert dead_letter_row(page, drop).count() == 1
    assert dead_letter_row(page, keep).count() == 1
    assert queue_row(page, "reminders")["dead"] == "2"

    dead_letter_row(page, drop).get_by_role("link", name="Discard…").click()
    page.get_by_role("button", name="Discard 1").click()
    page.wait_for_url(f"{server}/ops")

    assert page.get_by_role("status").inner_text().startswith(f"Discarded {drop}: it stays")
    assert reload_until(page, lambda: dead_letter_row(page, drop).count() == 0)
    assert dead_letter_row(page, keep).count() == 1  # only the one clicked
    assert queue_row(page, "reminders")["dead"] == "1"
    assert [cells[1:4] for cells in table(page, "#actions")] == [["olivia", "discard", drop]]
    assert table(page, "#actions")[0][4] == FINAL_ERROR

    dropped, kept = reminder(stack, drop), reminder(stack, keep)
    assert (dropped.state, dropped.discarded_by) == ("failed", "olivia")
    assert dropped.discarded_at is not None
    assert dropped.last_error == FINAL_ERROR  # the failure record is kept
    assert (kept.state, kept.discarded_at, kept.discarded_by) == ("failed", None, None)
    assert [letter.message_id for letter in dead_letters(poisoned.broker, QUEUE_NAME)] == [keep]

    # A discarded occurrence is not sent later: the next scan leaves it alone.
    receiver.script = lambda n: 200
    before = len(receiver.receipts)
    scan_due_tasks(stack.sessions, poisoned.broker, stack.settings())
    with stack.run_workers(poisoned.broker):
        time.sleep(1.0)
    assert len(receiver.receipts) == before
    assert reminder(stack, drop).state == "failed"

    page.screenshot(path=str(tmp_path / "ops-after-discard.png"), full_page=True)
    assert (tmp_path / "ops-after-discard.png").read_bytes()[:4] == b"\x89PNG"


def test_a_non_operator_token_cannot_sign_in_and_the_page_stays_closed(
    stack: Stack, server: str, page: Any, tmp_path: Path
) -> None:
    ursula = create_account(stack.engine, "ursula")

    sign_in(page, server, ursula.token)

    assert page.url == f"{server}/ops/sign-in"
    assert page.get_by_role("alert").inner_text() == "That token is not an operator's."
    assert page.locator("#token").count() == 1  # the form is offered again
    assert [c for c in page.context.cookies() if c["name"].startswith("reminders_ops_")] == []
    page.screenshot(path=str(tmp_path / "sign-in-refused.png"), full_page=True)

    page.goto(f"{server}/ops")
    assert page.url == f"{server}/ops/sign-in"
    assert page.get_by_role("alert").count() == 0

    # A wrong token is told apart from a non-operator's.
    sign_in(page, server, "not-a-token")
    assert page.get_by_role("alert").inner_text() == "That token is not valid."

    # A token put in a cookie by hand is no session: back to sign-in.
    page.context.add_cookies(
        [{"name": "reminders_ops_session", "value": ursula.token, "url": f"{server}/ops"}]
    )
    page.goto(f"{server}/ops")
    assert page.url == f"{server}/ops/sign-in"

    # An operator who stops being one while signed in gets 403, not the page.
    olivia = create_account(stack.engine, "olivia", operator=True)
    sign_in(page, server, olivia.token)
    assert page.url == f"{server}/ops"
    with unit_of_work(stack.sessions) as session:
        session.execute(update(User).where(User.id == olivia.id).values(is_operator=False))
    response = page.goto(f"{server}/ops")
    assert response is not None and response.status == 403
    assert page.locator("h1").inner_text() == "403: operators only"
    assert page.locator("#dead-letters, #queues, #actions").count() == 0
