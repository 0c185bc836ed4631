"""A TCP forwarder that a test can cut, to lose a server for real, or slow, to put it far away."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Callable

from shared.config import keepalive_for


def on_loopback(port: int) -> socket.socket:
    return socket.create_server(("127.0.0.1", port))


class TcpProxy:
    """Forwards connections on ``127.0.0.1:<port>`` to ``upstream``; `cut` drops them all.

    While cut, the port refuses connections, as a server that went away does;
    `restore` listens on the same port again.

    ``latency`` (seconds) holds every chunk of bytes that long before it is passed on, in
    each direction, so a round trip through the proxy takes twice as long more: a server on
    a link with that one-way delay (where the kernel lacks netem). Order is kept; bandwidth
    is not limited.

    ``listen`` makes the listening socket for a port (0: any), elsewhere than on loopback
    (`tests.partition.Partition.listen`: on a link the test can pull). ``peer_timeout``
    gives the client side of each connection the keepalive and user timeout a server of
    this service gets (`shared.store.db`): a client that goes silent is given up, and its
    upstream connection closed, as the server itself would.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        listen: Callable[[int], socket.socket] = on_loopback,
        peer_timeout: int | None = None,
        latency: float = 0.0,
    ) -> None:
        self.upstream = upstream
        self.latency = latency
        self._make_listener = listen
        self._peer_timeout = peer_timeout
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = self._listen(0)
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]

    def _listen(self, port: int) -> socket.socket:
        listener = self._make_listener(port)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _keep_alive(self, client: socket.socket) -> None:
        if self._peer_timeout is None:
            return
        keepalive = keepalive_for(self._peer_timeout)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (
            (socket.TCP_KEEPIDLE, keepalive.idle),
            (socket.TCP_KEEPINTVL, keepalive.interval),
            (socket.TCP_KEEPCNT, keepalive.count),
            (socket.TCP_USER_TIMEOUT, keepalive.user_timeout_ms),
        ):
            client.setsockopt(socket.IPPROTO_TCP, option, value)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed by cut()
            self._keep_alive(client)
            try:
                server = socket.create_connection(self.upstream)
            except OSError:  # the upstream server is down: refused, as it would refuse
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            pump = self._pump
            if self.latency:
                pump = self._delayed_pump
                for sock in (client, server):  # each chunk sent as it comes due
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _delayed_pump(self, source: socket.socket, target: socket.socket) -> None:
        """As `_pump`, each chunk passed on `latency` seconds after it arrived."""
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def pass_on() -> None:
            with contextlib.suppress(OSError):
                while True:
                    due, data = chunks.get()
                    time.sleep(max(0.0, due - time.monotonic()))
                    if not data:
                        break
                    target.sendall(data)
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pass_on, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                chunks.put((time.monotonic() + self.latency, data))
        chunks.put((time.monotonic() + self.latency, b""))  # the end, after what came before

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() and stops listening
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self._listener = self._listen(self.port)

    def close(self) -> None:
        self.cut()
