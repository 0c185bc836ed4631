"""The Redis client every process builds (`shared.broker.connection`) follows the primary.

Against a real Redis Sentinel set on loopback (a primary, its replica, three Sentinels):
killed, the primary is replaced and the same client writes to the new one; demoted while
connections to it stay open, its ``READONLY`` answer is a lost connection, never an error
the caller would not retry. A single server's client treats ``READONLY`` the same way.

Real time: real Sentinels notice a killed primary only after their
``down-after-milliseconds`` (1 s here) and then elect and promote; a few seconds a test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from shared.broker.connection import redis_client
from tests.private_servers import PrivateRedis, PrivateSentinelSet, private_sentinel_set

PASSWORD = "sentinel-test-pw"


@pytest.fixture
def sentinel_set() -> Iterator[PrivateSentinelSet]:
    with private_sentinel_set(PASSWORD) as servers:
        yield servers


def eventually(attempt: Callable[[], object], timeout: float) -> tuple[object, list[str]]:
    """``attempt()``'s result once it stops raising `redis.ConnectionError`, and the errors
    met before; the last error if ``timeout`` seconds pass first."""
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            return attempt(), errors
        except redis.ConnectionError as error:
            errors.append(str(error))
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_client_writes_to_the_new_primary_after_the_old_one_is_killed(
    sentinel_set: PrivateSentinelSet,
) -> None:
    client = redis_client(sentinel_set.url)
    assert client.set("before", "1")
    old = sentinel_set.primary()
    sentinel_set.wait_replicated()

    old.kill()
    new = sentinel_set.wait_for_new_primary(old)
    result, errors = eventually(lambda: client.set("after", "2"), timeout=15)

    assert result is True
    assert new.cli("get", "after") == "2"
    assert new.cli("get", "before") == "1"  # replicated before the kill
    assert all(PASSWORD not in error for error in errors)
    client.close()


def test_a_demoted_primary_answering_readonly_is_a_lost_connection(
    sentinel_set: PrivateSentinelSet,
) -> None:
    """A failover that leaves the old primary running: a connection still open to it meets
    ``READONLY`` once it is a replica. The client drops that connection and raises a
    `redis.ConnectionError`; its next command reaches the new primary."""
    client = redis_client(sentinel_set.url)
    assert client.set("key", "old")  # a connection to the primary, kept in the pool
    old = sentinel_set.primary()

    new = sentinel_set.force_failover()
    old.cli("replicaof", "127.0.0.1", str(new.port))  # as the Sentinels do a moment later

    with pytest.raises(redis.ConnectionError) as lost:
        client.set("key", "new")
    assert not isinstance(lost.value, redis.ResponseError)
    result, _ = eventually(lambda: client.set("key", "new"), timeout=10)
    assert result is True
    assert new.cli("get", "key") == "new"
    client.close()


def test_a_single_servers_client_treats_readonly_as_a_lost_connection() -> None:
    """The same for ``redis://`` (a DNS name or address moved to another server): the
    client never takes ``READONLY`` for an answer, and once the server at its address is a
    primary again its next command goes through."""
    primary, other = PrivateRedis(), PrivateRedis()
    try:
        primary.start()
        other.start()
        client = redis_client(primary.url)
        assert client.rpush("queue", "a") == 1
        primary.cli("replicaof", "127.0.0.1", str(other.port))

        for _ in range(2):  # each time on a fresh connection to the same replica
            with pytest.raises(redis.ConnectionError, match="read-only replica"):
                client.rpush("queue", "b")
        script = client.register_script("return redis.call('rpush', KEYS[1], ARGV[1])")
        with pytest.raises(redis.ConnectionError, match="read-only replica"):
            script(keys=["queue"], args=["c"])
        with pytest.raises(redis.ConnectionError, match="read-only replica"):
            client.pipeline(transaction=True).rpush("queue", "d").rpush("queue", "e").execute()

        primary.cli("replicaof", "no", "one")
        assert client.rpush("queue", "f") >= 1
        client.close()
    finally:
        primary.close()
        other.close()
