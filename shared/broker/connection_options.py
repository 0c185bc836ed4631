"""How every Redis connection of the service notices a server that went silent.

redis-py waits forever by default: a connection to a server behind a cut link or a dropped
route blocks its thread until TCP gives up, minutes later. Every client here is built with
`redis_options`, so a command left unanswered fails after ``REMINDERS_PEER_TIMEOUT``
seconds (``socket_timeout``), as does opening a connection (``socket_connect_timeout``);
TCP keepalive and user timeout (`shared.config.keepalive_for`) end an idle or
unacknowledged connection within as long, and a connection idle for that long is checked
with a PING before it is used again (``health_check_interval``).

No command the service sends blocks on the server's side (no ``BLPOP``, no
``WAIT``, no pub/sub): Dramatiq's consumer polls with a script and sleeps between polls in
the worker. So a healthy server answers every command within milliseconds, and the
socket timeout only ever fires on one that does not answer at all.
"""

from __future__ import annotations

import socket
from typing import Any

import redis

from shared.config import keepalive_for


def redis_options(url: str, peer_timeout: int) -> dict[str, Any]:
    """Connection options for ``redis.ConnectionPool.from_url(url, **options)``.

    A ``unix://`` URL gets only the timeouts (a local socket has no TCP to keep alive).
    """
    options: dict[str, Any] = {
        "socket_timeout": peer_timeout,
        "health_check_interval": peer_timeout,
    }
    if url.startswith("unix://"):
        return options
    keepalive = keepalive_for(peer_timeout)
    tcp = {
        "TCP_KEEPIDLE": keepalive.idle,
        "TCP_KEEPINTVL": keepalive.interval,
        "TCP_KEEPCNT": keepalive.count,
        "TCP_USER_TIMEOUT": keepalive.user_timeout_ms,  # Linux
    }
    options.update(
        socket_connect_timeout=peer_timeout,
        socket_keepalive=True,
        # Only the options this platform has (macOS lacks TCP_USER_TIMEOUT, for one).
        socket_keepalive_options={
            getattr(socket, name): value for name, value in tcp.items() if hasattr(socket, name)
        },
    )
    return options


def redis_client(url: str, peer_timeout: int) -> redis.Redis:
    """A client of the server at ``url`` with `redis_options`."""
    return redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(url, **redis_options(url, peer_timeout))
    )
