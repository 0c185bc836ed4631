"""A webhook receiver for the benchmarks: HTTP/1.1 on 127.0.0.1, one event loop, its own process.

    python -m bench.receiver --port 8123

``POST /hook/<name>/<hold_ms>`` is answered ``200`` after ``hold_ms`` milliseconds (0: at
once); ``GET /stats`` answers, per name, the requests received, those in flight now, the
most in flight at once, and the wall-clock times of the first and last arrivals. One name
is one receiver (an endpoint's URL, or the deployment's webhook): a run starts one process
and gives each receiver its own path.

An event loop holds any number of waiting requests without a thread each, keep-alive
connections are kept (the workers' HTTP client pools them), and in its own process the
receiver neither takes the harness's GIL nor waits for it, so a slow receiver's thousands
of held requests cost the workers nothing but the wait.

`receiver_process` runs one from the harness and reads its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Counts:
    """What one receiver (one path) has seen."""

    requests: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    first_at: float | None = None
    last_at: float | None = None


class Receivers:
    """Every receiver of this process, by name."""

    def __init__(self) -> None:
        self.counts: dict[str, Counts] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests one after the other until the client closes it."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target = lines[0].split(b" ")[:2]
                length, close = 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection":
                        close = value.strip().lower() == b"close"
                if length:
                    await reader.readexactly(length)
                if method == b"GET" and target == b"/stats":
                    writer.write(self._stats())
                else:
                    writer.write(await self._hook(target.decode()))
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _hook(self, target: str) -> bytes:
        parts = target.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "hook":
            return _NOT_FOUND
        counts = self.counts.setdefault(parts[1], Counts())
        now = time.time()
        counts.requests += 1
        counts.first_at = counts.first_at or now
        counts.last_at = now
        counts.in_flight += 1
        counts.most_in_flight = max(counts.most_in_flight, counts.in_flight)
        try:
            hold_ms = int(parts[2])
            if hold_ms:
                await asyncio.sleep(hold_ms / 1000)
            return _OK
        finally:
            counts.in_flight -= 1

    def _stats(self) -> bytes:
        body = json.dumps({name: vars(c) for name, c in self.counts.items()}).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


async def _main(port: int) -> None:
    server = await asyncio.start_server(Receivers().serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# -- the harness's side --------------------------------------------------------------------


@dataclass
class ReceiverProcess:
    """A running receiver process: its receivers' URLs and figures."""

    port: int

    def url(self, name: str, hold_seconds: float = 0.0) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}/{round(hold_seconds * 1000)}"

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per receiver name: requests, in_flight, most_in_flight, first_at, last_at."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as answer:
            return dict(json.loads(answer.read()))

    def answers(self) -> bool:
        try:
            self.stats()
        except OSError:
            return False
        return True


@contextmanager
def receiver_process(env: Any) -> Iterator[ReceiverProcess]:
    """A receiver process on a free port of 127.0.0.1 (``env``: the run's `bench.harness.Env`),
    stopped after."""
    from bench.harness import free_port, service, wait_until

    port = free_port()
    argv = [sys.executable, "-m", "bench.receiver", "--port", str(port)]
    with service(argv, env.process_env()):
        receiver = ReceiverProcess(port)
        wait_until(receiver.answers, timeout=30, interval=0.1)
        yield receiver


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_main(parser.parse_args().port))
