"""The guarded webhook transport: refused addresses are never connected to, at delivery.

Every test talks to a real HTTP server on 127.0.0.1 that counts the connections it
accepts, and spies on `socket.socket.connect`: a connection to anything but loopback is
recorded and refused by the spy before a packet leaves. Host names go through resolvers
that answer fixed addresses; nothing here asks DNS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.delivery.address_guard import Resolver, check_url
from shared.delivery.webhook_transport import (
    AddressGuard,
    AddressRefusedError,
    Deadline,
    DeadlineBackend,
    deadline_client,
    refused_reason,
)

PUBLIC_V4 = "93.184.215.14"


class LocalServer:
    """An HTTP server on 127.0.0.1 counting accepted connections and answered requests."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.accepted = 0
        self.hosts: list[str] = []  # the Host header of each request answered
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    owner.hosts.append(self.headers.get("Host", ""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Counting(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                connection, address = super().get_request()
                with lock:
                    owner.accepted += 1
                if tls is None:
                    return connection, address
                connection.settimeout(5)
                return tls.wrap_socket(connection, server_side=True), address

        self._server = Counting(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def wait_accepted(self, count: int, within: float = 5.0) -> None:
        until = time.monotonic() + within
        while self.accepted < count and time.monotonic() < until:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    running = LocalServer()
    yield running
    running.stop()


@dataclass
class Connects:
    """Every address a socket of this process connected to (or tried to) during the test.

    ``redirect`` sends a connection meant for an address elsewhere, as a transparent proxy
    or NAT on the path would.
    """

    addresses: list[str] = field(default_factory=list)
    redirect: dict[str, tuple[str, int]] = field(default_factory=dict)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Connects:
    record = Connects()
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        host = str(address[0])
        record.addresses.append(host)
        if host in record.redirect:
            return real_connect(sock, record.redirect[host])
        if not ipaddress.ip_address(host).is_loopback:
            raise ConnectionRefusedError(f"the test lets nothing connect to {host}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return record


def answering(*answers: list[str]) -> Resolver:
    """A resolver answering ``answers[n]`` the n-th time (the last one ever after)."""
    calls = 0

    def resolve(host: str, port: int) -> list[str]:
        nonlocal calls
        calls += 1
        return answers[min(calls, len(answers)) - 1]

    return resolve


def post(client: httpx.Client, deadline: Deadline, url: str, seconds: float = 5.0) -> int:
    with deadline.applies(seconds), client.stream("POST", url, content=b"{}") as response:
        response.read()
        return response.status_code


def refusal_of(client: httpx.Client, deadline: Deadline, url: str) -> str | None:
    with pytest.raises(httpx.ConnectError) as raised:
        post(client, deadline, url)
    return refused_reason(raised.value)


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (["127.0.0.1"], "evil.test resolves to 127.0.0.1 (loopback)"),
        (["::1"], "evil.test resolves to ::1 (loopback)"),
        (
            ["::ffff:127.0.0.1"],
            # Python 3.13 writes it ::ffff:127.0.0.1, earlier ones ::ffff:7f00:1
            f"evil.test resolves to {ipaddress.ip_address('::ffff:127.0.0.1')} "
            "(loopback: it embeds 127.0.0.1)",
        ),
        (["10.0.0.1", "169.254.169.254"], "evil.test resolves to 10.0.0.1 (private)"),
    ],
)
def test_a_host_resolving_to_refused_addresses_is_never_connected_to(
    server: LocalServer, connects: Connects, answers: list[str], message: str
) -> None:
    deadline = Deadline()
    guard = AddressGuard(allow_private=False, resolve=answering(answers))
    client = deadline_client(deadline, 5.0, guard=guard)

    reason = refusal_of(client, deadline, f"https://evil.test:{server.port}/hook")

    assert reason == message
    assert connects.addresses == []
    assert server.accepted == 0


def test_an_ip_literal_url_of_loopback_is_refused_at_delivery(
    server: LocalServer, connects: Connects
) -> None:
    deadline = Deadline()
    client = deadline_client(deadline, 5.0, guard=AddressGuard(allow_private=False))

    reason = refusal_of(client, deadline, f"https://127.0.0.1:{server.port}/hook")

    assert reason == "endpoint address 127.0.0.1 is loopback"
    assert connects.addresses == []
    assert server.accepted == 0


def test_dns_rebinding_after_the_endpoint_was_saved_is_refused_at_delivery(
    server: LocalServer, connects: Connects
) -> None:
    # Public when the endpoint is saved, loopback when a reminder is delivered.
    resolve = answering([PUBLIC_V4], ["127.0.0.1"])
    url = f"https://rebind.test:{server.port}/hook"
    check_url(url, allow_private=False, resolve=resolve)
    deadline = Deadline()
    client = deadline_client(
        deadline, 5.0, guard=AddressGuard(allow_private=False, resolve=resolve)
    )

    reason = refusal_of(client, deadline, url)

    assert reason == "rebind.test resolves to 127.0.0.1 (loopback)"
    assert connects.addresses == []
    assert server.accepted == 0


def test_refused_addresses_are_skipped_and_the_allowed_ones_tried_in_order(
    server: LocalServer, connects: Connects
) -> None:
    guard = AddressGuard(
        allow_private=False, resolve=answering(["127.0.0.1", PUBLIC_V4, "10.0.0.1"])
    )
    deadline = Deadline()
    client = deadline_client(deadline, 5.0, guard=guard)

    with pytest.raises(httpx.ConnectError) as raised:
        post(client, deadline, f"https://mixed.test:{server.port}/hook")

    # The public address was tried (and refused by the test's spy, as an unreachable host
    # would be): an ordinary connect error, not a refusal. Loopback never was.
    assert refused_reason(raised.value) is None
    assert connects.addresses == [PUBLIC_V4]
    assert server.accepted == 0


def test_the_address_connected_to_is_checked_before_anything_is_sent(
    server: LocalServer, connects: Connects
) -> None:
    # The name resolves to a public address, but the path delivers the connection to
    # 127.0.0.1 (as a transparent proxy would): the peer address is what is judged.
    connects.redirect[PUBLIC_V4] = ("127.0.0.1", server.port)
    guard = AddressGuard(allow_private=False, resolve=answering([PUBLIC_V4]))
    deadline = Deadline()
    client = deadline_client(deadline, 5.0, guard=guard)

    reason = refusal_of(client, deadline, f"https://public.test:{server.port}/hook")

    assert reason == "public.test resolves to 127.0.0.1 (loopback)"
    assert connects.addresses == [PUBLIC_V4]
    server.wait_accepted(1)
    assert server.accepted == 1
    assert server.hosts == []  # closed before a request was written


def test_http_is_refused_at_delivery_unless_private_endpoints_are_allowed(
    server: LocalServer, connects: Connects
) -> None:
    guard = AddressGuard(allow_private=False, resolve=answering([PUBLIC_V4]))
    deadline = Deadline()
    client = deadline_client(deadline, 5.0, guard=guard)

    reason = refusal_of(client, deadline, f"http://plain.test:{server.port}/hook")

    assert reason == "endpoint URL must use https"
    assert connects.addresses == []


def test_allow_private_delivers_to_the_local_server(
    server: LocalServer, connects: Connects
) -> None:
    guard = AddressGuard(allow_private=True, resolve=answering(["127.0.0.1"]))
    deadline = Deadline()
    client = deadline_client(deadline, 5.0, guard=guard)

    status = post(client, deadline, f"http://evil.test:{server.port}/hook")

    assert status == 200
    assert server.hosts == [f"evil.test:{server.port}"]
    assert connects.addresses == ["127.0.0.1"]


def test_a_host_that_does_not_resolve_at_delivery_is_a_connect_error_not_a_refusal(
    connects: Connects,
) -> None:
    def unknown(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    deadline = Deadline()
    client = deadline_client(
        deadline, 5.0, guard=AddressGuard(allow_private=False, resolve=unknown)
    )

    with pytest.raises(httpx.ConnectError) as raised:
        post(client, deadline, "https://gone.test/hook")

    assert refused_reason(raised.value) is None  # it may resolve again later: transient
    assert connects.addresses == []


def test_name_resolution_at_delivery_ends_with_the_calls_deadline() -> None:
    released = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        released.wait(10)
        return [PUBLIC_V4]

    deadline = Deadline()
    client = deadline_client(
        deadline, 5.0, guard=AddressGuard(allow_private=False, resolve=hanging)
    )
    started = time.monotonic()
    try:
        with pytest.raises(httpx.ConnectTimeout):
            post(client, deadline, "https://slow.test/hook", seconds=0.3)
    finally:
        released.set()
    assert time.monotonic() - started < 2


def test_refused_reason_is_none_for_other_errors() -> None:
    assert refused_reason(httpx.ConnectError("connection refused")) is None
    refused = AddressRefusedError("endpoint address 10.0.0.5 is private")
    try:
        raise httpx.ConnectError(str(refused)) from refused
    except httpx.ConnectError as exc:
        assert refused_reason(exc) == "endpoint address 10.0.0.5 is private"


# TLS: connecting by address still verifies the certificate against the URL's host name.


@dataclass(frozen=True)
class Certificates:
    authority_pem: bytes
    server: ssl.SSLContext


def issue(host: str, directory: Path) -> Certificates:
    """A throwaway certificate authority, and a server certificate for ``host`` only."""
    now = dt.datetime.now(dt.UTC)
    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test authority")])
    authority = (
        x509.CertificateBuilder()
        .subject_name(authority_name)
        .issuer_name(authority_name)
        .public_key(authority_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(authority_key.public_key()), critical=False
        )
        .sign(authority_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(authority_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()),
            critical=False,
        )
        .sign(authority_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "server.pem").write_bytes(leaf.public_bytes(pem))
    (directory / "server.key").write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "server.pem", directory / "server.key")
    return Certificates(authority.public_bytes(pem), server)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[LocalServer, bytes]]:
    certificates = issue("endpoint.test", tmp_path)
    running = LocalServer(tls=certificates.server)
    yield running, certificates.authority_pem
    running.stop()


def guarded_pool(authority_pem: bytes, resolve: Resolver) -> httpcore.ConnectionPool:
    """What `deadline_client` builds, trusting the test's authority instead of certifi's."""
    trusting = ssl.create_default_context(cadata=authority_pem.decode())
    guard = AddressGuard(allow_private=True, resolve=resolve)
    return httpcore.ConnectionPool(
        ssl_context=trusting, network_backend=DeadlineBackend(Deadline(), guard)
    )


def test_tls_verifies_the_url_host_name_though_the_connection_is_made_by_address(
    tls_server: tuple[LocalServer, bytes], connects: Connects
) -> None:
    server, authority = tls_server
    with guarded_pool(authority, answering(["127.0.0.1"])) as pool:
        response = pool.request("POST", f"https://endpoint.test:{server.port}/hook", content=b"{}")

    assert response.status == 200
    assert server.hosts == [f"endpoint.test:{server.port}"]
    assert connects.addresses == ["127.0.0.1"]


def test_tls_refuses_a_certificate_for_another_name_at_the_same_address(
    tls_server: tuple[LocalServer, bytes], connects: Connects
) -> None:
    server, authority = tls_server
    with (
        guarded_pool(authority, answering(["127.0.0.1"])) as pool,
        pytest.raises(httpcore.ConnectError, match="certificate verify failed"),
    ):
        pool.request("POST", f"https://other.test:{server.port}/hook", content=b"{}")

    assert server.hosts == []
    assert connects.addresses == ["127.0.0.1"]
