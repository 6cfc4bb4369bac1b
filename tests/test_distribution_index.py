"""Distribution targets on the master: their wheels carry their machines' linux_* tags,
are checked for the distribution's float ABI, and are served only by their own index,
/<target>/simple/, never by /simple/."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.doctor import check
from common.models import BuildJob, OutputFile
from common.protocol import SYSTEM_PACKAGES_PATTERN
from common.states import FailureReason, JobState, TokenRole
from common.wheels import EF_ARM_EABI_VER5, read_contents
from master.auth import create_token
from master.index.static import StaticIndex
from master.web.app import create_app
from tests.seed import add_release
from tests.servers import serve_app
from tests.wheels import elf_header, make_wheel, record_hash

ARMEL = "debian-bookworm-armel"
ARMHF = "debian-bookworm-armhf"
ARMEL_PLATFORM = "linux_armv5tel.linux_armv6l.linux_armv7l.linux_armv8l"
ARMEL_WHEEL = f"demo-1.0-cp311-cp311-{ARMEL_PLATFORM}.whl"
EF_ARM_ABI_FLOAT_SOFT = 0x200
SOFT_FLOAT_SO = elf_header("armv7l", flags=EF_ARM_EABI_VER5 | EF_ARM_ABI_FLOAT_SOFT)
HARD_FLOAT_SO = elf_header("armv7l")  # armhf's flags
MANYLINUX_WHEEL = "demo-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"


@dataclass
class Farm:
    client: TestClient
    settings: Settings
    factory: sessionmaker[Session]
    jobs: dict[str, int]
    auth: dict[str, dict[str, str]]

    def upload(self, target: str, filename: str, library: bytes, **form: str) -> Any:
        body = make_wheel(filename, extra={"demo/_speed.so": library})
        return self.client.post(
            f"/api/v1/jobs/{self.jobs[target]}/result",
            headers=self.auth[target],
            data={
                "outcome": "built",
                "summary": "ok",
                "wheel_sha256": hashlib.sha256(body).hexdigest(),
                **form,
            },
            files={"log": ("build.log", b"built\n"), "wheel": (filename, body)},
        )

    def job(self, target: str) -> BuildJob:
        with self.factory() as session:
            job = session.get(BuildJob, self.jobs[target])
            assert job is not None
            return job


@pytest.fixture
def farm(database_url: str, tmp_path: Path) -> Iterator[Farm]:
    settings: Settings = load_settings(
        None,
        database={"url": database_url},
        master={"data_dir": tmp_path / "data"},
        targets={
            "aarch64": {"image": "i", "policy": "manylinux2014_aarch64"},
            "armv7l": {"image": "i7", "policy": "manylinux_2_31_armv7l"},
            ARMEL: {"arch": "armv7l", "kind": "distribution", "float_abi": "soft", "image": "e"},
            ARMHF: {"arch": "armv7l", "kind": "distribution", "image": "h"},
        },
    )
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        _, _, created = add_release(session, settings)
        jobs = {job.target: job.id for job in created}
        secrets = {t: create_token(session, f"b-{t}", TokenRole.BUILDER) for t in jobs}
    auth = {t: {"Authorization": f"Bearer {secret}"} for t, secret in secrets.items()}
    with TestClient(create_app(settings, factory)) as client:
        for target, headers in auth.items():
            arch = settings.targets[target].arch
            registered = client.post(
                "/api/v1/builders/register",
                headers=headers,
                json={
                    "arch": arch,
                    "target": target,
                    "backend": "docker",
                    "python_tags": ["cp311"],
                },
            )
            assert registered.status_code == 200, registered.text
            claimed = client.post(f"/api/v1/jobs/{jobs[target]}/claim", headers=headers)
            assert claimed.status_code == 200, claimed.text
        yield Farm(client, settings, factory, jobs, auth)
    engine.dispose()


def test_each_distribution_job_has_its_machines_platform(farm: Farm) -> None:
    assert farm.job(ARMEL).policy == ARMEL_PLATFORM
    assert farm.job(ARMHF).policy == "linux_armv7l.linux_armv8l"
    assert farm.job("aarch64").policy == "manylinux2014_aarch64"


def test_a_distribution_wheel_is_served_by_its_own_index_only(farm: Farm) -> None:
    c = farm.client
    packages = "libc6=2.36-9+deb12u13 libffi8=3.4.4-1"
    accepted = farm.upload(ARMEL, ARMEL_WHEEL, SOFT_FLOAT_SO, system_packages=packages)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "built"
    with farm.factory() as session:
        output = session.scalar(select(OutputFile))
        assert output is not None and output.index_name == ARMEL
        assert output.system_packages == packages.split()
    # Its own index lists it, in both formats, and serves the file and its metadata.
    page = c.get(f"/{ARMEL}/simple/demo/")
    assert page.status_code == 200 and ARMEL_WHEEL in page.text
    listed = c.get(
        f"/{ARMEL}/simple/demo/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    [entry] = listed.json()["files"]
    assert entry["filename"] == ARMEL_WHEEL
    url = f"/{ARMEL}/files/demo/{ARMEL_WHEEL}"
    assert c.get(f"/{ARMEL}/simple/demo/").text.count(f"../../files/demo/{ARMEL_WHEEL}") == 1
    assert c.get(url).status_code == 200
    assert c.get(url + ".metadata").text.startswith("Metadata-Version")
    assert "demo" in c.get(f"/{ARMEL}/simple/").text
    assert c.get(f"/{ARMEL}/simple/Demo/", follow_redirects=False).headers["location"] == (
        f"/{ARMEL}/simple/demo/"
    )
    # The project page lists it under its index, with the systems that take it.
    project = c.get("/projects/demo").text
    assert f'<tr data-index="{ARMEL}"><td><a href="{url}">{ARMEL_WHEEL}</a>' in project
    assert f"{ARMEL} systems only (armv5tel, armv6l, armv7l, armv8l)" in project
    assert f'with the packages <span class="system-packages">{packages}</span>' in project
    # The master's static tree has the distribution's own, its wheel linked into it;
    # /simple/'s tree never lists it. An export carries both.
    data = farm.settings.master.data_dir
    own = data / ARMEL / "simple" / "demo"
    assert ARMEL_WHEEL in (own / "index.html").read_text()
    assert ARMEL_WHEEL in (own / "index.json").read_text()
    assert "demo" in (data / ARMEL / "simple" / "index.html").read_text()
    assert (data / ARMEL / "files" / "demo" / ARMEL_WHEEL).read_bytes() == c.get(url).content
    assert not (data / "simple" / "demo").exists()
    assert not (data / ARMHF / "simple" / "demo").exists()
    export = data.parent / "export"
    with farm.factory() as session:
        StaticIndex(export, farm.settings.distribution_indexes()).regenerate(
            session, files_from=data
        )
    assert ARMEL_WHEEL in (export / ARMEL / "simple" / "demo" / "index.json").read_text()
    assert (export / ARMEL / "files" / "demo" / f"{ARMEL_WHEEL}.metadata").is_file()
    assert not (export / "simple" / "demo").exists()
    # The overview names every index and whom it serves.
    overview = c.get("/").text
    assert '<a href="/simple/">/simple/</a></td><td>manylinux wheels (manylinux2014_aarch64,' in (
        overview
    )
    assert f"{ARMEL} systems only (armv5tel, armv6l, armv7l, armv8l, soft-float)" in overview
    assert f"{ARMHF} systems only (armv7l, armv8l, hard-float)" in overview
    # /simple/ never offers it; neither does another distribution's index.
    assert c.get("/simple/demo/").status_code == 404
    assert "demo" not in c.get("/simple/").text
    assert c.get(f"/files/demo/{ARMEL_WHEEL}").status_code == 404
    assert c.get(f"/{ARMHF}/simple/demo/").status_code == 404
    assert c.get(f"/{ARMHF}/files/demo/{ARMEL_WHEEL}").status_code == 404
    # Only configured distribution targets have an index.
    for unknown in ("aarch64", "nope", "api"):
        answer = c.get(f"/{unknown}/simple/")
        assert answer.status_code == 404
        assert answer.json()["error"] == f"no distribution index {unknown}"
    # The armel wheel does not cover the armhf job, and the manylinux job is unaffected.
    assert farm.job(ARMHF).state == JobState.BUILDING
    assert farm.upload("aarch64", MANYLINUX_WHEEL, elf_header("aarch64")).status_code == 200
    assert MANYLINUX_WHEEL in c.get("/simple/demo/").text
    assert ARMEL_WHEEL not in c.get("/simple/demo/").text
    assert MANYLINUX_WHEEL not in c.get(f"/{ARMEL}/simple/demo/").text


@pytest.mark.parametrize(
    ("target", "filename", "library", "error"),
    [
        (ARMEL, ARMEL_WHEEL, HARD_FLOAT_SO, "is not 32-bit little-endian ARM EABI5 soft-float"),
        (ARMHF, "demo-1.0-cp311-cp311-linux_armv7l.linux_armv8l.whl", SOFT_FLOAT_SO, "hard-float"),
        (
            ARMEL,
            "demo-1.0-cp311-cp311-linux_armv7l.whl",
            SOFT_FLOAT_SO,
            f"wheel platform ['linux_armv7l'] is not target {ARMEL}'s ({ARMEL_PLATFORM})",
        ),
        (
            ARMHF,
            "demo-1.0-cp311-cp311-manylinux_2_31_armv7l.whl",
            HARD_FLOAT_SO,
            "is not target debian-bookworm-armhf's",
        ),
        (ARMEL, ARMEL_WHEEL, elf_header("aarch64"), "is not 32-bit little-endian ARM"),
    ],
)
def test_a_wheel_not_of_the_distribution_is_refused(
    farm: Farm, target: str, filename: str, library: bytes, error: str
) -> None:
    answer = farm.upload(target, filename, library)
    assert answer.status_code == 400, answer.text
    assert error in answer.json()["error"]
    job = farm.job(target)
    assert job.state == JobState.FAILED
    assert job.failure_reason == FailureReason.UPLOAD_REJECTED
    assert error in (job.summary or "")
    with farm.factory() as session:
        assert session.scalar(select(OutputFile)) is None
    assert farm.client.get(f"/{target}/simple/demo/").status_code == 404


def _armv7_device(distribution: str, float_abi: str) -> dict[str, Any]:
    """A Debian bookworm 32-bit ARM system's facts, as the doctor reads them: pip on an
    armel userland offers linux_armv7l only; on armhf every manylinux_2_X up to 2.36."""
    platforms = ["linux_armv7l"]
    if float_abi == "hard":
        platforms = [f"manylinux_2_{m}_armv7l" for m in range(36, 16, -1)] + platforms
    tags = [f"cp311-{abi}-{p}" for abi in ("cp311", "abi3", "none") for p in platforms]
    return {
        "machine": "armv7l",
        "implementation": "CPython",
        "python": "3.11.2",
        "libc": "glibc",
        "glibc": "2.36",
        "pip": "23.0.1",
        "float_abi": float_abi,
        "distribution": distribution,
        "tags": tags + [f"py3-none-{p}" for p in platforms],
    }


def test_the_doctor_sends_each_device_to_the_index_that_serves_it(farm: Farm) -> None:
    manylinux = "demo-1.0-cp311-cp311-manylinux_2_31_armv7l.whl"
    assert farm.upload(ARMEL, ARMEL_WHEEL, SOFT_FLOAT_SO).status_code == 200
    assert farm.upload("armv7l", manylinux, HARD_FLOAT_SO).status_code == 200
    indexes = farm.client.get("/api/v1/indexes").json()["indexes"]
    assert [i["path"] for i in indexes] == ["/simple/", f"/{ARMEL}/simple/", f"/{ARMHF}/simple/"]
    assert indexes[1] == {
        "path": f"/{ARMEL}/simple/",
        "kind": "distribution",
        "name": ARMEL,
        "arch": "armv7l",
        "float_abi": "soft",
        "machines": ["armv5tel", "armv6l", "armv7l", "armv8l"],
        "python_tags": ["cp311"],
        "enabled": True,
    }
    with serve_app(create_app(farm.settings, farm.factory)) as url:
        armel = check(url, "demo", "1.0", _armv7_device(ARMEL, "soft"))
        armhf = check(url, "demo", None, _armv7_device(ARMHF, "hard"))
        stranger = check(url, "demo", None, _armv7_device("debian-bullseye-armel", "soft"))
    verdicts = {w["filename"]: w for w in armel["wheels"]}
    assert verdicts[ARMEL_WHEEL]["fits"] and verdicts[ARMEL_WHEEL]["index"] == (
        f"{url}/{ARMEL}/simple/"
    )
    assert not verdicts[manylinux]["fits"]
    assert "this system is armel (soft-float)" in verdicts[manylinux]["why_not"]
    assert verdicts[manylinux]["why_not"].endswith(f": use {url}/{ARMEL}/simple/")
    assert armel["install"] == (
        f"python3 -m pip install --extra-index-url {url}/{ARMEL}/simple/ 'demo==1.0'"
    )
    # An armhf system takes the manylinux wheel from /simple/ and never sees the armel one.
    assert [(w["filename"], w["fits"]) for w in armhf["wheels"]] == [(manylinux, True)]
    assert armhf["distribution_index"] == f"{url}/{ARMHF}/simple/"
    assert armhf["install"] == f"python3 -m pip install --extra-index-url {url}/simple/ 'demo==1.0'"
    # An armel system the farm has no index for is told so.
    assert stranger["install"] is None
    [refused] = stranger["wheels"]
    assert refused["why_not"].endswith("the farm has no index for debian-bullseye-armel")


def test_system_packages_must_be_debian_names_and_versions(farm: Farm) -> None:
    for bad in ("libc6", "libc6=1.0;rm -rf /", "LibC=1", "a=1  b=2", "x" * 5000):
        answer = farm.upload(ARMEL, ARMEL_WHEEL, SOFT_FLOAT_SO, system_packages=bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert "system_packages" in answer.text
    assert farm.job(ARMEL).state == JobState.BUILDING


def test_the_build_containers_tagging_keeps_the_wheel_valid(tmp_path: Path) -> None:
    """builder/scripts/distribution_wheel.py, run as the build container runs it: the
    wheel gets the distribution's tag in its name and WHEEL file, RECORD stays true, and
    the master's verification passes."""
    built = tmp_path / "demo-1.0-cp311-cp311-linux_armv7l.whl"
    built.write_bytes(make_wheel(built.name))
    # As setuptools writes it: a blank line ends the WHEEL file.
    with zipfile.ZipFile(built) as archive:
        original = {i.filename: archive.read(i) for i in archive.infolist()}
    original["demo-1.0.dist-info/WHEEL"] += b"\n"
    record = original["demo-1.0.dist-info/RECORD"].decode().splitlines()
    wheel_line = next(
        n for n, line in enumerate(record) if line.startswith("demo-1.0.dist-info/WHEEL,")
    )
    record[wheel_line] = "demo-1.0.dist-info/WHEEL,{},{}".format(
        record_hash(original["demo-1.0.dist-info/WHEEL"]), len(original["demo-1.0.dist-info/WHEEL"])
    )
    original["demo-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(built, "w") as archive:
        for name, data in original.items():
            archive.writestr(name, data)
    read_contents(built)
    out, packages = tmp_path / "wheelhouse", tmp_path / "system-packages.txt"
    done = _tag(built, ARMEL_PLATFORM, out, packages)
    assert done.returncode == 0, done.stdout + done.stderr
    [tagged] = out.iterdir()
    assert tagged.name == ARMEL_WHEEL
    contents = read_contents(tagged)
    with zipfile.ZipFile(tagged) as archive:
        wheel_file = archive.read("demo-1.0.dist-info/WHEEL").decode()
    assert [line for line in wheel_file.splitlines() if line.startswith("Tag:")] == [
        f"Tag: cp311-cp311-{platform}" for platform in ARMEL_PLATFORM.split(".")
    ]
    assert contents.metadata.startswith(b"Metadata-Version")
    assert packages.read_text() == ""  # no ELF file, no package
    assert "system packages: none" in done.stdout
    # A broken archive is refused with exit 13 (the build's "repair failed").
    broken = tmp_path / "broken-1.0-cp311-cp311-linux_armv7l.whl"
    broken.write_bytes(b"not a zip")
    failed = _tag(broken, ARMEL_PLATFORM, out, packages)
    assert failed.returncode == 13 and "cannot tag" in failed.stdout


def _tag(wheel: Path, platform: str, out: Path, packages: Path) -> subprocess.CompletedProcess[str]:
    """builder/scripts/distribution_wheel.py, run as the build container runs it."""
    script = Path(__file__).parent.parent / "builder" / "scripts" / "distribution_wheel.py"
    return subprocess.run(
        [sys.executable, str(script), str(wheel), platform, str(out), str(packages)],
        capture_output=True,
        text=True,
        check=False,
    )


def _wheel_with_library(tmp_path: Path, name: str, code: str, link: list[str]) -> Path:
    """A linux wheel holding one shared object of this host, `code` linked with `link`."""
    source = tmp_path / f"{name}.c"
    source.write_text(code)
    library = tmp_path / f"{name}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source), *link], check=True)
    wheel = tmp_path / f"demo-1.0-cp311-cp311-linux_{name}.whl"
    wheel.write_bytes(make_wheel(wheel.name, extra={"demo/_speed.so": library.read_bytes()}))
    return wheel


def test_the_packages_a_wheel_loads_are_recorded_and_a_foreign_library_refused(
    tmp_path: Path,
) -> None:
    """distribution_wheel.py on this (Debian) host, with ldd and dpkg as in a build image:
    a library of the system's own package is recorded with its version; one that no
    package provides (the build's own, or /usr/local's) fails the build."""
    if shutil.which("dpkg") is None or shutil.which("gcc") is None:
        pytest.skip("needs a Debian host with gcc")
    zlib = _wheel_with_library(
        tmp_path,
        "zlib",
        "extern const char *zlibVersion(void);\nconst char *v(void) { return zlibVersion(); }\n",
        ["-l:libz.so.1"],
    )
    packages = tmp_path / "packages.txt"
    done = _tag(zlib, "linux_x86_64", tmp_path / "out", packages)
    assert done.returncode == 0, done.stdout
    recorded = packages.read_text().split()
    assert {p.split("=")[0] for p in recorded} >= {"libc6", "zlib1g"}, recorded
    assert all(re.fullmatch(SYSTEM_PACKAGES_PATTERN, p) for p in recorded)

    private = tmp_path / "private"
    private.mkdir()
    foreign = _wheel_with_library(private, "foreign", "int foreign(void) { return 42; }\n", [])
    own = _wheel_with_library(
        tmp_path,
        "mine",
        "extern int foreign(void);\nint mine(void) { return foreign(); }\n",
        [f"-L{private}", f"-Wl,-rpath,{private}", "-l:foreign.so"],
    )
    refused = _tag(own, "linux_x86_64", tmp_path / "o2", packages)
    assert refused.returncode == 13, refused.stdout
    assert f"{private}/foreign.so belongs to no package" in refused.stdout
    assert list((tmp_path / "o2").iterdir()) == []
    assert foreign.exists()
