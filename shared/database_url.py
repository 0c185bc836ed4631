"""``DATABASE_URL``'s forms, checked at start and turned into the URL SQLAlchemy opens.

A PostgreSQL URL names one server, or several for a primary and its standbys: libpq's
multi-host form, ``postgresql://[user[:password]@]host:port,host:port[,…]/<database>`` with
``target_session_attrs=read-write``. libpq (through psycopg) then tries the hosts in turn
each time it opens a connection and keeps the first that takes writes, so after a failover
the next connection reaches the promoted standby. SQLAlchemy's URL parser takes one host
before the path (``h1:5432,h2:5432`` is read as a port), so the hosts are moved into the
query as libpq's own ``host=h1,h2&port=5432,5432``, which SQLAlchemy's PostgreSQL dialects
pass on as they are. The hosts may be given that way too, or as SQLAlchemy's repeated
``host=h1:5432&host=h2:5432``.

Several hosts without ``target_session_attrs=read-write`` (or ``primary``) are refused: libpq
would keep the first host that answers, a standby as readily as the primary, and every write
there would fail. The service writes, so a target that asks for a standby is refused too.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg")
MULTI_HOST_FORM = (
    "postgresql://[user[:password]@]host:port,host:port[,…]/<database>"
    "?target_session_attrs=read-write"
)
# libpq's values of target_session_attrs, and those that find a server that takes writes.
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
WRITABLE_SESSION_ATTRS = ("read-write", "primary")
# How SQLAlchemy's PostgreSQL dialects split a single ``host=name:port`` parameter.
_SQLALCHEMY_HOST_PORT = re.compile(r"^([a-zA-Z0-9\-\.]*)(?:\:(\d*))?$")


def sqlalchemy_database_url(url: str) -> str:
    """The SQLAlchemy URL of ``DATABASE_URL`` ``url``: PostgreSQL always through psycopg 3,
    several hosts in the query (see the module's docstring); any other URL as it is.

    Raises:
        ValueError: a PostgreSQL URL whose hosts, ports or ``target_session_attrs`` cannot
            serve; the message says why.
    """
    scheme, separator, _ = url.partition("://")
    if not separator or scheme not in POSTGRES_SCHEMES:
        return url
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed "[" of an IPv6 address
        raise ValueError(f"{error}: {MULTI_HOST_FORM}") from None
    userinfo, at, hosts_text = parts.netloc.rpartition("@")
    query = parse_qsl(parts.query, keep_blank_values=True)
    in_query = [value for name, value in query if name == "host"]
    ports_in_query = [value for name, value in query if name == "port"]
    if hosts_text and (in_query or ports_in_query):
        raise ValueError(
            "name the hosts either before the path or as host= (and port=) parameters, not both"
        )
    if hosts_text:
        hosts = [_host_and_port(text) for text in hosts_text.split(",")]
    else:
        hosts = _query_hosts(in_query, ports_in_query)
    _check_session_attrs(dict(query).get("target_session_attrs"), len(hosts))
    if len(hosts) > 1 and hosts_text:
        query = [
            ("host", ",".join(host for host, _ in hosts)),
            ("port", ",".join(port for _, port in hosts)),
            *query,
        ]
        in_query_form = urlencode(query, safe=",:/", quote_via=quote)
        return urlunsplit(("postgresql+psycopg", f"{userinfo}{at}", parts.path, in_query_form, ""))
    return "postgresql+psycopg://" + url[len(scheme) + len(separator) :]


def _host_and_port(text: str) -> tuple[str, str]:
    """``host``, ``host:port`` or ``[IPv6]:port`` as (host, port); port "" for libpq's default."""
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} is not a host:port: {MULTI_HOST_FORM}")
        port = rest[1:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"{text!r} is not a host:port: {MULTI_HOST_FORM}")
    return host, port


def _query_hosts(given: list[str], ports_given: list[str]) -> list[tuple[str, str]]:
    """The hosts of ``host=`` parameters: libpq's ``host=h1,h2&port=p1,p2`` (a port for each
    host, as SQLAlchemy wants, or none: libpq's default) or SQLAlchemy's repeated
    ``host=h1:p1&host=h2:p2``; [] when the URL names none (libpq's default host)."""
    if len(given) > 1:
        if ports_given:
            raise ValueError("give the ports as host=h1:p1&host=h2:p2 or as port=p1,p2, not both")
        return [_host_and_port(text) for text in given]
    names = given[0].split(",") if given else []
    ports = ",".join(ports_given).split(",") if ports_given else [""] * len(names)
    if len(ports) != len(names):
        raise ValueError(f"{len(names)} hosts but {len(ports)} ports: {MULTI_HOST_FORM}")
    if len(names) == 1 and not ports_given and (found := _SQLALCHEMY_HOST_PORT.match(names[0])):
        names, ports = [found[1]], [found[2] or ""]  # as SQLAlchemy reads host=h:p
    for name, port in zip(names, ports, strict=True):
        if not name or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"{name!r} (port {port!r}) is not a host and port: {MULTI_HOST_FORM}")
    return list(zip(names, ports, strict=True))


def _check_session_attrs(value: str | None, hosts: int) -> None:
    if value is not None and value not in SESSION_ATTRS:
        raise ValueError(f"target_session_attrs={value!r} is not one of {', '.join(SESSION_ATTRS)}")
    if value is not None and value not in (*WRITABLE_SESSION_ATTRS, "any"):
        raise ValueError(
            f"target_session_attrs={value} would connect to a server that refuses writes; "
            "the service writes: use read-write"
        )
    if hosts > 1 and value not in WRITABLE_SESSION_ATTRS:
        raise ValueError(
            f"{hosts} hosts need target_session_attrs=read-write, else libpq keeps the first "
            f"host that answers, a standby as readily as the primary: {MULTI_HOST_FORM}"
        )
