"""The Redis client of every process, built from ``REDIS_URL`` in this one place.

``REDIS_URL`` names one server (``redis://``, ``rediss://``, ``unix://``) or the primary of
a Redis Sentinel set (``redis+sentinel://``, ``rediss+sentinel://``; parsed by
`shared.config.parse_sentinel_url`). Every user of Redis (the broker and so the producer,
the workers, the scheduler and the API's immediate enqueue; the API's rate limits; the ops
page and the CLI) takes its client from `redis_client`, so all of them follow the primary
the same way:

- A Sentinel set's client asks the Sentinels which server is the primary each time it opens
  a connection (redis-py's ``SentinelConnectionPool``). When the primary dies, the
  connections to it fail as in any outage (`redis.ConnectionError`), and the next one opened
  reaches the server the Sentinels promoted.
- A server that answers ``READONLY`` to a write has been demoted to a replica while the
  connection stayed open (a failover that did not kill it, or a DNS name moved to another
  server). That connection is closed and the answer raised as a `redis.ConnectionError`, so
  it takes the path every lost connection takes (the worker's consumer reconnects, an
  acknowledgement is sent again, the scheduler's tick waits, the API answers 503 or defers
  the enqueue) instead of failing as a Redis error nobody retries. redis-py does this for
  a Sentinel set's connections; `ReadOnlyIsLost` does it for a single server's.

A silent server (a cut link, a dropped route) is noticed within ``REMINDERS_PEER_TIMEOUT``
(`redis_options`, which every process passes): redis-py alone waits forever by default, a
connection blocking its thread until TCP gives up, minutes later. No command the service
sends blocks on the server's side (no ``BLPOP``, no ``WAIT``, no pub/sub), so the socket
timeout only ever fires on a command that is not answered at all.

Commands are not retried by redis-py itself (as with Dramatiq's own ``url=``): each caller
decides what a lost connection means for its operation. Nor is a question to a Sentinel:
the next Sentinel is asked instead.
"""

from __future__ import annotations

import socket
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from shared.config import SentinelSet, keepalive_for, parse_sentinel_url

# How long a question to a Sentinel may take (connecting, then answering) before the next
# Sentinel is asked: a Sentinel host that is down must not hold up finding the primary.
SENTINEL_TIMEOUT_SECONDS = 1.0


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


class ReadOnlyIsLost:
    """A connection whose ``READONLY`` answer closes it and raises `redis.ConnectionError`,
    as redis-py's ``SentinelManagedConnection`` does for a Sentinel set's primary."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ReadOnlyError as error:
            self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError(
                f"the server became a read-only replica (READONLY {error})"
            ) from None


class PrimaryConnection(ReadOnlyIsLost, redis.Connection):
    pass


class PrimarySSLConnection(ReadOnlyIsLost, redis.SSLConnection):
    pass


class PrimaryUnixConnection(ReadOnlyIsLost, redis.UnixDomainSocketConnection):
    pass


_CONNECTION_CLASSES: dict[str, type[redis.Connection | redis.UnixDomainSocketConnection]] = {
    "redis": PrimaryConnection,
    "rediss": PrimarySSLConnection,
    "unix": PrimaryUnixConnection,
}


def redis_client(url: str, **options: Any) -> redis.Redis:
    """A client of the server ``url`` (a ``REDIS_URL``) names, or of its Sentinel set's
    current primary.

    ``options`` are redis-py connection options (``socket_timeout=1``, ...), for the Redis
    servers and the Sentinels alike. Nothing is connected until the first command.

    Raises:
        ValueError: ``url`` is not a Redis URL (settings are validated before this).
    """
    if url.startswith(("redis+sentinel://", "rediss+sentinel://")):
        return sentinel_primary(parse_sentinel_url(url), **options)
    scheme = url.partition("://")[0]
    if scheme not in _CONNECTION_CLASSES:
        raise ValueError("not a redis://, rediss:// or unix:// URL")
    pool = redis.ConnectionPool.from_url(
        url, connection_class=_CONNECTION_CLASSES[scheme], **options
    )
    return redis.Redis.from_pool(pool)


def redis_pool(url: str, **options: Any) -> redis.ConnectionPool:
    """The connection pool of `redis_client`'s client, for a library that builds its own
    client on a pool (the rate limiter's storage)."""
    client = redis_client(url, **options)
    client.auto_close_connection_pool = False  # the pool outlives this client
    return client.connection_pool


class Sentinels(Sentinel):
    """redis-py's Sentinel client, whose "no primary" error says in a few words what each
    Sentinel answered (redis-py's holds each Sentinel client's representation instead)."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        """The primary's address, from the first Sentinel that names one that is up (it is
        asked first next time), as redis-py does.

        Raises:
            MasterNotFoundError: no Sentinel answered, or none names a primary that is up.
        """
        answers = []
        for index, sentinel in enumerate(self.sentinels):
            where = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
            try:
                state = sentinel.sentinel_masters().get(service_name)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                answers.append(f"{where}: {error}")
                continue
            if state and self.check_master_state(state, service_name):
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
            answers.append(f"{where}: " + (f"primary {state['flags']}" if state else "unknown"))
        raise MasterNotFoundError(
            f"no Sentinel names a primary of {service_name!r} that is up ({'; '.join(answers)})"
        )


def sentinel_primary(sentinel_set: SentinelSet, **options: Any) -> redis.Redis:
    """A client of ``sentinel_set``'s primary, whichever server that is when a connection
    opens.

    Raises (at a command, not here): `redis.sentinel.MasterNotFoundError` (a
    `redis.ConnectionError`) when no Sentinel answers or none names a primary that is up.
    """
    auth = {"username": sentinel_set.username, "password": sentinel_set.password}
    sentinel_options = {
        "socket_connect_timeout": SENTINEL_TIMEOUT_SECONDS,
        "socket_timeout": SENTINEL_TIMEOUT_SECONDS,
        **{name: value for name, value in options.items() if name.startswith("socket_")},
        **auth,
        "ssl": sentinel_set.tls,
        # One try each: the next Sentinel is the retry (redis-py would try each one 4 times,
        # backing off up to 7 s, before asking the next).
        "retry": Retry(NoBackoff(), 0),
    }
    sentinels = Sentinels(list(sentinel_set.sentinels), sentinel_kwargs=sentinel_options)
    return sentinels.master_for(
        sentinel_set.service, db=sentinel_set.db, ssl=sentinel_set.tls, **auth, **options
    )
