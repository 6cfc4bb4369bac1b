"""`armwheels index export` and docker/nginx-armwheels.conf: a real nginx serves the
exported tree, JSON or HTML by the Accept header, and real pip installs from it."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.wheels import EF_ARM_EABI_VER5
from master.index.static import StaticIndex
from master.index.uploads import accept_wheel
from master.storage import Storage
from tests.seed import add_release, publish_wheel
from tests.servers import (
    PIP_TARGET,
    ROOT,
    clean_pip_env,
    free_port,
    nginx_config,
    run_pip,
    stop_process,
    wait_until,
)
from tests.wheels import elf_header, make_wheel

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SNIPPET = ROOT / "docker" / "nginx-armwheels.conf"
SCRIPT = Path(sys.executable).with_name("armwheels")
JSON_TYPE = "application/vnd.pypi.simple.v1+json"

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")


def _export(settings: Settings, directory: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **clean_pip_env(),
        "ARMWHEELS_DATABASE__URL": settings.database.url,
        "ARMWHEELS_MASTER__DATA_DIR": str(settings.master.data_dir),
    }
    return subprocess.run(
        [str(SCRIPT), "index", "export", str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """nginx on a free loopback port with the shipped snippet, serving tmp_path/export."""
    export = tmp_path / "export"
    port = free_port()
    server = (
        SNIPPET.read_text()
        .replace("listen 8080;", f"listen 127.0.0.1:{port};")
        .replace("root /srv/armwheels;", f"root {export};")
    )
    (tmp_path / "armwheels.conf").write_text(server)
    config = nginx_config(tmp_path, f"    include {tmp_path}/armwheels.conf;")
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise AssertionError(f"nginx exited: {error}")
        try:
            httpx.get(base + "/simple/", timeout=2)
            return True
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 30, "nginx")
        yield base, export
    finally:
        stop_process(process, 10)


def test_nginx_serves_the_export_by_accept_header_and_pip_installs_from_it(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path, nginx: tuple[str, Path]
) -> None:
    base, export = nginx
    with transaction(factory) as session:
        alpha = publish_wheel(session, settings, "alpha")
        publish_wheel(session, settings, "beta")
        alpha_sha, alpha_name = alpha.sha256, alpha.filename
    done = _export(settings, export)
    assert done.returncode == 0, done.stderr
    assert "exported 2 projects" in done.stdout

    as_json = httpx.get(f"{base}/simple/alpha/", headers={"Accept": JSON_TYPE})
    assert as_json.status_code == 200
    assert as_json.headers["content-type"] == JSON_TYPE
    assert as_json.headers["vary"] == "Accept"
    assert as_json.content == (export / "simple" / "alpha" / "index.json").read_bytes()
    assert as_json.json()["files"][0]["hashes"]["sha256"] == alpha_sha
    pip_accept = f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
    assert httpx.get(f"{base}/simple/", headers={"Accept": pip_accept}).json()["projects"] == [
        {"name": "alpha"},
        {"name": "beta"},
    ]
    for headers, query in (({"Accept": "text/html"}, ""), ({}, ""), ({}, "?format=html")):
        page = httpx.get(f"{base}/simple/alpha/{query}", headers=headers)
        assert page.headers["content-type"].startswith("text/html")
        assert page.content == (export / "simple" / "alpha" / "index.html").read_bytes()
    assert "json" in httpx.get(f"{base}/simple/alpha/?format=json").headers["content-type"]
    assert httpx.get(f"{base}/simple/alpha").status_code == 301
    assert httpx.get(f"{base}/simple/.serial").status_code == 404
    wheel = httpx.get(f"{base}/files/alpha/{alpha_name}")
    assert hashlib.sha256(wheel.content).hexdigest() == alpha_sha
    assert "immutable" in wheel.headers["cache-control"]

    # Real pip, as a user of the exported index would run it.
    download = tmp_path / "download"
    run_pip(
        *("download", "--no-deps", *PIP_TARGET, "--platform", "manylinux2014_aarch64"),
        *("--index-url", f"{base}/simple/", "--dest", str(download), "alpha"),
        cwd=tmp_path,
    )
    [fetched] = download.iterdir()
    assert fetched.name == alpha_name
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == alpha_sha

    # A later export over the earlier one adds what was published since.
    with transaction(factory) as session:
        publish_wheel(session, settings, "alpha", "2.0")
    assert _export(settings, export).returncode == 0
    versions = httpx.get(f"{base}/simple/alpha/", headers={"Accept": JSON_TYPE}).json()["versions"]
    assert versions == ["1.0", "2.0"]


def test_export_refuses_a_directory_that_is_not_an_export(
    settings: Settings, tmp_path: Path
) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "important.txt").write_text("keep me")
    done = _export(settings, occupied)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "not empty" in done.stderr
    assert (occupied / "important.txt").read_text() == "keep me"


def test_nginx_serves_a_distribution_targets_own_index_from_the_export(
    database_url: str, tmp_path: Path, nginx: tuple[str, Path]
) -> None:
    """An armel target's wheel, exported beside /simple/: nginx serves it under
    /<target>/simple/ and /<target>/files/ with the same headers, never under /simple/."""
    base, export = nginx
    armel = "debian-bookworm-armel"
    settings = load_settings(
        None,
        database={"url": database_url},
        master={"data_dir": tmp_path / "data"},
        targets={
            "aarch64": {"image": "i", "policy": "manylinux2014_aarch64"},
            armel: {"arch": "armv7l", "kind": "distribution", "float_abi": "soft", "image": "e"},
        },
    )
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        publish_wheel(session, settings, "alpha")
        _, _, jobs = add_release(session, settings, project="beta")
        [job] = [j for j in jobs if j.target == armel]
        filename = f"beta-1.0-cp311-cp311-{job.policy}.whl"
        soft = elf_header("armv7l", flags=EF_ARM_EABI_VER5)
        body = make_wheel(filename, modules=("beta",), extra={"beta/_x.so": soft})
        accept_wheel(
            session,
            Storage(settings.master.data_dir),
            job,
            filename,
            hashlib.sha256(body).hexdigest(),
            io.BytesIO(body),
            settings.master.max_upload_bytes,
            float_abi="soft",
        )
    with factory() as session:
        StaticIndex(export, settings.distribution_indexes()).regenerate(
            session, files_from=settings.master.data_dir
        )
    engine.dispose()
    page = httpx.get(f"{base}/{armel}/simple/beta/", headers={"Accept": JSON_TYPE})
    assert page.status_code == 200 and page.headers["vary"] == "Accept"
    assert [f["filename"] for f in page.json()["files"]] == [filename]
    listed = httpx.get(f"{base}/{armel}/simple/", headers={"Accept": JSON_TYPE})
    assert listed.json()["projects"] == [{"name": "beta"}]
    wheel = httpx.get(f"{base}/{armel}/files/beta/{filename}")
    assert wheel.content == body and "immutable" in wheel.headers["cache-control"]
    assert httpx.get(f"{base}/{armel}/simple/.serial").status_code == 404
    assert httpx.get(f"{base}/simple/beta/").status_code == 404
    main = httpx.get(f"{base}/simple/", headers={"Accept": JSON_TYPE})
    assert main.json()["projects"] == [{"name": "alpha"}]
