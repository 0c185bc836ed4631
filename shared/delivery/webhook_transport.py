"""The HTTP transport webhooks go through: one deadline for the whole call.

httpx's timeouts apply to each network operation, so a receiver that answers one byte every
two seconds never trips a five-second read timeout and can hold a delivery (its transaction
and its task's row lock) until Dramatiq's time limit. Here every connect, read and write of
a call gets at most the time left until the call's deadline: the whole call — connecting,
sending the body, reading the answer — ends within ``REMINDERS_WEBHOOK_TIMEOUT``.

The deadline is per thread (`Deadline.applies`), since a worker process delivers on several
threads through one pooled client; a pooled connection reads the deadline of whichever
thread uses it.

With an `AddressGuard` (users' endpoints), the transport resolves each host itself, connects
only to addresses ``shared.delivery.address_guard`` allows and checks the address it is connected to
before a byte is sent: a host that resolved to a public address when its endpoint was saved
and resolves to 127.0.0.1 now (DNS rebinding) is refused at delivery. TLS still verifies the
certificate against the URL's host name (httpcore takes the TLS server name from the URL,
not from the address connected to). A refusal is an `AddressRefusedError`, which httpx raises
as the cause of an `httpx.ConnectError`; `refused_reason` tells it from other connect errors.

The worker threads of a process share one pool, so a keep-alive connection is reused by
whichever thread needs one next. httpcore 1.0.9's pool can close a connection it has just
handed to another thread (encode/httpcore#1110): it decides under its lock, closes after
releasing it, and the other thread may have sent its request in between, which then fails
after the receiver has answered (and the reminder is sent again). Each pooled connection
here (`_OneRequestAtATime`) makes the start of a request and its closing exclusive: a
connection being closed takes no request (the pool tries another one), and one carrying
a request is closed when its answer has been read.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import certifi
import httpcore
import httpx

from shared.delivery.address_guard import (
    RESOLVE_TIMEOUT_SECONDS,
    AddressRefused,
    IPAddress,
    Resolver,
    check_address,
    ip_literal,
    lookup,
    system_resolver,
)

# What httpx's own transport would use (httpx.Limits defaults).
MAX_CONNECTIONS = 100
MAX_KEEPALIVE_CONNECTIONS = 20
KEEPALIVE_EXPIRY_SECONDS = 5.0


class AddressRefusedError(httpcore.ConnectError):
    """The guard refused every address of the host, or the address connected to.

    Raised before a byte is sent. Its message is the `AddressRefused` one, for the user.
    """


def refused_reason(exc: BaseException) -> str | None:
    """Why the guard refused the call that raised ``exc``, or None if it was not refused.

    httpx raises a refusal as an `httpx.ConnectError` caused by the `AddressRefusedError`.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressRefusedError):
            return str(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@dataclass(frozen=True)
class AddressGuard:
    """Which addresses a client may connect to (`shared.delivery.address_guard`'s rules).

    ``allow_private`` lifts the rules (``REMINDERS_ALLOW_PRIVATE_ENDPOINTS``): hosts are
    still resolved through ``resolve`` but every address is allowed, and so is ``http``.
    """

    allow_private: bool = False
    resolve: Resolver = system_resolver


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
    """httpcore's blocking socket backend, every operation bounded by a `Deadline`.

    With a ``guard``, connections are made to the addresses it allows only (see the module's
    docstring); the host's name resolution is bounded by the deadline as well.
    """

    def __init__(self, deadline: Deadline, guard: AddressGuard | None = None) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline
        self._guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if self._guard is None:
            stream = self._backend.connect_tcp(
                host,
                port,
                self._deadline.clamp(timeout, httpcore.ConnectTimeout),
                local_address,
                socket_options,
            )
        else:
            stream = self._connect_guarded(
                self._guard, host, port, timeout, local_address, socket_options
            )
        return _DeadlineStream(stream, self._deadline)

    def _connect_guarded(
        self,
        guard: AddressGuard,
        host: str,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[Any] | None,
    ) -> httpcore.NetworkStream:
        """A connection to the first allowed address of ``host`` that accepts one.

        Raises:
            AddressRefusedError: no address of ``host`` is allowed, or the connection's
                peer is not (the connection is closed first).
            httpcore.ConnectError, httpcore.ConnectTimeout: as connecting by name would.
        """
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self._allowed_addresses(guard, host, port, timeout):
            budget = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
            try:
                # By address: a second resolution here could answer differently.
                stream = self._backend.connect_tcp(
                    str(address), port, budget, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            if not guard.allow_private:
                _check_peer(host, stream)
            return stream
        assert failure is not None  # _allowed_addresses never answers an empty list
        raise failure

    def _allowed_addresses(
        self, guard: AddressGuard, host: str, port: int, timeout: float | None
    ) -> list[IPAddress]:
        wait = self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        wait = RESOLVE_TIMEOUT_SECONDS if wait is None else min(wait, RESOLVE_TIMEOUT_SECONDS)
        # A host that does not resolve now may later: like any connect error, not a refusal.
        try:
            addresses = lookup(host, port, resolve=guard.resolve, timeout=wait)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"{host} could not be resolved: {exc}") from exc
        if guard.allow_private:
            return addresses
        allowed, refusals = [], []
        for address in addresses:
            try:
                check_address(host, address)
            except AddressRefused as refused:
                refusals.append(refused)
            else:
                allowed.append(address)
        if not allowed:
            raise AddressRefusedError(str(refusals[0])) from refusals[0]
        return allowed

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are delivered over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _check_peer(host: str, stream: httpcore.NetworkStream) -> None:
    """Close ``stream`` and refuse it unless the address it is connected to is allowed."""
    try:
        peer = ip_literal(str(stream.get_extra_info("server_addr")[0]))
    except OSError:  # not connected any more
        peer = None
    if peer is None:
        stream.close()
        raise httpcore.ConnectError(f"the connection to {host} has no peer address")
    try:
        check_address(host, peer)
    except AddressRefused as refused:
        stream.close()
        raise AddressRefusedError(str(refused)) from refused


class _HttpsOnly(httpx.BaseTransport):
    """Where a guarded client's ``http://`` requests go: nowhere (endpoints are https)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        refused = AddressRefusedError("endpoint URL must use https")
        raise httpx.ConnectError(str(refused), request=request) from refused


class _ReleasingStream:
    """A response body that hands its connection back (`_OneRequestAtATime`) once closed."""

    def __init__(self, stream: Iterable[bytes], release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
        finally:
            self._release()


class _OneRequestAtATime(httpcore.ConnectionInterface):
    """A pooled HTTP/1.1 connection that the pool cannot close under a request.

    httpcore's pool picks connections to close (expired, surplus keep-alive) under its lock
    and closes them after releasing it; a connection it just handed to another thread looks
    idle until that thread starts its request, so the request could start and then lose its
    socket (encode/httpcore#1110). Here starting a request and closing are decided under one
    lock: after `close` no request starts (`ConnectionNotAvailable`, on which the pool picks
    another connection), and a `close` during a request is carried out when the request's
    answer is closed. A request is taken only while none is in progress, so a connection
    the pool gave to two requests at once serves one and sends the other back to the pool.
    """

    def __init__(self, connection: httpcore.ConnectionInterface) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._in_use = False
        self._closing = False

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        with self._lock:
            if self._closing or self._in_use:
                raise httpcore.ConnectionNotAvailable()
            self._in_use = True
        try:
            response = self._connection.handle_request(request)
        except BaseException:
            self._release()
            raise
        assert isinstance(response.stream, Iterable)
        response.stream = _ReleasingStream(response.stream, self._release)
        return response

    def _release(self) -> None:
        with self._lock:
            self._in_use = False
            close_now = self._closing
        if close_now:
            self._connection.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if self._in_use:
                return  # closed by `_release` when the request's answer is closed
        self._connection.close()

    # The pool reads these under its own lock to choose connections; a stale answer is
    # harmless since `handle_request` and `close` decide again under this one's.
    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return self._connection.can_handle_request(origin)

    def is_available(self) -> bool:
        return not self._in_use and self._connection.is_available()

    def has_expired(self) -> bool:
        return not self._in_use and self._connection.has_expired()

    def is_idle(self) -> bool:
        return not self._in_use and self._connection.is_idle()

    def is_closed(self) -> bool:
        return self._connection.is_closed()

    def info(self) -> str:
        return self._connection.info()

    def __repr__(self) -> str:
        return repr(self._connection)


class _Pool(httpcore.ConnectionPool):
    """httpcore's pool whose connections each take one request at a time, closed between."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.ConnectionInterface:
        return _OneRequestAtATime(super().create_connection(origin))


def deadline_client(
    deadline: Deadline, timeout_seconds: float, *, guard: AddressGuard | None = None
) -> httpx.Client:
    """An httpx client whose calls each end within the deadline applied around them.

    ``timeout_seconds`` is also httpx's per-operation timeout, for calls made outside
    `Deadline.applies`. Redirects are not followed. With a ``guard`` (users' endpoints) the
    client connects only where the guard allows, and, unless it allows private addresses,
    over https only; a refusal raises `httpx.ConnectError` (see `refused_reason`).
    """
    transport = httpx.HTTPTransport()
    # httpx's transport is a thin adapter over an httpcore pool and takes no network backend
    # of its own; the pool is replaced by one with the same limits and this backend, whose
    # connections are never closed under a request (see the module's docstring).
    transport._pool = _Pool(
        ssl_context=ssl.create_default_context(cafile=certifi.where()),
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
        network_backend=DeadlineBackend(deadline, guard),
    )
    # A client given a transport ignores HTTP(S)_PROXY, which would move the connection
    # (and the address the guard checks) to the proxy.
    mounts: dict[str, httpx.BaseTransport | None] = {}
    if guard is not None and not guard.allow_private:
        mounts["http://"] = _HttpsOnly()
    return httpx.Client(
        transport=transport, mounts=mounts, timeout=timeout_seconds, follow_redirects=False
    )
