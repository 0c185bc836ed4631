"""``DATABASE_URL``'s forms: one PostgreSQL host, or a primary and its standbys in libpq's
multi-host form (SPEC §4.10, §8).

Several hosts are handed to psycopg as libpq's ``host=h1,h2&port=p1,p2``, which SQLAlchemy
passes on; a bad form stops the process at start with one line naming ``DATABASE_URL`` and
what is wrong, never its password.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, make_url

from shared.config import ConfigError, load_settings

PASSWORD = "pa55-do-not-print"


def connect_args(url: str) -> dict[str, object]:
    """What SQLAlchemy's psycopg dialect hands ``psycopg.connect`` for ``url``."""
    resolved = load_settings({"DATABASE_URL": url}).resolved_database_url
    engine = create_engine(resolved)
    _, arguments = engine.dialect.create_connect_args(make_url(resolved))
    arguments.pop("context", None)
    return dict(arguments)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            # libpq's URI form, as operators write it for a primary and its standby.
            f"postgresql://app:{PASSWORD}@db-a:5432,db-b:5433/reminders"
            "?target_session_attrs=read-write&sslmode=require",
            {
                "host": "db-a,db-b",
                "port": "5432,5433",
                "user": "app",
                "password": PASSWORD,
                "dbname": "reminders",
                "target_session_attrs": "read-write",
                "sslmode": "require",
            },
        ),
        (
            # IPv6 addresses, a host on libpq's default port, a percent-encoded password.
            "postgres://app:p%40ss@[fd00::1]:5432,db-b/reminders?target_session_attrs=primary",
            {
                "host": "fd00::1,db-b",
                "port": "5432,",
                "user": "app",
                "password": "p@ss",
                "dbname": "reminders",
                "target_session_attrs": "primary",
            },
        ),
        (
            # SQLAlchemy's own form: the hosts as repeated query parameters.
            "postgresql+psycopg://app@/reminders?host=db-a:5432&host=db-b:5433"
            "&target_session_attrs=read-write",
            {
                "host": "db-a,db-b",
                "port": "5432,5433",
                "user": "app",
                "dbname": "reminders",
                "target_session_attrs": "read-write",
            },
        ),
        (
            # libpq's keyword form in the query.
            "postgresql://app@/reminders?host=db-a,db-b&port=6432,6433"
            "&target_session_attrs=read-write",
            {
                "host": "db-a,db-b",
                "port": "6432,6433",
                "user": "app",
                "dbname": "reminders",
                "target_session_attrs": "read-write",
            },
        ),
        (
            "postgresql://app@db:5432/reminders",
            {"host": "db", "port": 5432, "user": "app", "dbname": "reminders"},
        ),
    ],
)
def test_a_database_url_names_every_host_psycopg_tries(
    url: str, expected: dict[str, object]
) -> None:
    assert connect_args(url) == expected


def test_the_multi_host_form_becomes_libpqs_host_and_port_lists() -> None:
    settings = load_settings(
        {"DATABASE_URL": "postgresql://app@a:1,b:2/r?target_session_attrs=read-write"}
    )

    assert settings.resolved_database_url == (
        "postgresql+psycopg://app@/r?host=a,b&port=1,2&target_session_attrs=read-write"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://db-a:5432,db-b:5432/r", "2 hosts need target_session_attrs=read-write"),
        (
            "postgresql://db-a,db-b/r?target_session_attrs=any",
            "2 hosts need target_session_attrs=read-write",
        ),
        (
            "postgresql://db-a:5432/r?target_session_attrs=standby",
            "would connect to a server that refuses writes",
        ),
        (
            "postgresql://db-a:5432/r?target_session_attrs=prefer-standby",
            "would connect to a server that refuses writes",
        ),
        ("postgresql://db-a/r?target_session_attrs=rw", "'rw' is not one of any, read-write"),
        ("postgresql://db-a:5432,db-b:x/r?target_session_attrs=read-write", "'db-b:x' is not"),
        ("postgresql://db-a:5432,,db-b/r?target_session_attrs=read-write", "'' is not"),
        ("postgresql://db-a:99999/r", "'db-a:99999' is not a host:port"),
        ("postgresql://[fd00::1/r", "Invalid IPv6 URL"),
        ("postgresql://db-a:5432/r?host=db-b", "not both"),
        (
            "postgresql://app@/r?host=a,b,c&port=1,2&target_session_attrs=read-write",
            "3 hosts but 2 ports",
        ),
        ("postgresql://app@/r?host=a,b&port=1&target_session_attrs=read-write", "2 hosts but 1"),
        (
            "postgresql://app@/r?host=a:1&host=b:2&port=3&target_session_attrs=read-write",
            "not both",
        ),
        ("mysql://db/r", "must start with postgresql://"),
    ],
)
def test_a_bad_database_url_is_refused_naming_database_url_and_why(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": url})
    [line] = str(caught.value).splitlines()
    assert line.startswith("configuration error: DATABASE_URL="), line
    assert why in line


def test_a_refused_database_url_is_shown_without_its_password() -> None:
    url = f"postgresql://app:{PASSWORD}@db-a:5432,db-b:5432/r"  # no target_session_attrs
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": url})
    message = str(caught.value)
    assert "DATABASE_URL='postgresql://app:***@db-a:5432,db-b:5432/r'" in message
    assert PASSWORD not in message
