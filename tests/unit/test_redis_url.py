"""``REDIS_URL``'s forms: one server, or a Redis Sentinel set (SPEC §4.10, §8).

A Sentinel URL is parsed at start; a bad one stops the process with a line naming
``REDIS_URL`` and what is wrong, never its password.
"""

from __future__ import annotations

import pytest

from shared.broker.connection import redis_client
from shared.config import ConfigError, SentinelSet, load_settings, parse_sentinel_url, redact_url

PASSWORD = "pa55-do-not-print"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,sentinel-c:26381/mymaster",
            SentinelSet(
                sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26381)),
                service="mymaster",
            ),
        ),
        (
            f"redis+sentinel://app:{PASSWORD}@s1:5000/reminders/3",
            SentinelSet(
                sentinels=(("s1", 5000),),
                service="reminders",
                db=3,
                username="app",
                password=PASSWORD,
            ),
        ),
        (
            # No user, a percent-encoded password; a Sentinel's port defaults to 26379.
            "rediss+sentinel://:p%40ss%2Fword@[::1]:26390,s2/reminders/",
            SentinelSet(
                sentinels=(("::1", 26390), ("s2", 26379)),
                service="reminders",
                password="p@ss/word",
                tls=True,
            ),
        ),
    ],
)
def test_a_sentinel_url_names_its_sentinels_service_database_and_credentials(
    url: str, expected: SentinelSet
) -> None:
    assert parse_sentinel_url(url) == expected
    settings = load_settings({"REDIS_URL": url})
    assert settings.redis_sentinel == expected
    assert settings.redis_url == url


def test_a_single_server_url_names_no_sentinel_set() -> None:
    for url in ("redis://cache:6380/2", "rediss://:pw@cache:6380/0", "unix:///run/redis.sock"):
        assert load_settings({"REDIS_URL": url}).redis_sentinel is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://s1:26379", "names the service"),
        ("redis+sentinel://s1:26379/", "names the service"),
        ("redis+sentinel://s1:26379/reminders/zero", "at most a database number"),
        ("redis+sentinel://s1:26379/reminders/0/extra", "at most a database number"),
        ("redis+sentinel://s1:70000/reminders", "'s1:70000' is not a Sentinel's host:port"),
        ("redis+sentinel://s1:26379,/reminders", "'' is not a Sentinel's host:port"),
        ("redis+sentinel://s1:port/reminders", "'s1:port' is not a Sentinel's host:port"),
        ("redis+sentinel://[::1/reminders", "Invalid IPv6 URL"),
        ("redis+sentinel://s1/reminders?ssl=true", "takes no query"),
        ("sentinel://s1/reminders", "must start with redis://"),
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_redis_url_and_why(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": url})
    [line] = str(caught.value).splitlines()
    assert line.startswith("configuration error: REDIS_URL="), line
    assert why in line
    if "sentinel" in url and "must start" not in why:
        assert "redis+sentinel://[user:password@]host:port[,host:port…]/<service name>" in line


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://app:{PASSWORD}@s1:26379",  # no service: refused
        f"redis+sentinel://:{PASSWORD}@s1:26379/reminders/x",
        f"http://:{PASSWORD}@cache:6379/0",
        f"redis+sentinel://:{PASSWORD}@[::1/reminders",  # too broken to parse
    ],
)
def test_a_refused_redis_url_is_shown_without_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": url})
    message = str(caught.value)
    assert "REDIS_URL=" in message and ":***@" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"redis+sentinel://app:{PASSWORD}@s1:1,s2:2/r/0",
            "redis+sentinel://app:***@s1:1,s2:2/r/0",
        ),
        (f"rediss+sentinel://:{PASSWORD}@s1/r", "rediss+sentinel://:***@s1/r"),
        (f"redis://:{PASSWORD}@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis+sentinel://s1:1/r", "redis+sentinel://s1:1/r"),
        (f"redis+sentinel://:{PASSWORD}@[::1/r?x=@", "redis+sentinel://:***@[::1/r?x=@"),
        (f"unix://:{PASSWORD}@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        (
            f"unix:///run/redis.sock?db=1&password={PASSWORD}",
            "unix:///run/redis.sock?db=1&password=***",
        ),
    ],
)
def test_redact_url_hides_the_password_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_sentinel_urls_client_asks_its_sentinels_for_the_services_primary() -> None:
    """Built without connecting anywhere: the first command asks the Sentinels."""
    client = redis_client(
        f"rediss+sentinel://app:{PASSWORD}@s1:26379,s2:26380/reminders/2", socket_timeout=3
    )
    pool = client.connection_pool
    assert getattr(pool, "service_name", None) == "reminders"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (2, "app", PASSWORD)
    assert kwargs["socket_timeout"] == 3
    assert "SSL" in pool.connection_class.__name__
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    addresses = [s.connection_pool.connection_kwargs for s in sentinels]
    assert [(a["host"], a["port"]) for a in addresses] == [("s1", 26379), ("s2", 26380)]
    # The credentials and TLS go to the Sentinels too; so does the caller's socket timeout.
    assert all(a["password"] == PASSWORD and a["socket_timeout"] == 3 for a in addresses)
    assert all("SSL" in s.connection_pool.connection_class.__name__ for s in sentinels)
    # A Sentinel that does not answer is asked once: the next one is asked at once.
    assert all(s.get_retry().get_retries() == 0 for s in sentinels)
