"""The egress proxy an egress build talks to: the outside on the allowed ports, never the
builder host's loopback, private ranges or the farm's own hosts; every refusal logged."""

from __future__ import annotations

import http.server
import io
import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from ipaddress import IPv4Network, ip_address
from pathlib import Path

import pytest

from builder.egress import EgressProxy, Upstream, forbidden_address, upstream_from_environment
from common.config import ConfigError, load_settings

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def pypi_networks() -> list[str]:
    """PyPI's addresses when this machine's resolver answers with non-global ones (a
    transparently intercepting network does): the networks an operator there opens."""
    found = {
        str(info[4][0])
        for name in ("pypi.org", "files.pythonhosted.org")
        for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
    }
    return sorted(
        f"{address}/32" if "." in address else f"{address}/128"
        for address in found
        if not ipaddress.ip_address(address).is_global
    )


@pytest.fixture
def master() -> Iterator[int]:
    """A real HTTP server on the builder host's loopback, standing in for the master."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _ask(proxy: EgressProxy, request: str) -> tuple[str, str, socket.socket]:
    """The proxy's status line, what came after its head so far, and the connection."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(60)
    client.connect(str(proxy.socket_path))
    client.sendall(request.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = client.recv(4096)
        if not chunk:
            break
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return head.decode(errors="replace").split("\r\n", 1)[0], rest.decode(), client


def test_connections_to_the_farm_and_private_ranges_are_refused_and_logged(
    tmp_path: Path, master: int, caplog: pytest.LogCaptureFixture
) -> None:
    sink = io.BytesIO()
    proxy = EgressProxy(
        tmp_path / "egress",
        41,
        ports=[443, 80, master, 6379, 5432],
        refused_hosts=["farm.invalid"],
        log_sink=sink,
    )
    caplog.set_level(logging.WARNING, logger="builder.egress")
    with proxy:
        attempts = {
            f"CONNECT 127.0.0.1:{master}": "loopback address 127.0.0.1",
            "CONNECT 127.0.0.1:6379": "loopback address 127.0.0.1",
            "CONNECT localhost:5432": "loopback address",
            "CONNECT [::ffff:127.0.0.1]:6379": "loopback address 127.0.0.1",
            "CONNECT 10.1.2.3:443": "private address 10.1.2.3",
            "CONNECT 169.254.169.254:80": "link-local address",
            "CONNECT 0.0.0.0:443": "unspecified address",
            "CONNECT pypi.org:22": "port 22 is not allowed",
            "CONNECT farm.invalid:443": "one of the farm's own hosts",
            f"GET http://127.0.0.1:{master}/ HTTP/1.1": "loopback address 127.0.0.1",
        }
        for line, reason in attempts.items():
            request = line if line.endswith("HTTP/1.1") else f"{line} HTTP/1.1"
            status, body, client = _ask(proxy, f"{request}\r\nHost: x\r\n\r\n")
            body += client.recv(4096).decode()
            client.close()
            assert status == "HTTP/1.1 403 Forbidden", line
            assert reason in body, (line, body)
    log = sink.getvalue().decode()
    assert log.count("::armwheels:: egress refused") == len(attempts)
    assert proxy.connections == []
    refused = [record for record in caplog.records if record.getMessage() == "egress refused"]
    assert len(refused) == len(attempts)
    assert {getattr(record, "job_id", None) for record in refused} == {41}
    assert not proxy.socket_path.exists()


def test_https_to_the_outside_goes_through(tmp_path: Path) -> None:
    """pypi.org:443 through the proxy, with a real TLS handshake and request."""
    sink = io.BytesIO()
    opened = pypi_networks()
    with EgressProxy(tmp_path / "egress", 42, allowed_networks=opened, log_sink=sink) as proxy:
        status, _, client = _ask(proxy, "CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org\r\n\r\n")
        assert status == "HTTP/1.1 200 Connection established"
        context = ssl.create_default_context(cafile=str(CA_BUNDLE) if CA_BUNDLE.exists() else None)
        with context.wrap_socket(client, server_hostname="pypi.org") as tls:
            tls.sendall(b"HEAD /simple/ HTTP/1.1\r\nHost: pypi.org\r\nConnection: close\r\n\r\n")
            answer = tls.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 200"), answer
    assert [what.split(" ")[0] for what in proxy.connections] == ["pypi.org:443"]
    assert b"::armwheels:: egress to pypi.org:443" in sink.getvalue()


class _RecordingUpstream(socketserver.ThreadingTCPServer):
    """An upstream proxy on loopback that answers every CONNECT and records it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)


class _UpstreamHandler(socketserver.StreamRequestHandler):
    server: _RecordingUpstream

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline()
            if not line:
                return
            head += line
        self.server.requests.append(head.decode())
        self.wfile.write(b"HTTP/1.1 200 OK\r\n\r\n")
        self.wfile.write(b"from-upstream")


def test_an_upstream_proxy_is_asked_for_the_checked_address(tmp_path: Path) -> None:
    upstream = _RecordingUpstream()
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    port = int(upstream.server_address[1])
    try:
        proxy = EgressProxy(
            tmp_path / "egress",
            43,
            allowed_networks=pypi_networks(),
            upstream=(Upstream.from_url(f"http://user:pw@127.0.0.1:{port}"), None),
        )
        with proxy:
            status, rest, client = _ask(proxy, "CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")
            assert status == "HTTP/1.1 200 Connection established"
            rest += client.recv(100).decode()
            assert rest == "from-upstream"
            client.close()
            # The loopback stays refused even though the upstream itself is on loopback.
            status, _, client = _ask(proxy, "CONNECT 127.0.0.1:443 HTTP/1.1\r\n\r\n")
            client.close()
            assert status == "HTTP/1.1 403 Forbidden"
    finally:
        upstream.shutdown()
        upstream.server_close()
    [request] = upstream.requests
    target = request.split(" ")[1]
    host = target.rpartition(":")[0].strip("[]")
    assert forbidden_address(ipaddress.ip_address(host), [IPv4Network("203.0.113.0/24")]) is None
    assert target.endswith(":443")
    assert "Proxy-Authorization: Basic dXNlcjpwdw==" in request


def test_upstream_proxies_come_from_the_passed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("http_proxy", "proxy.example:8080")
    assert upstream_from_environment(["HTTPS_PROXY", "http_proxy"]) == (
        Upstream("proxy.example", 3128),
        Upstream("proxy.example", 8080),
    )
    assert upstream_from_environment([]) == (None, None)


def test_allowed_networks_never_open_the_loopback() -> None:
    settings = load_settings(None, builder={"egress_allowed_networks": ["203.0.113.0/24"]})
    assert settings.builder.egress_allowed_networks == ["203.0.113.0/24"]
    for network in ("127.0.0.0/8", "0.0.0.0/0", "169.254.0.0/16", "::1/128", "224.0.0.1/32"):
        with pytest.raises(ConfigError, match="never opened"):
            load_settings(None, builder={"egress_allowed_networks": [network]})
    opened = [IPv4Network("203.0.113.0/24")]
    assert forbidden_address(ip_address("203.0.113.80")) == "private address 203.0.113.80"
    assert forbidden_address(ip_address("203.0.113.80"), opened) is None
    assert forbidden_address(ip_address("10.0.0.1"), opened) == "private address 10.0.0.1"


def test_the_farms_own_hosts_are_refused_by_default() -> None:
    settings = load_settings(
        None,
        broker={"url": "redis://broker.farm.example:6379/0"},
        builder={"master_url": "https://master.farm.example/"},
    )
    assert settings.builder.egress_refused_hosts == ["broker.farm.example", "master.farm.example"]
