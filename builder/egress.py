"""The filtering proxy through which an egress build (a recipe's `egress = true`) reaches
the outside, and nothing else.

A build never gets a network interface of its own: its container has network "none".
This proxy listens on a unix socket in a host folder mounted into the build; a tiny
forwarder inside (builder/scripts/egress_forward.py) relays the build's 127.0.0.1 proxy
port to it. The proxy resolves each name itself and connects to the address it checked
(no second lookup a hostile resolver could rebind), only on the allowed ports, never to
loopback, private, link-local, multicast, reserved or unspecified addresses, nor to the
farm's own hosts (master, broker). With an upstream proxy configured (the builder's
HTTPS_PROXY / HTTP_PROXY), it goes through that one, asking it for the checked address.
Every refusal is logged with the job id and noted in the build log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from common.config import ALWAYS_REFUSED, IPNetwork, openable_network

log = logging.getLogger(__name__)

SOCKET_NAME = "proxy.sock"
MAX_HEAD = 16 * 1024  # a request line and its headers
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 30.0
CHUNK = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A request the proxy will not carry; the message says why, in plain words."""


@dataclass(frozen=True)
class Upstream:
    """The proxy the builder itself must use to reach the outside."""

    host: str
    port: int
    authorization: str | None = None

    @classmethod
    def from_url(cls, url: str) -> Upstream | None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "") or not parts.hostname:
            return None
        auth = None
        if parts.username is not None:
            pair = f"{parts.username}:{parts.password or ''}".encode()
            auth = "Basic " + base64.b64encode(pair).decode()
        return cls(parts.hostname, parts.port or 80, auth)


def upstream_from_environment(names: Iterable[str]) -> tuple[Upstream | None, Upstream | None]:
    """(for CONNECT, for plain HTTP): the builder's own proxies, among the variables the
    operator passes to builds (pass_env)."""
    allowed = set(names)

    def first(*candidates: str) -> Upstream | None:
        for name in candidates:
            if name in allowed and os.environ.get(name):
                return Upstream.from_url(os.environ[name])
        return None

    return first("HTTPS_PROXY", "https_proxy"), first("HTTP_PROXY", "http_proxy")


def forbidden_address(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why the proxy never connects to this address, or None when it may. `allowed` are
    non-global networks the operator opened (a network whose resolver answers with such
    addresses for public names); never loopback, link-local, multicast or unspecified."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ALWAYS_REFUSED:
        if getattr(address, f"is_{kind}"):
            return f"{kind.replace('_', '-')} address {address}"
    if any(address in network for network in allowed):
        return None
    for kind in ("reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return f"{kind} address {address}"
    if not address.is_global:  # shared (100.64/10), benchmarking, documentation ranges
        return f"non-global address {address}"
    return None


class EgressProxy:
    """An HTTP CONNECT (and plain-HTTP) proxy on a unix socket, for one build.

    start() serves it from a thread of its own; stop() closes it and every connection.
    Both backends can use it: the socket's folder is what they hand to the build.
    """

    def __init__(
        self,
        folder: Path,
        job_id: int,
        *,
        ports: Iterable[int] = (443, 80),
        refused_hosts: Iterable[str] = (),
        allowed_networks: Iterable[str] = (),
        upstream: tuple[Upstream | None, Upstream | None] = (None, None),
        log_sink: BinaryIO | None = None,
    ) -> None:
        self.folder = folder
        self.socket_path = folder / SOCKET_NAME
        self.job_id = job_id
        self.ports = frozenset(ports)
        self.refused_names = {host.lower().rstrip(".") for host in refused_hosts}
        self.allowed_networks = [openable_network(text) for text in allowed_networks]
        self.upstream_tls, self.upstream_http = upstream
        self.log_sink = log_sink
        self.refusals: list[str] = []
        self.connections: list[str] = []
        self._refused_addresses: set[IPAddress] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._sink_lock = threading.Lock()

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._refused_addresses = _resolve_all(self.refused_names)
        self._thread = threading.Thread(target=self._serve, name="egress-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._server is None:
            raise RuntimeError("the egress proxy did not start")
        # The build runs as another uid; the folder is its only way in.
        self.socket_path.chmod(0o777)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
        self._loop = self._thread = self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def __enter__(self) -> EgressProxy:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_unix_server(self._handle, path=str(self.socket_path))
            )
        except OSError:
            log.exception("egress proxy cannot listen", extra={"job_id": self.job_id})
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    # --- one client connection -----------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = "?"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            method, target, rest = _request(head)
            if method == "CONNECT":
                host, port = _host_port(target, None)
                address = await self._check(host, port)
                remote = await self._open(host, address, port, tunnel=True)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                host, port, path, headers = _plain_request(method, target, rest)
                address = await self._check(host, port)
                remote = await self._open(host, address, port, tunnel=False)
                if self.upstream_http is not None:  # absolute form, to the checked address
                    literal = f"[{address}]" if address.version == 6 else str(address)
                    path = f"http://{literal}:{port}{path}"
                request = [f"{method} {path} HTTP/1.1".encode(), *headers, b"Connection: close"]
                if self.upstream_http is not None and self.upstream_http.authorization:
                    auth = self.upstream_http.authorization
                    request.append(f"Proxy-Authorization: {auth}".encode())
                remote[1].write(b"\r\n".join([*request, b"", b""]))
            self._connected(f"{host}:{port} ({address})")
            await _relay(reader, writer, *remote)
        except Refused as exc:
            self._refuse(target, str(exc))
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(f"HTTP/1.1 403 Forbidden\r\n\r\negress refused: {exc}\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except OSError as exc:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{exc}\n".encode())
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    async def _check(self, host: str, port: int) -> IPAddress:
        """The address to connect to, after every rule; Refused otherwise."""
        if port not in self.ports:
            raise Refused(f"port {port} is not allowed")
        if host.lower().rstrip(".") in self.refused_names:
            raise Refused(f"{host} is one of the farm's own hosts")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Refused(f"{host} does not resolve ({exc.strerror})") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        for address in addresses:
            # One bad answer refuses the name: its owner is pointing it at our side.
            if why := forbidden_address(address, self.allowed_networks):
                raise Refused(f"{host} is a {why}")
            if address in self._refused_addresses:
                raise Refused(f"{host} is one of the farm's own hosts ({address})")
        if not addresses:
            raise Refused(f"{host} does not resolve")
        return addresses[0]

    async def _open(
        self, host: str, address: IPAddress, port: int, *, tunnel: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        upstream = self.upstream_tls if tunnel else self.upstream_http
        literal = f"[{address}]" if address.version == 6 else str(address)
        if upstream is None:
            return await asyncio.wait_for(
                asyncio.open_connection(str(address), port), CONNECT_TIMEOUT
            )
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(upstream.host, upstream.port), CONNECT_TIMEOUT
        )
        if not tunnel:
            return reader, writer
        lines = [f"CONNECT {literal}:{port} HTTP/1.1", f"Host: {literal}:{port}"]
        if upstream.authorization:
            lines.append(f"Proxy-Authorization: {upstream.authorization}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
        status = answer.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            writer.close()
            raise OSError(f"upstream proxy refused {host}:{port}: {status[1:2]!r}")
        return reader, writer

    # --- what happened -------------------------------------------------------------------

    def _refuse(self, target: str, reason: str) -> None:
        shown = target[:200]
        self.refusals.append(f"{shown}: {reason}")
        log.warning(
            "egress refused", extra={"job_id": self.job_id, "target": shown, "reason": reason}
        )
        self._note(f"egress refused {shown}: {reason}")

    def _connected(self, what: str) -> None:
        self.connections.append(what)
        log.info("egress connection", extra={"job_id": self.job_id, "target": what})
        self._note(f"egress to {what}")

    def _note(self, text: str) -> None:
        if self.log_sink is None:
            return
        with self._sink_lock, contextlib.suppress(OSError, ValueError):
            self.log_sink.write(f"::armwheels:: {text}\n".encode())
            self.log_sink.flush()


def _request(head: bytes) -> tuple[str, str, bytes]:
    line, _, rest = head.partition(b"\r\n")
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused("not an HTTP proxy request") from exc
    if not version.startswith("HTTP/1."):
        raise Refused("not an HTTP/1 proxy request")
    return method, target, rest


def _host_port(authority: str, default: int | None) -> tuple[str, int]:
    host, colon, port = authority.rpartition(":")
    if not colon or "]" in port:
        host, port = authority, ""
    host = host.strip("[]")
    if not port and default is not None:
        return host, default
    if not port.isdigit() or not host:
        raise Refused(f"not host:port: {authority[:100]!r}")
    return host, int(port)


def _plain_request(method: str, target: str, rest: bytes) -> tuple[str, int, str, list[bytes]]:
    """A plain-HTTP proxy request (absolute URL): its host, port, path and the headers to
    send on (the connection closes after one answer)."""
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.netloc:
        raise Refused(f"{method} {target[:100]!r} is not a plain-HTTP proxy request")
    host, port = _host_port(parts.netloc.rpartition("@")[2], 80)
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    headers = [
        line
        for line in rest.split(b"\r\n")
        if line and not line.lower().startswith((b"proxy-", b"connection:", b"keep-alive:"))
    ]
    return host, port, path, headers


async def _relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    remote_reader: asyncio.StreamReader,
    remote_writer: asyncio.StreamWriter,
) -> None:
    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if sink.can_write_eof():
                    sink.write_eof()

    try:
        await asyncio.gather(pipe(client_reader, remote_writer), pipe(remote_reader, client_writer))
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            remote_writer.close()


def _resolve_all(names: Iterable[str]) -> set[IPAddress]:
    found: set[IPAddress] = set()
    for name in names:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            continue
        found.update(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    return found
