"""The address guard: which URLs and addresses a user's webhook endpoint may point at.

An endpoint URL is the user's to choose, and the workers POST to it from inside the
deployment's network; without a guard it would reach loopback services, the private
network or the cloud's metadata address (server-side request forgery). An endpoint must
use ``https`` and every address it resolves to must be a global unicast address. The
URL is checked when the endpoint is saved (`check_url`) and the address again at delivery,
against the address actually connected to (``shared.delivery.webhook_transport``), since a host
name can resolve to a public address today and to 127.0.0.1 tomorrow (DNS rebinding).
``REMINDERS_ALLOW_PRIVATE_ENDPOINTS`` lifts both rules, for tests and local setups.

Pure: the standard library, ``idna`` (host names as httpx reads them, IDNA 2008), and name
resolution through an injectable `Resolver`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import unicodedata
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], list[str]]
"""Resolves ``(host, port)`` to IP address strings; raises `OSError` when it cannot."""

MAX_URL_LENGTH = 2048
INVALID_HOST = "endpoint URL has an invalid host: not a host name or an IP address"
# A DNS label as connected to (RFC 1123; "_" too, which some real host names carry).
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# getaddrinfo has no timeout of its own; a lookup not answered by then is given up.
RESOLVE_TIMEOUT_SECONDS = 5.0

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# First match wins. From IANA's special-purpose registries: every block that is not
# globally reachable, named for the message. Written out rather than taken from
# `is_global`, whose lists differ between Python releases (3.11 calls 224.0.0.1, fec0::1
# and 3fff::1 global).
_IPV4_RULES: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("0.0.0.0/32"), "unspecified"),
    (_V4("0.0.0.0/8"), "reserved ('this network')"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("100.64.0.0/10"), "shared address space (carrier-grade NAT)"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("192.0.0.0/24"), "reserved for protocol assignments"),
    (_V4("192.0.2.0/24"), "reserved for documentation"),
    (_V4("198.51.100.0/24"), "reserved for documentation"),
    (_V4("203.0.113.0/24"), "reserved for documentation"),
    (_V4("198.18.0.0/15"), "reserved for benchmarking"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved"),
)
_IPV6_RULES: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("64:ff9b:1::/48"), "private (local-use NAT64)"),
    (_V6("100::/64"), "reserved (discard-only)"),
    (_V6("2001:db8::/32"), "reserved for documentation"),
    (_V6("3fff::/20"), "reserved for documentation"),
    (_V6("2001:2::/48"), "reserved for benchmarking"),
    (_V6("2001::/23"), "reserved for protocol assignments"),
    (_V6("fc00::/7"), "private (unique local)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
)
# Global unicast IPv6 lies in 2000::/3; the rest of the space is unassigned or special.
_IPV6_GLOBAL_UNICAST = _V6("2000::/3")
_IPV4_MAPPED = _V6("::ffff:0:0/96")
_IPV4_COMPATIBLE = _V6("::/96")
_NAT64 = _V6("64:ff9b::/96")
_SIX_TO_FOUR = _V6("2002::/16")


class AddressRefused(Exception):
    """An endpoint URL or address is not allowed; the message says why, for the user."""


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be an endpoint's address, or None when it may.

    The reason is a short phrase ("loopback", "private", "link-local", ...). Only global
    unicast addresses are allowed. An IPv6 address that carries an IPv4 one (IPv4-mapped,
    IPv4-compatible, NAT64 64:ff9b::/96, 6to4) is judged by the IPv4 address it carries,
    which is where its packets end up.
    """
    if isinstance(address, ipaddress.IPv4Address):
        for network, reason in _IPV4_RULES:
            if address in network:
                return reason
        return None if address.is_global else "not a global address"
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        carried = refusal(embedded)
        return None if carried is None else f"{carried}: it embeds {embedded}"
    for network6, reason6 in _IPV6_RULES:
        if address in network6:
            return reason6
    if address not in _IPV6_GLOBAL_UNICAST:
        return "reserved"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in _IPV4_MAPPED:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """``host``'s TCP addresses from the system resolver (hosts file, DNS).

    Blocks for as long as getaddrinfo does: call it through `lookup`, which bounds it.

    Raises:
        OSError: the host does not resolve.
    """
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except UnicodeError as exc:  # a label IDNA cannot encode
        raise OSError(f"{host} is not a valid host name") from exc
    families = (socket.AF_INET, socket.AF_INET6)
    return [str(sockaddr[0]) for family, _, _, _, sockaddr in answers if family in families]


def lookup(
    host: str,
    port: int,
    *,
    resolve: Resolver = system_resolver,
    timeout: float = RESOLVE_TIMEOUT_SECONDS,
) -> list[IPAddress]:
    """``host``'s addresses in the resolver's order, without repeats; an IP literal is its own.

    The resolver runs on a thread of its own and is given up after ``timeout`` seconds (the
    thread is a daemon and ends when the resolver does).

    Raises:
        TimeoutError: no answer within ``timeout``.
        OSError: the host does not resolve, or resolves to nothing.
    """
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    answer: Future[list[str]] = Future()

    def run() -> None:
        try:
            answer.set_result(resolve(host, port))
        except BaseException as exc:
            answer.set_exception(exc)

    threading.Thread(target=run, name=f"resolve {host}", daemon=True).start()
    try:
        answers = answer.result(timeout)
    except TimeoutError:
        raise TimeoutError(f"{host} was not resolved within {timeout:g} s") from None
    try:
        addresses = list(dict.fromkeys(ipaddress.ip_address(text) for text in answers))
    except ValueError as exc:
        raise OSError(f"{host} resolves to something that is not an address") from exc
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    return addresses


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an address when it is an IP literal (without brackets), else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_address(host: str, address: IPAddress) -> None:
    """Refuse ``address`` (one of ``host``'s) unless it is a global unicast address.

    Raises:
        AddressRefused: naming the address and why.
    """
    reason = refusal(address)
    if reason is None:
        return
    if ip_literal(host) == address:
        raise AddressRefused(f"endpoint address {address} is {reason}")
    raise AddressRefused(f"{host} resolves to {address} ({reason})")


def check_url(
    url: str,
    *,
    allow_private: bool,
    resolve: Resolver = system_resolver,
    timeout: float = RESOLVE_TIMEOUT_SECONDS,
) -> None:
    """Refuse ``url`` as an endpoint URL unless it is https and reaches only global addresses.

    What is checked when an endpoint is saved: the scheme (``https``; ``http`` too when
    ``allow_private``), a valid host (`valid_host`), no user name or password, a port in
    1-65535, at most `MAX_URL_LENGTH` characters; then, unless ``allow_private``, every
    address the host resolves to (an IP literal is checked as it is), through ``resolve``
    given at most ``timeout`` seconds.

    Raises:
        AddressRefused: the message says why, for the user; it never quotes a password.
    """
    parts = _split(url)
    schemes = ("http", "https") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise AddressRefused(f"endpoint URL must use {' or '.join(schemes)}")
    if "@" in parts.netloc:
        raise AddressRefused("endpoint URL must not contain a user name or password")
    host = parts.hostname
    if not host:
        raise AddressRefused("endpoint URL has no host")
    if not valid_host(host):
        raise AddressRefused(INVALID_HOST)
    try:
        port = parts.port
    except ValueError:
        raise AddressRefused("endpoint URL has an invalid port") from None
    if port == 0:
        raise AddressRefused("endpoint URL has an invalid port")
    if allow_private:
        return
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = lookup(host, port, resolve=resolve, timeout=timeout)
    except TimeoutError:
        raise AddressRefused(f"endpoint host {host} could not be resolved in time") from None
    except OSError:
        raise AddressRefused(f"endpoint host {host} could not be resolved") from None
    for address in addresses:
        check_address(host, address)


def valid_host(host: str) -> bool:
    """Whether ``host`` (a URL's host name, without brackets) can be connected to: an IP
    address, or a host name of at most 253 characters whose labels are letters, digits,
    ``-`` and ``_`` (1-63 each, no ``-`` at either end), international ones written as
    IDNA 2008 allows, as httpx sends them. Four numbers that are no IPv4 address
    (``999.1.1.1``) are none either; shorter numeric forms (``127.1``) are addresses to the
    resolver, and judged as such."""
    if ip_literal(host) is not None:
        return True
    name = host.lower().removesuffix(".")
    try:
        name = idna.encode(name).decode("ascii") if not name.isascii() else name
        labels = name.split(".")
        for label in labels:
            if label.startswith("xn--"):
                idna.decode(label)  # an A-label must spell a valid international one
    except (idna.IDNAError, UnicodeError):
        return False
    broken_ipv4 = len(labels) == 4 and all(label.isdigit() for label in labels)
    return len(name) <= 253 and all(_LABEL.match(label) for label in labels) and not broken_ipv4


def _is_hidden(char: str) -> bool:
    """A control (Cc), format (Cf: bidi controls, U+FEFF, zero-width), unassigned or private
    (Cn, Co, Cs) character, or a line or paragraph separator (Zl, Zp)."""
    category = unicodedata.category(char)
    return category[0] == "C" or category in ("Zl", "Zp")


def _split(url: str) -> urllib.parse.SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise AddressRefused(f"endpoint URL is longer than {MAX_URL_LENGTH} characters")
    # URL parsers disagree about these (WHATWG reads "\" as "/" and drops tabs), so the
    # host checked here might not be the host connected to.
    if any(char <= " " or char in "\x7f\\" for char in url):
        raise AddressRefused("endpoint URL contains a space, a control character or a backslash")
    # Beyond ASCII: C1 controls, bidi overrides, zero-width and byte-order marks, line and
    # paragraph separators. Invisible, or reordering what a person reads (an operator
    # reading the URL in a listing would not see where it goes).
    hidden = next((char for char in url if _is_hidden(char)), None)
    if hidden is not None:
        raise AddressRefused(
            f"endpoint URL contains an invisible or control character (U+{ord(hidden):04X}): "
            "remove it and send the URL again"
        )
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced "[" or a malformed IPv6 literal
        raise AddressRefused("endpoint URL is not a valid URL") from None
