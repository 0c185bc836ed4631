"""Bodies over 64 KiB get 413 however they are framed (SPEC §6), over a real socket.

A body with ``Content-Length`` is refused before a byte of it is read. A chunked body
(``Transfer-Encoding: chunked``, no length) can only be refused once it has passed the
limit; Werkzeug stops reading such a stream at the limit and hands over what it read as if
the body ended there, which once made a 70 KiB task a 400 "not valid JSON". Here each
framing is sent by ``http.client`` to the app under gunicorn (as the Procfile runs it) and
under Werkzeug's server, both on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from werkzeug.serving import make_server
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from api.app import MAX_BODY_BYTES, create_app
from shared.store.db import make_session_factory, unit_of_work
from shared.store.models import Task
from tests.conftest import ApiHarness, create_account
from tests.pipeline import conftest as pipeline_harness
from tests.pipeline.conftest import BIN, Stack
from tests.processes import free_port, tail

stack = pipeline_harness.stack  # own schema, Redis namespace and process cleanup

PROBLEM = "application/problem+json"
DUE = "2030-01-31T09:00:00Z"


def task_body(size: int) -> bytes:
    """A valid task exactly ``size`` bytes long (JSON whitespace pads it)."""
    body = json.dumps({"title": "t", "due_at": DUE}).encode()
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"}"


def chunks(body: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@dataclass
class Server:
    port: int
    headers: dict[str, str]
    engine: Engine

    def post(self, body: bytes | Iterable[bytes], *, chunked: bool) -> tuple[int, str, bytes]:
        """POST /tasks; ``chunked`` sends ``body`` without a length, in 8 KiB chunks."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {**self.headers, "Content-Type": "application/json"}
            if chunked:
                assert isinstance(body, bytes)
                connection.request("POST", "/tasks", chunks(body), headers, encode_chunked=True)
            else:
                connection.request("POST", "/tasks", body, headers)
            response = connection.getresponse()
            content = response.read()
            # The connection still serves a request: the refused body did not poison it.
            connection.request("GET", "/healthz")
            follow_up = connection.getresponse()
            follow_up.read()
            assert follow_up.status == 200
            return response.status, response.getheader("Content-Type", ""), content
        finally:
            connection.close()

    def task_count(self) -> int:
        with unit_of_work(make_session_factory(self.engine)) as session:
            return int(session.scalar(select(func.count()).select_from(Task)) or 0)


@contextlib.contextmanager
def werkzeug_server(stack: Stack) -> Iterator[int]:
    app = create_app(stack.settings(rate_limit=""), engine=stack.engine)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def gunicorn_server(stack: Stack, log: Path) -> Iterator[int]:
    """gunicorn with the Procfile's configuration and worker class, on 127.0.0.1."""
    port = free_port()
    argv = [str(BIN / "gunicorn"), "--config", "python:api.gunicorn_conf"]
    argv += ["--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4", "api.wsgi:app"]
    process = stack.spawn_logged(argv, stack.env(), log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, tail(log)
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                break
        time.sleep(0.2)
    else:
        pytest.fail(f"gunicorn did not answer:\n{tail(log)}")
    yield port


@pytest.fixture(params=["gunicorn", "werkzeug"])
def server(request: pytest.FixtureRequest, stack: Stack, tmp_path: Path) -> Iterator[Server]:
    account = create_account(stack.engine, "alice")
    with (
        gunicorn_server(stack, tmp_path / "web.log")
        if request.param == "gunicorn"
        else werkzeug_server(stack)
    ) as port:
        yield Server(port, account.headers, stack.engine)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 70_000, 300_000])
def test_a_body_over_64_kib_is_413_on_a_real_server(
    server: Server, chunked: bool, size: int
) -> None:
    status, content_type, content = server.post(task_body(size), chunked=chunked)

    assert status == 413, content[:300]
    assert content_type == PROBLEM
    assert json.loads(content)["status"] == 413
    assert server.task_count() == 0


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_of_exactly_64_kib_is_read_whole(server: Server, chunked: bool) -> None:
    status, _, content = server.post(task_body(MAX_BODY_BYTES), chunked=chunked)

    assert status == 201, content[:300]
    assert server.task_count() == 1


def chunked_request(body: bytes, headers: dict[str, str]) -> Request:
    """What a server that decodes chunked framing hands the app: no length, a terminated input."""
    environ = EnvironBuilder(
        path="/tasks",
        method="POST",
        headers={**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})
    return Request(environ)


def test_a_chunked_body_over_64_kib_is_413_not_400(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.open(chunked_request(task_body(70_000), alice.headers))

    assert response.status_code == 413, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    assert api.client.get("/tasks", headers=alice.headers).json["items"] == []


def test_both_framings_of_a_body_over_64_kib_say_the_same(api: ApiHarness) -> None:
    alice = api.account("alice")
    body = task_body(70_000)

    with_length = api.client.post(
        "/tasks", data=body, content_type="application/json", headers=alice.headers
    )
    chunked = api.client.open(chunked_request(body, alice.headers))

    assert with_length.status_code == chunked.status_code == 413
    assert with_length.json["detail"] == chunked.json["detail"] == "the body is over 64 KiB"


def test_a_chunked_body_within_the_limit_creates_the_task(api: ApiHarness) -> None:
    alice = api.account("alice")

    response = api.client.open(chunked_request(task_body(MAX_BODY_BYTES), alice.headers))

    assert response.status_code == 201, response.get_data(as_text=True)
