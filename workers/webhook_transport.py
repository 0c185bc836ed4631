"""The HTTP transport webhooks go through: one deadline for the whole call.

httpx's timeouts apply to each network operation, so a receiver that answers one byte every
two seconds never trips a five-second read timeout and can hold a delivery (its transaction
and its task's row lock) until Dramatiq's time limit. Here every connect, read and write of
a call gets at most the time left until the call's deadline: the whole call — connecting,
sending the body, reading the answer — ends within ``REMINDERS_WEBHOOK_TIMEOUT``.

The deadline is per thread (`Deadline.applies`), since a worker process delivers on several
threads through one pooled client; a pooled connection reads the deadline of whichever
thread uses it.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import certifi
import httpcore
import httpx

# What httpx's own transport would use (httpx.Limits defaults).
MAX_CONNECTIONS = 100
MAX_KEEPALIVE_CONNECTIONS = 20
KEEPALIVE_EXPIRY_SECONDS = 5.0


class Deadline:
    """The per-thread deadline (a `time.monotonic` instant) of the webhook call in progress."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def applies(self, seconds: float) -> Iterator[None]:
        """Within this block, network operations end ``seconds`` from now at the latest."""
        self._local.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.at = None

    def clamp(self, timeout: float | None, expired: type[Exception]) -> float | None:
        """``timeout`` shortened to the time left; raises ``expired`` when none is left."""
        at = getattr(self._local, "at", None)
        if at is None:
            return timeout
        left = at - time.monotonic()
        if left <= 0:
            raise expired("the webhook call's deadline passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(
            ssl_context, server_hostname, self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's blocking socket backend, every operation bounded by a `Deadline`."""

    def __init__(self, deadline: Deadline) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host,
            port,
            self._deadline.clamp(timeout, httpcore.ConnectTimeout),
            local_address,
            socket_options,
        )
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are delivered over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def deadline_client(deadline: Deadline, timeout_seconds: float) -> httpx.Client:
    """An httpx client whose calls each end within the deadline applied around them.

    ``timeout_seconds`` is also httpx's per-operation timeout, for calls made outside
    `Deadline.applies`. Redirects are not followed.
    """
    transport = httpx.HTTPTransport()
    # httpx's transport is a thin adapter over an httpcore pool and takes no network backend
    # of its own; the pool is replaced by one with the same limits and this backend.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl.create_default_context(cafile=certifi.where()),
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
        network_backend=DeadlineBackend(deadline),
    )
    return httpx.Client(transport=transport, timeout=timeout_seconds, follow_redirects=False)
