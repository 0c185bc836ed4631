"""The address guard's rules: which endpoint URLs and addresses are refused, and why.

No test here resolves a name through DNS: host names go through resolvers that answer
fixed addresses; only ``localhost`` and numeric host names reach the system resolver,
which answers those from the hosts file and the address parser.
"""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from shared.delivery.address_guard import (
    MAX_URL_LENGTH,
    AddressRefused,
    Resolver,
    check_url,
    lookup,
    refusal,
    system_resolver,
    valid_host,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def answering(*addresses: str) -> Resolver:
    """A resolver that answers ``addresses`` for any host."""
    return lambda host, port: list(addresses)


def never_called(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should not have been resolved")


def refused(url: str, resolve: Resolver = never_called, *, allow_private: bool = False) -> str:
    with pytest.raises(AddressRefused) as refusal_raised:
        check_url(url, allow_private=allow_private, resolve=resolve)
    return str(refusal_raised.value)


REFUSED_ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.4.2", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "shared address space (carrier-grade NAT)"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "reserved ('this network')"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.0.8", "reserved for protocol assignments"),
    ("192.0.2.1", "reserved for documentation"),
    ("198.51.100.7", "reserved for documentation"),
    ("203.0.113.9", "reserved for documentation"),
    ("198.18.0.1", "reserved for benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "private (unique local)"),
    ("fd12::1", "private (unique local)"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "reserved for documentation"),
    ("3fff::1", "reserved for documentation"),
    ("2001:2::1", "reserved for benchmarking"),
    ("2001::1", "reserved for protocol assignments"),
    ("100::1", "reserved (discard-only)"),
    ("64:ff9b:1::a00:1", "private (local-use NAT64)"),
    ("4000::1", "reserved"),
    # IPv6 forms of an IPv4 address are judged by the IPv4 address.
    ("::ffff:127.0.0.1", "loopback: it embeds 127.0.0.1"),
    ("::ffff:10.0.0.1", "private: it embeds 10.0.0.1"),
    ("::ffff:169.254.169.254", "link-local: it embeds 169.254.169.254"),
    ("::127.0.0.1", "loopback: it embeds 127.0.0.1"),
    ("64:ff9b::a00:1", "private: it embeds 10.0.0.1"),
    ("64:ff9b::7f00:1", "loopback: it embeds 127.0.0.1"),
    ("2002:7f00:1::", "loopback: it embeds 127.0.0.1"),
    ("2002:c0a8:101::1", "private: it embeds 192.168.1.1"),
]

ALLOWED_ADDRESSES = [
    PUBLIC_V4,
    PUBLIC_V6,
    "8.8.8.8",
    "1.1.1.1",
    "172.32.0.1",  # just past 172.16.0.0/12
    "100.128.0.1",  # just past 100.64.0.0/10
    "2001:4860:4860::8888",
    f"::ffff:{PUBLIC_V4}",  # IPv4-mapped, judged by the public IPv4 address
    "64:ff9b::5db8:d70e",  # NAT64 of 93.184.215.14
]


@pytest.mark.parametrize(("address", "reason"), REFUSED_ADDRESSES)
def test_non_global_addresses_are_refused_with_their_reason(address: str, reason: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ALLOWED_ADDRESSES)
def test_global_unicast_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


# A zone ID (fe80::1%eth0) is percent-encoded in a URL, where it is no IP literal.
LITERALS = [(address, reason) for address, reason in REFUSED_ADDRESSES if "%" not in address]


@pytest.mark.parametrize(("address", "reason"), LITERALS)
def test_a_url_with_a_refused_ip_literal_is_refused_without_resolving(
    address: str, reason: str
) -> None:
    parsed = ipaddress.ip_address(address)
    host = f"[{address}]" if parsed.version == 6 else address
    assert refused(f"https://{host}/hook") == f"endpoint address {parsed} is {reason}"


def test_a_host_resolving_to_loopback_is_refused_naming_host_and_address() -> None:
    assert (
        refused("https://api.example/hook", answering("127.0.0.1"))
        == "api.example resolves to 127.0.0.1 (loopback)"
    )


def test_a_host_resolving_to_the_metadata_address_is_refused() -> None:
    assert (
        refused("https://metadata.example/", answering("169.254.169.254"))
        == "metadata.example resolves to 169.254.169.254 (link-local)"
    )


@pytest.mark.parametrize(
    "answers",
    [
        (PUBLIC_V4, "10.0.0.5"),
        ("10.0.0.5", PUBLIC_V4),
        (PUBLIC_V6, "::1"),
        (PUBLIC_V4, PUBLIC_V6, "::ffff:192.168.0.1"),
    ],
)
def test_a_host_with_any_refused_address_is_refused(answers: tuple[str, ...]) -> None:
    message = refused("https://mixed.example/", answering(*answers))
    assert message.startswith("mixed.example resolves to ")


@pytest.mark.parametrize(
    ("answers", "port"),
    [((PUBLIC_V4,), 443), ((PUBLIC_V6,), 443), ((PUBLIC_V4, PUBLIC_V6), 8443)],
)
def test_a_host_resolving_to_public_addresses_is_allowed(
    answers: tuple[str, ...], port: int
) -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(answers)

    url = "https://hooks.example/in" if port == 443 else f"https://hooks.example:{port}/in"
    check_url(url, allow_private=False, resolve=resolve)
    assert asked == [("hooks.example", port)]


@pytest.mark.parametrize("literal", [PUBLIC_V4, f"[{PUBLIC_V6}]"])
def test_a_public_ip_literal_is_allowed_without_resolving(literal: str) -> None:
    check_url(f"https://{literal}:8443/in", allow_private=False, resolve=never_called)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example/in", "endpoint URL must use https"),
        ("HTTP://hooks.example/in", "endpoint URL must use https"),
        ("ftp://hooks.example/in", "endpoint URL must use https"),
        ("file:///etc/passwd", "endpoint URL must use https"),
        ("gopher://hooks.example:70/_GET", "endpoint URL must use https"),
        ("javascript:alert(1)", "endpoint URL must use https"),
        ("hooks.example/in", "endpoint URL must use https"),
        ("https:///in", "endpoint URL has no host"),
        ("https://", "endpoint URL has no host"),
        ("https://:443/in", "endpoint URL has no host"),
        ("https://user:pass@hooks.example/in", "must not contain a user name or password"),
        ("https://user@hooks.example/in", "must not contain a user name or password"),
        ("https://@hooks.example/in", "must not contain a user name or password"),
        ("https://hooks.example:0/in", "endpoint URL has an invalid port"),
        ("https://hooks.example:65536/in", "endpoint URL has an invalid port"),
        ("https://hooks.example:https/in", "endpoint URL has an invalid port"),
        ("https://[::1/in", "endpoint URL is not a valid URL"),
        ("https://hooks.example\\@127.0.0.1/", "a control character or a backslash"),
        ("https://hooks.example /in", "a control character or a backslash"),
        ("https://hooks.exa\tmple/in", "a control character or a backslash"),
        ("https://hooks.example/in\n", "a control character or a backslash"),
        (
            "https://hooks.example/" + "a" * MAX_URL_LENGTH,
            f"endpoint URL is longer than {MAX_URL_LENGTH} characters",
        ),
    ],
)
def test_malformed_or_non_https_urls_are_refused(url: str, message: str) -> None:
    assert message in refused(url, answering(PUBLIC_V4))


def test_a_refusal_never_quotes_the_password() -> None:
    message = refused("https://admin:hunter2@hooks.example/in", answering(PUBLIC_V4))
    assert "hunter2" not in message
    assert "admin" not in message


def test_a_url_of_the_longest_length_allowed_is_allowed() -> None:
    base = "https://hooks.example/"
    check_url(
        base + "a" * (MAX_URL_LENGTH - len(base)), allow_private=False, resolve=answering(PUBLIC_V4)
    )


def failing(error: Exception) -> Resolver:
    def resolve(host: str, port: int) -> list[str]:
        raise error

    return resolve


@pytest.mark.parametrize(
    "resolve",
    [
        failing(OSError(-2, "Name or service not known")),
        answering(),
        answering("not an address"),
    ],
)
def test_a_host_that_does_not_resolve_is_refused(resolve: Resolver) -> None:
    assert (
        refused("https://nowhere.example/in", resolve)
        == "endpoint host nowhere.example could not be resolved"
    )


def test_a_resolver_that_does_not_answer_in_time_is_given_up() -> None:
    released = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        released.wait(10)
        return [PUBLIC_V4]

    started = time.monotonic()
    try:
        with pytest.raises(AddressRefused) as refusal_raised:
            check_url("https://slow.example/", allow_private=False, resolve=hanging, timeout=0.2)
    finally:
        released.set()
    assert time.monotonic() - started < 2
    assert str(refusal_raised.value) == "endpoint host slow.example could not be resolved in time"


@pytest.mark.parametrize("host", ["localhost", "127.1", "2130706433", "0x7f000001"])
def test_the_system_resolver_sees_through_loopback_names_and_numeric_forms(host: str) -> None:
    # Neither the hosts file's localhost nor inet_aton's numeric forms need DNS.
    message = refused(f"https://{host}/in", system_resolver)
    assert message.startswith(f"{host} resolves to ")
    assert "(loopback)" in message


def test_lookup_keeps_the_resolvers_order_without_repeats() -> None:
    addresses = lookup(
        "hooks.example", 443, resolve=answering(PUBLIC_V6, PUBLIC_V4, PUBLIC_V6), timeout=1
    )
    assert [str(address) for address in addresses] == [PUBLIC_V6, PUBLIC_V4]


# With REMINDERS_ALLOW_PRIVATE_ENDPOINTS: http and any address, never other schemes.


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://127.0.0.1/hook",
        "http://[::1]:8080/hook",
        "http://10.0.0.5/hook",
        "http://receiver.internal/hook",  # not even resolved: it may not exist yet
        "https://169.254.169.254/",
    ],
)
def test_allow_private_lets_http_and_private_addresses_through(url: str) -> None:
    check_url(url, allow_private=True, resolve=never_called)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/in",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "javascript:alert(1)",
        "redis://127.0.0.1:6379/0",
    ],
)
def test_allow_private_still_refuses_other_schemes(url: str) -> None:
    assert refused(url, allow_private=True) == "endpoint URL must use http or https"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user:pass@127.0.0.1/in", "must not contain a user name or password"),
        ("http:///in", "endpoint URL has no host"),
        ("http://127.0.0.1:0/in", "endpoint URL has an invalid port"),
    ],
)
def test_allow_private_still_requires_a_well_formed_url(url: str, message: str) -> None:
    assert message in refused(url, allow_private=True)


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("hooks.example.com", True),
        ("hooks.example.com.", True),  # fully qualified
        ("my_service", True),  # "_" is in real host names (containers, some CDNs)
        ("b\u00fccher.example", True),  # international, sent as xn--bcher-kva.example
        ("xn--bcher-kva.example", True),
        ("127.1", True),  # a numeric form: an address to the resolver, judged as one
        ("2001:db8::1", True),
        ("\u00b6", False),  # not allowed by IDNA 2008
        ("\u2603.example", False),
        ("xn--zz.example", False),  # an A-label that spells nothing
        ("-hooks.example", False),
        ("hooks-.example", False),
        ("hooks..example", False),
        ("a%41.example", False),
        ("*.example", False),
        ("a" * 64 + ".example", False),
        (".".join(["a" * 63] * 4), False),  # 255 characters
        ("999.1.2.3", False),  # four numbers, no IPv4 address
    ],
)
def test_a_host_is_a_host_name_or_an_ip_address(host: str, valid: bool) -> None:
    assert valid_host(host) is valid
