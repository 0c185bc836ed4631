"""A network link a test can pull: a partition as hosts meet it, packets dropped, nothing closed.

A user-space proxy that stops forwarding is no partition: its kernel still acknowledges
what the client sends and answers its keepalive probes, so only a timeout of the
application could notice. `Partition` makes a network namespace joined to this one by a
veth pair, with a private /30 of its own; sockets made with `listen` live in it, at
`address`. `cut` takes the namespace's end of the link down: from then on every packet to
`address` is dropped, in both directions, and no connection is told anything — a host
whose cable was pulled. `heal` plugs it back.

A `tests.tcp_proxy.TcpProxy` listening there forwards to a server on loopback (the test's
own, or the shared one), so a process can be cut off from that server while the test's
own connections to it go on.

Needs root (``ip netns``, ``setns``); under ``CI=true`` its absence fails the test.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from tests.conftest import IN_CI

CLONE_NEWNET = 0x40000000  # <sched.h>
T = TypeVar("T")


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=30)


class Partition:
    """A namespace behind a veth pair: its end at `address`, this one at `gateway`."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.namespace = f"reminders-{tag}"
        self._outer, self._inner = f"rmo{tag}", f"rmi{tag}"
        # A random /30 of 10.64.0.0/10: two tests at once are unlikely to pick the same.
        base = (10 << 24) | ((64 + secrets.randbelow(64)) << 16) | (secrets.randbelow(1 << 14) << 2)
        self.gateway = socket.inet_ntoa((base + 1).to_bytes(4, "big"))
        self.address = socket.inet_ntoa((base + 2).to_bytes(4, "big"))
        _ip("netns", "add", self.namespace)
        try:
            _ip("link", "add", self._outer, "type", "veth", "peer", "name", self._inner)
            _ip("link", "set", self._inner, "netns", self.namespace)
            _ip("addr", "add", f"{self.gateway}/30", "dev", self._outer)
            _ip("link", "set", self._outer, "up")
            _ip("-n", self.namespace, "addr", "add", f"{self.address}/30", "dev", self._inner)
            _ip("-n", self.namespace, "link", "set", self._inner, "up")
            _ip("-n", self.namespace, "link", "set", "lo", "up")
            # Its hardware address fixed: packets to a pulled link are then dropped in
            # silence, not answered "no route to host" once address resolution fails, as
            # they are on the far side of a router that sends nothing back.
            shown = subprocess.run(
                ["ip", "-n", self.namespace, "-j", "link", "show", self._inner],
                check=True,
                capture_output=True,
                timeout=30,
            )
            mac = json.loads(shown.stdout)[0]["address"]
            _ip(
                "neigh",
                "replace",
                self.address,
                "lladdr",
                mac,
                "dev",
                self._outer,
                "nud",
                "permanent",
            )
        except BaseException:
            self.close()
            raise

    def _inside(self, action: Callable[[], T]) -> T:
        """``action()`` run in the namespace (by a thread that enters it and then ends)."""
        libc = ctypes.CDLL(None, use_errno=True)
        outcome: list[T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with open(f"/run/netns/{self.namespace}") as namespace:
                    if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                outcome.append(action())
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=30)
        if failure:
            raise failure[0]
        return outcome[0]

    def listen(self, port: int = 0) -> socket.socket:
        """A listening socket at `address` (any port for 0), in the namespace."""
        return self._inside(lambda: socket.create_server((self.address, port)))

    def cut(self) -> None:
        _ip("-n", self.namespace, "link", "set", self._inner, "down")

    def heal(self) -> None:
        _ip("-n", self.namespace, "link", "set", self._inner, "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self._outer], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)


@contextmanager
def partition() -> Iterator[Partition]:
    """A `Partition`, removed afterwards; the test is skipped (failed under CI) without root."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        message = "network namespaces need root and iproute2's ip"
        if IN_CI:
            pytest.fail(message + " (CI=true: required)", pytrace=False)
        pytest.skip(message)
    link = Partition()
    try:
        yield link
    finally:
        link.close()
