"""The wheelhouse's pip asks the farm's upstream index and nothing the builder host's own
pip configuration names: not a pip.conf (PIP_CONFIG_FILE, the XDG global and user
folders), not a PIP_* variable. The proxy and CA bundle the builder is configured with
still apply. Real pip against pypiserver on loopback."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement

from builder.wheelhouse import DEFAULT_INDEX_URL, Wheelhouse, platform_tags
from common.config import UpstreamSettings
from tests.servers import free_port, pypiserver
from tests.wheels import make_wheel

PLATFORMS = platform_tags("aarch64", 17)
FARM_WHEEL = "farmdep-1.0-py3-none-any.whl"
HOST_WHEEL = "farmdep-9.0-py3-none-any.whl"  # only the host's pip configuration has it


@pytest.fixture
def farm_index(tmp_path: Path) -> Iterator[str]:
    packages = tmp_path / "farm-packages"
    packages.mkdir()
    (packages / FARM_WHEEL).write_bytes(make_wheel(FARM_WHEEL, modules=("farmdep",)))
    with pypiserver(packages) as url:
        yield url


@pytest.fixture
def host_links(tmp_path: Path) -> Path:
    """A folder the host's configuration offers as find-links, with a newer farmdep."""
    folder = tmp_path / "host-links"
    folder.mkdir()
    (folder / HOST_WHEEL).write_bytes(make_wheel(HOST_WHEEL, modules=("farmdep",)))
    return folder


def _host_pip_conf(path: Path, links: Path) -> Path:
    """A pip.conf like a builder host's own: an index that cannot answer (nothing listens
    on its port) and a find-links folder the farm never chose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"[global]\nindex-url = http://127.0.0.1:{free_port()}/simple/\nfind-links = {links}\n"
    )
    return path


def _fill(wheelhouse: Wheelhouse, log: Path) -> bool:
    """One prefetch of farmdep, pip's output in `log` (a file, as a build log is)."""
    with log.open("ab") as sink:
        return wheelhouse.prefetch(
            [Requirement("farmdep")], "cp311", PLATFORMS, None, wheelhouse.pip_environment(), sink
        )


HOST_CONFIGURATIONS = ["PIP_CONFIG_FILE", "XDG global", "XDG user", "PIP_*"]


def _configure_host(
    where: str, tmp_path: Path, links: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The builder host's own pip configuration, in one of the places pip reads it."""
    for name in [name for name in os.environ if name.upper().startswith("PIP_")]:
        monkeypatch.delenv(name)  # this machine's own: only the one under test counts
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-user-config"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "no-global-config"))
    if where == "PIP_CONFIG_FILE":
        monkeypatch.setenv("PIP_CONFIG_FILE", str(_host_pip_conf(tmp_path / "pip.conf", links)))
    elif where == "XDG global":
        _host_pip_conf(tmp_path / "xdg" / "pip" / "pip.conf", links)
        monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg"))
    elif where == "XDG user":
        _host_pip_conf(tmp_path / "user" / "pip" / "pip.conf", links)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "user"))
    else:
        dead = f"http://127.0.0.1:{free_port()}/simple/"
        monkeypatch.setenv("PIP_INDEX_URL", dead)
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", dead)
        monkeypatch.setenv("PIP_FIND_LINKS", str(links))
        monkeypatch.setenv("PIP_NO_INDEX", "1")


@pytest.mark.parametrize("where", HOST_CONFIGURATIONS)
def test_the_host_pip_configuration_has_no_say(
    where: str,
    tmp_path: Path,
    farm_index: str,
    host_links: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _configure_host(where, tmp_path, host_links, monkeypatch)
    wheelhouse = Wheelhouse(tmp_path / "wheelhouse", 1024**3, index_url=farm_index)
    log = tmp_path / "pip.log"
    assert _fill(wheelhouse, log), log.read_text()
    assert [path.name for path in wheelhouse.wheels()] == [FARM_WHEEL]
    assert "farmdep-9.0" not in log.read_text()


@pytest.mark.parametrize("where", HOST_CONFIGURATIONS)
def test_the_host_configuration_steers_a_pip_not_isolated(
    where: str,
    tmp_path: Path,
    farm_index: str,
    host_links: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control: the same configuration does steer a pip run in the host's environment,
    the farm's index on its command line notwithstanding (so the test above can fail)."""
    _configure_host(where, tmp_path, host_links, monkeypatch)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--no-cache-dir", "--no-deps"),
            *("--index-url", farm_index, "--dest", str(tmp_path / "got"), "farmdep"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [path.name for path in (tmp_path / "got").iterdir()] == [HOST_WHEEL]


def test_the_environment_keeps_the_proxy_and_the_builders_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read here\n")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("PIP_CERT", "/host/own/ca.pem")
    monkeypatch.setenv("pip_index_url", "http://lower.example/simple/")
    env = Wheelhouse(tmp_path / "wheelhouse", 1024**3, bundle).pip_environment()
    assert env["HTTPS_PROXY"] == "http://proxy.example:3128"
    pip_variables = {key: value for key, value in env.items() if key.upper().startswith("PIP_")}
    assert pip_variables == {"PIP_CONFIG_FILE": os.devnull, "PIP_CERT": str(bundle)}


def test_the_default_index_is_the_farms_default_upstream(tmp_path: Path) -> None:
    assert Wheelhouse(tmp_path / "w", 1).index_url == DEFAULT_INDEX_URL
    assert UpstreamSettings().index_url == DEFAULT_INDEX_URL


class _ForwardingProxy(BaseHTTPRequestHandler):
    """A plain HTTP forward proxy: the request line carries the absolute URL."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        target = urlsplit(self.path)
        upstream = http.client.HTTPConnection(target.hostname or "", target.port, timeout=30)
        path = target.path + (f"?{target.query}" if target.query else "")
        upstream.request("GET", path, headers={"Accept": self.headers.get("Accept", "*/*")})
        answer = upstream.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        for name in ("Content-Type", "Location"):
            if value := answer.getheader(name):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def forwarding_proxy() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Proxy", (_ForwardingProxy,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_the_proxy_the_builder_is_given_still_applies(
    tmp_path: Path, farm_index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    with forwarding_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("http_proxy", proxy)
        wheelhouse = Wheelhouse(tmp_path / "wheelhouse", 1024**3, index_url=farm_index)
        log = tmp_path / "pip.log"
        assert _fill(wheelhouse, log), log.read_text()
    assert f"{farm_index}farmdep/" in seen
    assert [path.name for path in wheelhouse.wheels()] == [FARM_WHEEL]


def test_the_farms_own_index_is_asked_beside_the_upstream_one(
    tmp_path: Path, farm_index: str
) -> None:
    """A build requirement the upstream index lacks comes from the farm's own index (the
    wheels it built of dependencies PyPI has none of for the target); a farm index that
    does not answer is left out with a note, and pip is not made to retry it."""
    empty = tmp_path / "upstream-packages"
    empty.mkdir()
    with pypiserver(empty) as upstream:
        both = Wheelhouse(tmp_path / "both", 10**9, index_url=upstream, farm_index_url=farm_index)
        assert _fill(both, tmp_path / "both.log")
        assert [path.name for path in both.wheels()] == [FARM_WHEEL]
        assert not _fill(Wheelhouse(tmp_path / "alone", 10**9, index_url=upstream), tmp_path / "x")
        dead = f"http://127.0.0.1:{free_port()}/simple/"
        silent = Wheelhouse(tmp_path / "dead", 10**9, index_url=upstream, farm_index_url=dead)
        assert not _fill(silent, tmp_path / "dead.log")
    log = (tmp_path / "dead.log").read_text()
    assert f"the farm's index {dead} does not answer" in log
    assert "--extra-index-url" not in log and "Retrying" not in log
