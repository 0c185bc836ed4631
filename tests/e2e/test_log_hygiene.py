"""Task content, tokens and webhook secrets never leave through logs, errors or metrics.

SPEC §9: "Never log titles, notes, tokens or webhook secrets"; §2: a reminder's
``last_error`` is "error type and message, never task content"; §6: errors are problem
documents naming the bad field. This module runs the whole pipeline for real, once at
the production log level (INFO) and once at DEBUG:

- the Procfile's processes as real processes (``release``, ``web`` under gunicorn,
  ``scheduler``, ``worker`` with its metrics port), plus ``reminders scan`` and the
  ``reminders dlq`` commands, each one's stdout and stderr captured to a file;
- tasks whose title and notes carry distinctive markers, created over HTTP and delivered
  to a local webhook that accepts some, fails others with 500 once (retried), always fails
  one (retries exhausted, dead-lettered) and rejects one with 400 (permanent);
- bad requests that carry the markers in fields *other* than the bad one, an unknown
  field named after a marker, an unknown token, an operator signing in to the page;
- an operator listing the dead letters (CLI table and JSON, ``dlq show``, ``GET
  /ops/dead-letters``, the ``/ops`` page), and scrapes of ``GET /metrics`` and of the
  worker group's metrics port.

Then each test checks one guarantee over what was captured. (One check is not about
hygiene: running the bad requests through gunicorn showed that a 413 loses the next
request on its keep-alive connection; it is pinned here because this module is where a
real gunicorn answers.) The markers must show up
where they belong (the webhook received them: the test would notice if they were never
sent) and nowhere else; the logs must be JSON lines naming ``message_id`` and ``task_id``
for each reminder event, so silence cannot pass for hygiene.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import stripe
from standardwebhooks import Webhook

from shared.planning.keys import message_id as occurrence_id
from shared.store.db import make_engine
from tests.conftest import REDIS_URL, _unavailable, create_account, pg_schema
from tests.pipeline.conftest import FAST_RETRIES, Receipt, Receiver, Stack
from tests.processes import REPO, free_port, json_lines, procfile, tail

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

TITLE_MARKER = "TITLE-MARKER-7f3a"
NOTES_MARKER = "NOTES-MARKER-91bc"
FIELD_MARKER = "FIELD-MARKER-c4d8"  # the name of an unknown field
MARKERS = (TITLE_MARKER, NOTES_MARKER, FIELD_MARKER)
WEBHOOK_SECRET = "WEBHOOK-SECRET-e1b7-do-not-log"
UNKNOWN_TOKEN = "rem_UNKNOWN-TOKEN-MARKER-3e9d"
# Webhook behaviour by the kind named in the title; delivery outcome expected for each.
KINDS = {
    "accepted": ("sent", 1),  # 200 at once
    "accepted-too": ("sent", 1),
    "flaky": ("sent", 2),  # 500 once, then 200: one retry
    "down": ("failed", 1 + 2),  # 500 always: max_retries (2) exhausted, dead-lettered
    "rejected": ("failed", 1),  # 400: permanent, dead-lettered without a retry
    "endpoint": ("sent", 1),  # the user's own endpoint (this receiver too), 200 at once
}
MAX_RETRIES = 2
FINAL_ERRORS = {
    "down": "TransientDeliveryError: webhook answered 500",
    "rejected": "PermanentDeliveryError: webhook answered 400",
}
PIPELINE_TIMEOUT = 90


# -- helpers ----------------------------------------------------------------------------


def kind_of(receipt: Receipt) -> str:
    title = str(receipt.payload.get("title", ""))
    return title.rsplit(" ", 1)[-1]


def webhook_answer(receiver: Receiver, index: int) -> int:
    """The webhook's answer to its ``index``-th request, by the task kind in the title.

    The receiver records a request before asking its script, so ``receipts[index]`` exists.
    """
    receipt = receiver.receipts[index]
    kind = kind_of(receipt)
    if kind == "down":
        return 500
    if kind == "rejected":
        return 400
    if kind == "flaky":
        earlier = [r for r in receiver.receipts[:index] if r.key == receipt.key]
        return 500 if not earlier else 200
    return 200


@dataclass
class Answer:
    """A bad request's answer, and what it must not repeat."""

    status: int
    content_type: str
    text: str
    must_not_contain: tuple[str, ...]


@dataclass
class Scenario:
    logs: dict[str, Path]
    secrets: dict[str, str]
    tasks: dict[str, str]  # kind -> task id
    message_ids: dict[str, str]  # kind -> message id
    reminders: dict[str, dict[str, Any]]  # kind -> the API's view of its reminder
    receipts: list[Receipt]
    answers: dict[str, Answer]
    lost_after_413: list[str]  # requests lost on a connection that had answered 413
    listings: dict[str, str]  # what the operator saw, by where
    dead_letter_errors: dict[str, list[str]]  # the error texts each listing showed
    metrics: dict[str, str]

    def needles(self) -> dict[str, str]:
        """Everything that must never be logged, by a name for the failure message."""
        return {**{m: m for m in MARKERS}, **self.secrets}


# -- the scenario, run once for the module ----------------------------------------------


@pytest.fixture(scope="module", params=["INFO", "DEBUG"])
def log_level(request: pytest.FixtureRequest) -> str:
    """The whole scenario runs at the production level and again at DEBUG: "never" means
    at any level."""
    return str(request.param)


@pytest.fixture(scope="module")
def infrastructure(log_level: str) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL schema and Redis namespace per scenario (like ``pg_url``)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    with pg_schema() as url:
        yield url, namespace
    keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _send(http: httpx.Client, method: str, path: str, **options: Any) -> httpx.Response:
    """One request, resent if the connection drops, so the scenario does not depend on
    connection reuse (test_a_413_does_not_lose_the_next_request_on_its_connection checks that)."""
    for attempt in range(5):
        try:
            return http.request(method, path, **options)
        except httpx.TransportError:
            if attempt == 4:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _bad_requests(
    http: httpx.Client, headers: dict[str, str], task_id: str, due_at: str
) -> dict[str, Answer]:
    """Bad requests whose *other* fields carry the markers; the answer must not echo them."""
    title, notes = f"{TITLE_MARKER} bad", f"{NOTES_MARKER} bad"
    good = {"title": title, "notes": notes, "due_at": due_at}
    both = (TITLE_MARKER, NOTES_MARKER)
    requests: dict[str, tuple[str, str, dict[str, Any], tuple[str, ...]]] = {
        # name: (method, path, httpx options, markers the answer must not contain)
        "title too long": (
            "POST", "/tasks",
            {"json": {**good, "title": f"{TITLE_MARKER} " * 15}},
            (NOTES_MARKER,),
        ),
        "notes too long": (
            "POST", "/tasks", {"json": {**good, "notes": NOTES_MARKER * 600}}, (TITLE_MARKER,)
        ),
        "title not a string": ("POST", "/tasks", {"json": {**good, "title": 7}}, (NOTES_MARKER,)),
        "unknown field": ("POST", "/tasks", {"json": {**good, FIELD_MARKER: "x"}}, both),
        "naive due_at": (
            "POST", "/tasks", {"json": {**good, "due_at": "2030-01-31T09:00:00"}}, both
        ),
        "missing due_at": ("POST", "/tasks", {"json": {"title": title, "notes": notes}}, both),
        "remind_before_seconds too small": (
            "POST", "/tasks", {"json": {**good, "remind_before_seconds": 5}}, both
        ),
        "bad Idempotency-Key": (
            "POST", "/tasks", {"json": good, "headers": {"Idempotency-Key": "has spaces"}}, both
        ),
        "PATCH bad status": (
            "PATCH", f"/tasks/{task_id}",
            {"json": {"title": title, "notes": notes, "status": "finished"}},
            both,
        ),
        "body over 64 KiB": (
            "POST", "/tasks", {"json": {**good, "notes": NOTES_MARKER * 4000}}, both
        ),
        "not JSON": (
            "POST", "/tasks",
            {"content": json.dumps(good)[:-5], "headers": {"Content-Type": "application/json"}},
            both,
        ),
        "not application/json": (
            "POST", "/tasks",
            {"content": json.dumps(good), "headers": {"Content-Type": "text/plain"}},
            both,
        ),
    }  # fmt: skip
    answers = {}
    for name, (method, path, options, forbidden) in requests.items():
        extra = options.pop("headers", {})
        response = _send(http, method, path, headers={**headers, **extra}, **options)
        answers[name] = Answer(
            response.status_code, response.headers.get("content-type", ""), response.text, forbidden
        )
    return answers


def _requests_lost_after_413(base: str, headers: dict[str, str], due_at: str) -> list[str]:
    """Up to 50 times: a body over 64 KiB (413), then a GET on the same keep-alive
    connection; stops at the first request that gets no answer and says what it was."""
    too_big = {"title": "t", "notes": NOTES_MARKER * 4000, "due_at": due_at}
    with httpx.Client(base_url=base, timeout=10) as connection:
        for attempt in range(50):
            try:
                refused = connection.post("/tasks", json=too_big, headers=headers)
            except httpx.TransportError as exc:
                return [f"attempt {attempt}: the POST itself: {exc!r}"]
            keep = refused.headers.get("connection")
            try:
                connection.get("/healthz")
            except httpx.TransportError as exc:
                return [
                    f"attempt {attempt}: GET /healthz after {refused.status_code} "
                    f"(Connection: {keep}): {exc!r}"
                ]
    return []


def _cli(
    env: dict[str, str], logs: Path, name: str, *args: str, timeout: float = 60
) -> tuple[int, str]:
    """Run ``reminders ARGS``: stderr to ``logs/<name>.log`` (a log), stdout returned."""
    with (logs / f"{name}.log").open("wb") as err:
        done = subprocess.run(
            ["reminders", *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=timeout,
        )
    return done.returncode, done.stdout.decode(errors="replace")


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group started here, so shutdown is logged too; bounded wait
    (whatever is left is SIGKILLed by the stack's teardown)."""
    for process in processes.values():
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    for process in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def scenario(
    infrastructure: tuple[str, str], log_level: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    database_url, namespace = infrastructure
    logs = tmp_path_factory.mktemp(f"logs-{log_level}")
    engine = make_engine(database_url)
    stack = Stack(
        engine=engine,
        database_url=database_url,
        namespace=namespace,
        overrides={**FAST_RETRIES, "max_retries": MAX_RETRIES},
    )
    receiver = Receiver().start()
    receiver.script = lambda index: webhook_answer(receiver, index)
    try:
        yield _run(stack, receiver, logs, log_level)
    finally:
        stack.close()
        receiver.stop()
        engine.dispose()


def _run(stack: Stack, receiver: Receiver, logs: Path, log_level: str) -> Scenario:
    lines = procfile()
    port, metrics_port = free_port(), free_port()
    env = stack.env(
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        metrics_port=metrics_port,
        data_dir=str(logs / "data"),
        allow_private_endpoints=True,  # the user's endpoint is the local receiver
    )
    env.update(
        PORT=str(port),
        WEB_CONCURRENCY="2",
        WORKER_PROCESSES="2",
        WORKER_THREADS="4",
        REMINDERS_METRICS_HOST="127.0.0.1",
        PYTHONUNBUFFERED="1",
        REMINDERS_LOG_LEVEL=log_level,
    )
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        with (logs / f"{name}.log").open("wb") as out:
            processes[name] = stack.spawn(
                ["bash", "-c", lines[name]], env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )

    def alive() -> None:
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited:\n{tail(logs / f'{name}.log')}"

    with (logs / "release.log").open("wb") as out:
        release = subprocess.run(
            ["bash", "-c", lines["release"]], env=env, cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT, timeout=60,
        )  # fmt: skip
    assert release.returncode == 0, tail(logs / "release.log")
    user = create_account(stack.engine, "hygiene-user")
    operator = create_account(stack.engine, "hygiene-operator", operator=True)
    secrets = {
        "the user's token": user.token,
        "the operator's token": operator.token,
        "the webhook secret": WEBHOOK_SECRET,
        "an unknown token": UNKNOWN_TOKEN,
    }

    for name in ("web", "worker"):
        start(name)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as http:
        deadline = time.monotonic() + 30
        healthy = False
        while not healthy and time.monotonic() < deadline:
            alive()
            with contextlib.suppress(httpx.TransportError):
                healthy = http.get("/healthz").status_code == 200
            time.sleep(0 if healthy else 0.2)
        assert healthy, tail(logs / "web.log")

        # The user's own endpoint, its secret rotated (both sign for a day) and pinged.
        made = http.post("/endpoints", json={"url": receiver.url}, headers=user.headers)
        assert made.status_code == 201, made.text
        endpoint_id = made.json()["id"]
        rotated = http.post(f"/endpoints/{endpoint_id}/rotate-secret", headers=user.headers)
        assert rotated.status_code == 200, rotated.text
        secrets["the endpoint's first secret"] = made.json()["secret"]
        secrets["the endpoint's rotated secret"] = rotated.json()["secret"]
        pinged = http.post(f"/endpoints/{endpoint_id}/test", headers=user.headers)
        assert pinged.status_code == 200 and pinged.json()["ok"], pinged.text
        for path in (f"/endpoints/{endpoint_id}", "/endpoints"):
            shown = http.get(path, headers=user.headers).text
            assert made.json()["secret"] not in shown and rotated.json()["secret"] not in shown

        # Tasks due in 30 minutes, reminded an hour before: due now.
        due = (datetime.now(UTC) + timedelta(minutes=30)).replace(microsecond=0)
        due_text = due.isoformat()
        tasks, message_ids = {}, {}
        for kind in KINDS:
            body = {
                "title": f"{TITLE_MARKER} {kind}",
                "notes": f"{NOTES_MARKER} notes of the {kind} task",
                "due_at": due_text,
                "remind_before_seconds": 3600,
            }
            if kind == "endpoint":
                body["endpoint_id"] = endpoint_id
            created = http.post("/tasks", json=body, headers=user.headers)
            assert created.status_code == 201, created.text
            tasks[kind] = created.json()["id"]
            message_ids[kind] = str(occurrence_id(uuid.UUID(tasks[kind]), due, 3600))

        answers = _bad_requests(http, user.headers, tasks["accepted"], due_text)
        lost_after_413 = _requests_lost_after_413(base, user.headers, due_text)
        unknown = http.get("/tasks", headers={"Authorization": f"Bearer {UNKNOWN_TOKEN}"})
        answers["unknown token"] = Answer(
            unknown.status_code, unknown.headers.get("content-type", ""), unknown.text, MARKERS
        )

        # Their remind time had passed, so the API enqueued each as it created it: a producer
        # run now (the CLI's, logged too) finds nothing left to enqueue.
        code, scanned = _cli(env, logs, "scan", "scan", "--json")
        assert code == 0, tail(logs / "scan.log")
        (logs / "scan-stdout.log").write_text(scanned)
        assert json.loads(scanned)["message_ids"] == [], scanned
        # The scheduler from now on (started earlier, its first scan could beat this one).
        start("scheduler")

        def settled() -> dict[str, dict[str, Any]]:
            alive()
            views = {}
            for kind, task_id in tasks.items():
                views[kind] = http.get(f"/tasks/{task_id}", headers=user.headers).json()["reminder"]
            return views

        reminders: dict[str, dict[str, Any]] = {}

        def done() -> bool:
            reminders.update(settled())
            return all(
                (reminders[kind]["state"], reminders[kind]["attempts"]) == expected
                for kind, expected in KINDS.items()
            )

        assert stack.wait_for(done, PIPELINE_TIMEOUT, interval=0.5), (
            reminders,
            tail(logs / "worker.log"),
        )

        # The operator's view of the dead letters: CLI, JSON API, page.
        listings: dict[str, str] = {}
        errors: dict[str, list[str]] = {}
        code, listings["reminders dlq list"] = _cli(env, logs, "dlq-list", "dlq", "list")
        assert code == 0, tail(logs / "dlq-list.log")
        code, listings["reminders dlq list --json"] = _cli(
            env, logs, "dlq-list-json", "dlq", "list", "--json"
        )
        assert code == 0, tail(logs / "dlq-list-json.log")
        errors["reminders dlq list --json"] = [
            item["error"] for item in json.loads(listings["reminders dlq list --json"])["items"]
        ]
        errors["reminders dlq list"] = [
            line.split("  ")[-1].strip()
            for line in listings["reminders dlq list"].splitlines()
            if any(m in line for m in message_ids.values())
        ]
        for kind in FINAL_ERRORS:
            name = f"reminders dlq show ({kind})"
            code, listings[name] = _cli(
                env, logs, f"dlq-show-{kind}", "dlq", "show", message_ids[kind], "--json"
            )
            assert code == 0, tail(logs / f"dlq-show-{kind}.log")
            errors[name] = [json.loads(listings[name])["error"]]

        listed = http.get("/ops/dead-letters", headers=operator.headers)
        assert listed.status_code == 200, listed.text
        listings["GET /ops/dead-letters"] = listed.text
        errors["GET /ops/dead-letters"] = [item["error"] for item in listed.json()["items"]]
        for kind in FINAL_ERRORS:
            name = f"GET /ops/dead-letters/{{id}} ({kind})"
            shown = http.get(f"/ops/dead-letters/{message_ids[kind]}", headers=operator.headers)
            assert shown.status_code == 200, shown.text
            listings[name] = shown.text
            errors[name] = [shown.json()["error"]]

        # The page, signed in the way an operator does: the token in a form, then a cookie.
        with httpx.Client(base_url=base, timeout=10) as browser:
            signed_in = browser.post("/ops/sign-in", data={"token": operator.token})
            assert signed_in.status_code == 303, signed_in.text
            page = browser.get("/ops")
            assert page.status_code == 200, page.text[:500]
            listings["GET /ops page"] = page.text

        metrics = {"GET /metrics": http.get("/metrics").text}

    # The operator's view of the user's endpoints: never a secret.
    code, endpoints_listed = _cli(
        env, logs, "endpoints-list", "endpoints", "list", "hygiene-user", "--json"
    )
    assert code == 0, tail(logs / "endpoints-list.log")
    (logs / "endpoints-list-stdout.log").write_text(endpoints_listed)
    assert [e["id"] for e in json.loads(endpoints_listed)] == [endpoint_id], endpoints_listed

    def worker_metrics() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=3).text
        except httpx.HTTPError:
            return ""

    def counted() -> bool:
        # Counters are bumped just after the row commits: wait until all are in.
        text = worker_metrics()
        dead = [f'reminders_dead_lettered_total{{error_type="{error.split(":")[0]}"}}'
                for error in FINAL_ERRORS.values()]  # fmt: skip
        sent = re.findall(r"^reminders_sent_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
        delivered = sum(state == "sent" for state, _ in KINDS.values())
        return all(name in text for name in dead) and sum(map(float, sent)) == delivered

    assert stack.wait_for(counted, 20, interval=0.5), worker_metrics()
    metrics["worker metrics port"] = worker_metrics()

    alive()
    _stop(processes)
    with receiver.lock:
        receipts = list(receiver.receipts)
    return Scenario(
        logs={path.stem: path for path in sorted(logs.glob("*.log"))},
        secrets=secrets,
        tasks=tasks,
        message_ids=message_ids,
        reminders=reminders,
        receipts=receipts,
        answers=answers,
        lost_after_413=lost_after_413,
        listings=listings,
        dead_letter_errors=errors,
        metrics=metrics,
    )


# -- the guarantees ---------------------------------------------------------------------

LOG_NAMES = [
    "release",
    "web",
    "worker",
    "scheduler",
    "scan",
    "scan-stdout",
    "dlq-list",
    "dlq-list-json",
    "dlq-show-down",
    "dlq-show-rejected",
    "endpoints-list",
    "endpoints-list-stdout",
]


def test_the_pipeline_delivered_retried_and_dead_lettered_for_real(scenario: Scenario) -> None:
    """The scenario did what the other tests rely on (else their silence proves nothing)."""
    for kind, (state, attempts) in KINDS.items():
        assert (scenario.reminders[kind]["state"], scenario.reminders[kind]["attempts"]) == (
            state,
            attempts,
        ), kind
    for kind, error in FINAL_ERRORS.items():
        assert scenario.reminders[kind]["last_error"] == error
    by_key: dict[str, list[Receipt]] = {}
    for receipt in scenario.receipts:
        by_key.setdefault(receipt.key, []).append(receipt)
    for kind, (_, attempts) in KINDS.items():
        received = by_key[scenario.message_ids[kind]]
        assert len(received) == attempts, kind
        # The markers did leave, to where they belong: the webhook, signed with the secret
        # (checked as a customer would: a plain secret goes to standardwebhooks as bytes).
        first = received[0]
        assert first.payload["title"] == f"{TITLE_MARKER} {kind}"
        if kind == "endpoint":  # signed by both of the endpoint's secrets while they overlap
            for what in ("the endpoint's first secret", "the endpoint's rotated secret"):
                secret = scenario.secrets[what]
                Webhook(secret).verify(first.body, first.headers)
                stripe.WebhookSignature.verify_header(
                    first.body, first.headers["X-Reminders-Signature"], secret, tolerance=300
                )
            continue
        Webhook(WEBHOOK_SECRET.encode()).verify(first.body, first.headers)
        stripe.WebhookSignature.verify_header(
            first.body, first.headers["X-Reminders-Signature"], WEBHOOK_SECRET, tolerance=300
        )
    assert set(scenario.logs) >= set(LOG_NAMES), sorted(scenario.logs)


@pytest.mark.parametrize("name", LOG_NAMES)
def test_no_task_content_token_or_secret_in_any_log_line(scenario: Scenario, name: str) -> None:
    path = scenario.logs[name]
    text = path.read_text(errors="replace")
    leaks = [
        f"{path.name}:{number}: {what}: {line[:300]}"
        for number, line in enumerate(text.splitlines(), 1)
        for what, needle in scenario.needles().items()
        if needle in line
    ]
    assert not leaks, "\n".join(leaks)


# The event of a delivered reminder ("reminder.recorded" was its name before "reminder.sent").
SENT_EVENTS = ("reminder.sent", "reminder.recorded")


def test_processes_logged_the_pipeline_as_json_lines_with_ids(scenario: Scenario) -> None:
    """Each reminder event is a JSON line naming its message and task (SPEC §9)."""
    events = [
        event
        for name in ("worker", "web", "scheduler")
        for event in json_lines(scenario.logs[name])
    ]
    reminder_events = [e for e in events if str(e.get("event", "")).startswith("reminder.")]
    for event in reminder_events:
        assert {"message_id", "task_id"} <= set(event), event

    def seen(event_name: str, kind: str) -> list[dict[str, Any]]:
        return [
            e
            for e in reminder_events
            if e["event"] == event_name
            and e["message_id"] == scenario.message_ids[kind]
            and e["task_id"] == scenario.tasks[kind]
        ]

    for kind in ("accepted", "accepted-too", "flaky", "endpoint"):
        sent = [e for name in SENT_EVENTS for e in seen(name, kind)]
        assert len(sent) == 1, (kind, sent)
    assert len(seen("reminder.retrying", "flaky")) == 1
    assert len(seen("reminder.retrying", "down")) == MAX_RETRIES
    for kind, error in FINAL_ERRORS.items():
        [dead] = seen("reminder.dead_lettered", kind)
        assert dead["error_type"] == error.split(":")[0], dead
    assert not seen("reminder.retrying", "rejected")


@pytest.mark.parametrize("name", ["web", "worker", "scheduler"])
def test_every_log_line_of_the_services_is_a_json_object(scenario: Scenario, name: str) -> None:
    """SPEC §9: one JSON event per line, from our code and from the libraries."""
    path = scenario.logs[name]
    bad = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if not isinstance(value, dict) or "event" not in value:
            bad.append(f"{path.name}:{number}: {line[:200]}")
    assert not bad, "\n".join(bad[:20])


BAD_REQUESTS = {
    # name: (status, the field the problem must name, or None)
    "title too long": (422, "title"),
    "notes too long": (422, "notes"),
    "title not a string": (422, "title"),
    "unknown field": (422, FIELD_MARKER),
    "naive due_at": (422, "due_at"),
    "missing due_at": (422, "due_at"),
    "remind_before_seconds too small": (422, "remind_before_seconds"),
    "bad Idempotency-Key": (400, None),  # not one Structured Field string or bare key
    "PATCH bad status": (422, "status"),
    "body over 64 KiB": (413, None),
    "not JSON": (400, None),
    "not application/json": (415, None),
    "unknown token": (401, None),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_error_answers_do_not_echo_other_fields_tokens_or_secrets(
    scenario: Scenario, name: str
) -> None:
    answer = scenario.answers[name]
    status, bad_field = BAD_REQUESTS[name]
    assert answer.status == status, answer.text[:500]
    assert answer.content_type.startswith("application/problem+json"), answer.content_type
    problem = json.loads(answer.text)
    if bad_field is not None:
        assert bad_field in {error["field"] for error in problem["errors"]}, problem
    echoed = [marker for marker in answer.must_not_contain if marker in answer.text]
    assert not echoed, f"{name}: the answer repeats {echoed}: {answer.text[:500]}"
    secrets = [what for what, secret in scenario.secrets.items() if secret in answer.text]
    assert not secrets, f"{name}: the answer contains {secrets}"


def test_dead_letter_listings_keep_the_final_error_without_task_content(
    scenario: Scenario,
) -> None:
    expected = sorted(FINAL_ERRORS.values())
    for where, errors in scenario.dead_letter_errors.items():
        if "(" in where:  # one dead letter
            kind = where.rsplit("(", 1)[1].rstrip(")")
            assert errors == [FINAL_ERRORS[kind]], where
        else:
            assert sorted(errors) == expected, (where, errors)
    for where, text in {**scenario.listings}.items():
        for what, needle in scenario.needles().items():
            assert needle not in text, f"{where} shows {what}"
        shown = [where.rsplit("(", 1)[1].rstrip(")")] if where.endswith(")") else FINAL_ERRORS
        for kind in shown:
            assert scenario.message_ids[kind] in text, f"{where} does not show the {kind} one"


def test_a_413_does_not_lose_the_next_request_on_its_connection(scenario: Scenario) -> None:
    """Found while running the scenario: a 413 must either close the connection
    (``Connection: close``) or leave it usable (drain the body)."""
    assert not scenario.lost_after_413, "\n".join(scenario.lost_after_413)


METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? \S+")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest.mark.parametrize("where", ["GET /metrics", "worker metrics port"])
def test_metric_labels_hold_no_task_content_tokens_or_secrets(
    scenario: Scenario, where: str
) -> None:
    text = scenario.metrics[where]
    samples = [m for m in map(METRIC_LINE.match, text.splitlines()) if m]
    assert samples, text[:500]
    values = {value for m in samples for _, value in LABEL.findall(m.group("labels") or "")}
    for what, needle in scenario.needles().items():
        assert not [v for v in values if needle in v], f"a label of {where} holds {what}"
        assert needle not in text, f"{where} holds {what}"
    names = {m.group("name") for m in samples}
    if where == "GET /metrics":
        assert "reminders_dead_letters" in names, sorted(names)
    else:
        assert {
            "reminders_sent_total",
            "reminders_retried_total",
            "reminders_dead_lettered_total",
        } <= names, sorted(names)
        assert 'error_type="TransientDeliveryError"' in text
        assert 'error_type="PermanentDeliveryError"' in text
