"""The installers ARM users really run, against our index as they reach it.

One farm for the module: a live master whose builders published synthetic `demo` and
`yanked` wheels for aarch64 and armv7l (a yanked release, one whose Requires-Python
excludes the client, one whose files an operator removed) and `abidemo`, a real sdist
built under QEMU for both arches into a `cp36-abi3` wheel whose top_level.txt is stale.
nginx serves the master's static copy with the shipped snippet, and fronts both the
master and the copy with Accept rewritten to text/html, so that every client meets four
indexes: the master's pages and the static copy, in JSON and in HTML.

On the host (tests/clients.py): every pip series since 20.3 and Debian's own pips
resolve and download for an ARM target, uv, poetry and pdm resolve and lock. On the
emulated devices (tests/devices.py): each Debian release's own pip, on arm64 and armhf,
installs from the index and the modules import.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import tomllib
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from builder.backends.docker import DockerBackend
from builder.identity import BuilderIdentity
from common.config import BuilderSettings, Settings, TargetSettings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.job_spec import JobSpec
from common.states import TokenRole
from master.auth import create_token
from master.index.pages import JSON_TYPE
from master.index.static import StaticIndex
from master.pypi.feed import apply_events
from master.pypi.journal import JournalEvent, parse_entry
from master.web.app import create_app
from tests.builds import build_logged
from tests.clients import (
    CA_BUNDLE,
    DEBIAN_PIP,
    PIP_VERSIONS,
    PipResult,
    pdm_export,
    pdm_lock,
    pip_asks_json,
    pip_download,
    poetry_export,
    poetry_lock,
    uv_compile,
    uv_install_target,
    write_pdm_project,
    write_poetry_project,
)
from tests.devices import (
    DEVICES,
    CompletedResult,
    Device,
    ensure_device_images,
    run_on_device,
)
from tests.sdists import abi3_sdist
from tests.seed import add_release
from tests.servers import free_port, nginx_config, serve_app, stop_process, wait_until
from tests.test_clients import AARCH64, ARMV7L, post_built, real_wheel

pytestmark = [pytest.mark.slow, pytest.mark.docker]

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SNIPPET = Path(__file__).resolve().parent.parent / "docker" / "nginx-armwheels.conf"
PLATFORMS = {"aarch64": AARCH64, "armv7l": ARMV7L}
PIP_PLATFORM = {"aarch64": "manylinux2014_aarch64", "armv7l": "manylinux2014_armv7l"}
VARIANTS = ("master-json", "master-html", "static-json", "static-html")

# (project, version, Requires-Python, what happens to it after publishing)
SYNTHETIC = [
    ("demo", "1.0", ">=3.8", None),
    ("demo", "1.1", ">=3.8", "yank"),
    ("demo", "2.0", ">=3.12", None),  # excludes the CPython 3.11 the host clients target
    ("demo", "3.0", ">=3.8", "remove"),  # an operator removed its files
    ("yanked", "1.0", ">=3.8", None),
    ("yanked", "2.0", ">=3.8", "yank"),
]
# What a CPython 3.11 client must pick for each, by the PEPs: demo 1.0 (1.1 is yanked, 2.0
# needs 3.12, 3.0's files are gone), and yanked 2.0 since it is pinned exactly (PEP 592).
REQUIREMENTS = ("demo", "yanked==2.0", "abidemo")
EXPECTED = {"demo": "1.0", "yanked": "2.0", "abidemo": "1.0"}
# PEP 658/714: where each pip finds core metadata without the wheel.
PIP_HTML_METADATA_SINCE = Version("22.3")  # data-dist-info-metadata, then data-core-metadata
PIP_JSON_METADATA_SINCE = Version("23.2")  # core-metadata (PEP 714)


@dataclass
class Farm:
    master: str
    simple: dict[str, str]  # variant -> its /simple/ URL
    wheels: dict[str, bytes]  # every published file's bytes, by file name

    def wheel(self, project: str, version: str, arch: str) -> str:
        [name] = [
            n
            for n in self.wheels
            if n.startswith(f"{project}-{version}-") and n.removesuffix(".whl").endswith(arch)
        ]
        return name


def _settings(tmp: Path) -> Settings:
    targets = {
        arch: {"image": f"armwheels/build-{arch}:bookworm", "policy": f"manylinux2014_{arch}"}
        for arch in PLATFORMS
    }
    return load_settings(
        None,
        database={"url": f"sqlite:///{tmp / 'armwheels.db'}"},
        master={"data_dir": tmp / "data"},
        builder={"work_dir": tmp / "work"},
        targets=targets,
    )


def _build_abidemo(spec: JobSpec, sdist: Path, work: Path) -> Path:
    """The real sdist through the docker backend under QEMU, as a builder builds it."""
    builder = BuilderSettings(
        ca_bundle=CA_BUNDLE if CA_BUNDLE.exists() else None,
        work_dir=work / "work",
        build_timeout=1200,
    )
    target = TargetSettings.model_validate(
        {"arch": spec.arch, "image": f"armwheels/build-{spec.arch}:bookworm", "policy": spec.policy}
    )
    backend = DockerBackend(
        builder, spec.arch, target, BuilderIdentity(f"matrix-{spec.arch}", uuid4().hex)
    )
    outcome, text = build_logged(backend, spec, sdist, work, f"abidemo-{spec.arch}")
    assert outcome.built and outcome.wheel is not None, text[-3000:]
    assert f"on {spec.arch}" in text, "build.sh ran on an (emulated) machine of the arch"
    # The stale top_level.txt names `_speedups`; the smoke test imported the real module.
    assert "::armwheels:: import abidemo._speedups" in text, text[-3000:]
    _, _, _, tags = parse_wheel_filename(outcome.wheel.name)
    assert {(t.interpreter, t.abi) for t in tags} == {("cp36", "abi3")}, outcome.wheel.name
    assert spec.policy in {t.platform for t in tags}, outcome.wheel.name
    with zipfile.ZipFile(outcome.wheel) as archive:
        [library] = [n for n in archive.namelist() if n.endswith(".so")]
        assert library == "abidemo/_speedups.abi3.so"
        elf_class, machine, flags = _elf_header(archive.read(library)[:64])
    assert (elf_class, machine) == ELF_MACHINE[spec.arch], library
    if spec.arch == "armv7l":
        assert flags & EF_ARM_ABI_FLOAT_HARD, f"{library}: not hard-float (armhf)"
    return outcome.wheel


# ELF class (1: 32-bit, 2: 64-bit) and e_machine of each arch's code.
ELF_MACHINE = {"aarch64": (2, 183), "armv7l": (1, 40)}
EF_ARM_ABI_FLOAT_HARD = 0x400  # e_flags bit of the armhf (hard-float) ABI


def _elf_header(data: bytes) -> tuple[int, int, int]:
    """ELF class, e_machine and e_flags of a little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[5] == 1, "not a little-endian ELF file"
    elf_class = data[4]
    (machine,) = struct.unpack_from("<H", data, 18)
    # e_flags follows e_entry, e_phoff and e_shoff: 4-byte fields in ELF32, 8 in ELF64.
    (flags,) = struct.unpack_from("<I", data, 36 if elf_class == 1 else 48)
    return elf_class, machine, flags


def _nginx_config(tmp: Path, root: Path, master: str, ports: dict[str, int]) -> Path:
    """The shipped snippet for the static copy, and two fronts that ask for HTML only."""
    static = (
        SNIPPET.read_text()
        .replace("listen 8080;", f"listen 127.0.0.1:{ports['static-json']};")
        .replace("root /srv/armwheels;", f"root {root};")
    )
    (tmp / "armwheels.conf").write_text(static)
    fronts = "".join(
        f"""
    server {{
        listen 127.0.0.1:{ports[variant]};
        location / {{
            proxy_pass {upstream};
            proxy_set_header Accept "text/html";
        }}
    }}"""
        for variant, upstream in (
            ("master-html", master),
            ("static-html", f"http://127.0.0.1:{ports['static-json']}"),
        )
    )
    return nginx_config(tmp, f"    include {tmp}/armwheels.conf;\n{fronts}")


@contextmanager
def _nginx(tmp: Path, root: Path, master: str) -> Iterator[dict[str, str]]:
    ports = {variant: free_port() for variant in VARIANTS[1:]}
    config = _nginx_config(tmp, root, master, ports)
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    bases = {variant: f"http://127.0.0.1:{port}" for variant, port in ports.items()}

    def answers() -> bool:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise AssertionError(f"nginx exited: {error}")
        try:
            return all(
                httpx.get(f"{b}/simple/", timeout=2).status_code == 200 for b in bases.values()
            )
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 30, "nginx")
        yield bases
    finally:
        stop_process(process, 10)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    tmp = tmp_path_factory.mktemp("matrix")
    settings = _settings(tmp)
    engine = make_engine(settings.database.url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    sdist = abi3_sdist(tmp / "src", tmp / "dist")
    jobs: dict[tuple[str, str, str], int] = {}
    with transaction(factory) as session:
        for project, version, _, _ in [*SYNTHETIC, ("abidemo", "1.0", None, None)]:
            # The wheels carry Requires-Python, as built ones do; the release leaves it out
            # so that the farm has a job to publish each of them with.
            _, _, created = add_release(session, settings, project, version)
            jobs.update({(project, version, job.arch): job.id for job in created})
        tokens = {
            arch: create_token(session, f"builder-{arch}", TokenRole.BUILDER) for arch in PLATFORMS
        }
        operator = create_token(session, "operator", TokenRole.OPERATOR)
    wheels: dict[str, bytes] = {}
    # Device images build (debootstrap, QEMU) while the farm builds abidemo.
    images = ThreadPoolExecutor(max_workers=1).submit(ensure_device_images, DEVICES, 1)
    with (
        serve_app(create_app(settings, factory)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        specs: dict[str, JobSpec] = {}
        for arch, token in tokens.items():
            auth = {"Authorization": f"Bearer {token}"}
            registered = client.post(
                "/api/v1/builders/register",
                headers=auth,
                json={"arch": arch, "backend": "docker", "python_tags": ["cp311"]},
            )
            assert registered.status_code == 200, registered.text
            for (project, _version, job_arch), job_id in jobs.items():
                if job_arch != arch:
                    continue
                claimed = client.post(f"/api/v1/jobs/{job_id}/claim", headers=auth)
                assert claimed.status_code == 200, claimed.text
                if project == "abidemo":
                    specs[arch] = JobSpec.from_json(claimed.json())
        with ThreadPoolExecutor(max_workers=len(specs)) as pool:
            built = dict(
                zip(
                    specs,
                    pool.map(lambda s: _build_abidemo(s, sdist, tmp), specs.values()),
                    strict=True,
                )
            )
        for arch, wheel in built.items():
            wheels[wheel.name] = wheel.read_bytes()
            post_built(client, tokens[arch], specs[arch].job_id, wheel.name, wheels[wheel.name])
        for project, version, requires_python, _ in SYNTHETIC:
            for arch, platform in PLATFORMS.items():
                filename = f"{project}-{version}-cp311-cp311-{platform}.whl"
                wheels[filename] = real_wheel(filename, requires_python or "")
                post_built(
                    client, tokens[arch], jobs[project, version, arch], filename, wheels[filename]
                )
        feed = settings.model_copy(deep=True)
        feed.upstream.projects = "all"
        feed.upstream.feed = "changelog"
        for serial, (project, version, _, then) in enumerate(SYNTHETIC, start=1):
            if then == "yank":
                event = parse_entry([project, version, 1_700_000_000, "yank release", serial])
                assert isinstance(event, JournalEvent)
                with transaction(factory) as session:
                    apply_events(session, [event], feed)
            elif then == "remove":
                for platform in PLATFORMS.values():
                    filename = f"{project}-{version}-cp311-cp311-{platform}.whl"
                    removed = client.delete(
                        f"/api/v1/files/{filename}",
                        params={"reason": "broken build"},
                        headers={"Authorization": f"Bearer {operator}"},
                    )
                    assert removed.status_code == 200, removed.text
                    del wheels[filename]
        with factory() as session:
            StaticIndex(settings.master.data_dir).sync(session)
        images.result()
        with _nginx(tmp, settings.master.data_dir, url) as bases:
            simple = {"master-json": f"{url}/simple/"}
            simple.update({variant: f"{base}/simple/" for variant, base in bases.items()})
            yield Farm(url, simple, wheels)
    engine.dispose()


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "client-matrix"


def _record(name: str, rows: list[tuple[str, ...]]) -> None:
    """The matrix as a table, for people (test-artifacts/client-matrix/NAME.tsv)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.tsv").write_text("".join("\t".join(row) + "\n" for row in rows))


def _expected_files(farm: Farm, arch: str) -> set[str]:
    return {farm.wheel(project, version, arch) for project, version in EXPECTED.items()}


def _answered_as(result: PipResult, variant: str, page: str) -> str:
    """The format the index answered the project page in: pip >= 22.2 logs it; older pips
    only ever ask for text/html."""
    logged = result.pages.get(page)
    if logged is not None:
        return "json" if logged.split(";")[0].strip() == JSON_TYPE else "html"
    assert not pip_asks_json(result.version), result.output[-3000:]
    return "html"


def _uses_metadata(version: str, answered: str) -> bool:
    since = PIP_JSON_METADATA_SINCE if answered == "json" else PIP_HTML_METADATA_SINCE
    return Version(version) >= since


def _check_pip(farm: Farm, variant: str, arch: str, result: PipResult) -> tuple[str, ...]:
    label = f"pip {result.version} {variant} {arch}"
    assert result.ok, f"{label}: {result.error}\n{result.output[-4000:]}"
    got = {path.name: path.read_bytes() for path in result.downloaded}
    assert set(got) == _expected_files(farm, arch), label
    for name, body in got.items():
        assert _sha256(body) == _sha256(farm.wheels[name]), f"{label}: {name}"
    page = f"{farm.simple[variant]}demo/"
    answered = _answered_as(result, variant, page)
    asks_json = variant.endswith("json") and pip_asks_json(result.version)
    assert answered == ("json" if asks_json else "html"), label
    metadata = [url for url in result.metadata_urls if "/demo/" in url]
    base = farm.simple[variant].removesuffix("simple/")
    wanted = f"{base}files/demo/{farm.wheel('demo', '1.0', arch)}.metadata"
    assert metadata == ([wanted] if _uses_metadata(result.version, answered) else []), label
    return (
        f"pip {result.version}",
        arch,
        variant,
        answered,
        "PEP 658 metadata" if metadata else "downloads the wheel for its metadata",
        f"{result.seconds:.1f} s",
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pip_series_resolves_and_downloads_the_right_wheels(
    farm: Farm, variant: str, tmp_path: Path
) -> None:
    """demo 1.0 (1.1 yanked, 2.0 needs Python 3.12, 3.0 removed), the pinned yanked 2.0 and
    the real abi3 wheel, hashes checked, by every pip since 20.3 for aarch64 and by
    Debian's pips for armv7l; PEP 658 metadata used wherever the pip can."""
    runs = [(version, "aarch64") for version in PIP_VERSIONS]
    runs += [(version, "armv7l") for version in DEBIAN_PIP.values()]

    def run(version: str, arch: str) -> PipResult:
        return pip_download(
            version,
            farm.simple[variant],
            REQUIREMENTS,
            PIP_PLATFORM[arch],
            "3.11",
            tmp_path / f"{version}-{arch}",
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda r: (r[1], run(*r)), runs))
    rows = [_check_pip(farm, variant, arch, result) for arch, result in results]
    _record(f"pip-{variant}", rows)


@pytest.mark.parametrize("variant", VARIANTS)
def test_uv_resolves_locks_and_installs_for_the_device(
    farm: Farm, variant: str, tmp_path: Path
) -> None:
    """For aarch64: uv's --python-platform offers no 32-bit ARM target."""
    arch, platform = "aarch64", "aarch64-manylinux_2_17"
    requirements = "\n".join(REQUIREMENTS)
    compiled = uv_compile(
        tmp_path / "compile", requirements, farm.simple[variant], python_platform=platform
    ).check()
    for project, version in EXPECTED.items():
        assert f"{project}=={version}" in compiled.stdout, compiled.output
        body = farm.wheels[farm.wheel(project, version, arch)]
        assert f"--hash=sha256:{_sha256(body)}" in compiled.stdout, compiled.output
    target = tmp_path / "target"
    uv_install_target(
        tmp_path / "install", REQUIREMENTS, target, farm.simple[variant], python_platform=platform
    ).check()
    assert (target / "abidemo" / "__init__.py").is_file()
    assert (target / "demo" / "__init__.py").read_text() == '__version__ = "1.0"\n'
    assert (target / "yanked-2.0.dist-info").is_dir()


@pytest.mark.parametrize("variant", VARIANTS)
def test_poetry_and_pdm_lock_a_project_needing_our_wheel_with_pypi_first(
    farm: Farm, variant: str, tmp_path: Path
) -> None:
    """PyPI stays the primary index and abidemo exists only on ours. Neither tool installs
    for a platform other than its own, so the device installs their exports (see
    test_a_device_installs_what_poetry_and_pdm_locked)."""
    abi3 = {arch: farm.wheels[farm.wheel("abidemo", "1.0", arch)] for arch in PLATFORMS}
    project = tmp_path / "poetry"
    write_poetry_project(project, ["abidemo==1.0"], farm.simple[variant])
    [package] = tomllib.loads(poetry_lock(project, cert=CA_BUNDLE))["package"]
    assert (package["name"], package["version"]) == ("abidemo", "1.0")
    # poetry locks for every platform: both of our wheels, by name and hash.
    assert package["files"] == sorted(
        (
            {"file": farm.wheel("abidemo", "1.0", arch), "hash": f"sha256:{_sha256(body)}"}
            for arch, body in abi3.items()
        ),
        key=lambda entry: entry["file"],
    )
    assert f"--hash=sha256:{_sha256(abi3['aarch64'])}" in poetry_export(project, cert=CA_BUNDLE)

    project = tmp_path / "pdm"
    write_pdm_project(project, ["abidemo==1.0"], farm.simple[variant])
    [package] = tomllib.loads(pdm_lock(project, cert=CA_BUNDLE))["package"]
    wheel = farm.wheel("abidemo", "1.0", "aarch64")
    base = farm.simple[variant].removesuffix("simple/")
    assert package["files"] == [
        {"url": f"{base}files/abidemo/{wheel}", "hash": f"sha256:{_sha256(abi3['aarch64'])}"}
    ]
    assert f"--hash=sha256:{_sha256(abi3['aarch64'])}" in pdm_export(project, cert=CA_BUNDLE)


DOCTOR_BEGIN, DOCTOR_END = "--- doctor ---", "--- doctor done ---"


def _device_script(device: Device, index: str, requirements: str, master: str) -> str:
    """On the device as its user would: a venv from the distribution's own ensurepip, our
    index, then import what was installed; then the doctor the master serves, run by the
    venv's python (its pip's tags), asked about abidemo."""
    fetch = (
        "import sys, urllib.request;"
        " sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())"
    )
    return (
        "python3 -m venv /tmp/v\n"
        "/tmp/v/bin/pip --version\n"
        f"/tmp/v/bin/pip install --no-cache-dir --index-url {index} {requirements}\n"
        "cd /\n"
        "/tmp/v/bin/python -c 'import abidemo, abidemo._speedups, sys, platform; "
        'print("imported abidemo", abidemo.add(2, 3), platform.machine(), sys.version_info[:2])\'\n'
        f"python3 -c '{fetch}' {master}/doctor > /tmp/doctor.py\n"
        f"echo '{DOCTOR_BEGIN}'\n"
        f"/tmp/v/bin/python /tmp/doctor.py abidemo==1.0 --json --farm {master}\n"
        f"echo '{DOCTOR_END}'\n"
    )


def _check_doctor(device: Device, output: str, farm: Farm) -> None:
    """The doctor read the device right, and named the wheel pip there took."""
    report = json.loads(output.split(DOCTOR_BEGIN, 1)[1].split(DOCTOR_END, 1)[0])
    facts = report["device"]
    assert facts["machine"] == device.arch
    assert facts["float_abi"] == ("hard" if device.arch == "armv7l" else None)
    assert facts["userland_bits"] == (32 if device.arch == "armv7l" else 64)
    assert (facts["libc"], facts["glibc"], facts["pip"]) == ("glibc", device.glibc, device.pip)
    assert facts["python"].startswith("{}.{}.".format(*device.python))
    # os-release and the interpreter's ELF header: the name of its distribution's index.
    assert facts["distribution"] == f"debian-{device.suite}-{device.debian_arch}"
    verdicts = {w["filename"]: w for w in report["project"]["wheels"]}
    mine = farm.wheel("abidemo", "1.0", device.arch)
    assert verdicts[mine]["fits"], verdicts[mine]
    for name, verdict in verdicts.items():
        if name != mine:
            assert not verdict["fits"] and "wheel, this device takes" in verdict["why_not"]
    assert report["project"]["install"].endswith("'abidemo==1.0'")


@pytest.fixture(scope="module", autouse=True)
def device_runs(farm: Farm) -> Iterator[dict[str, Future[CompletedResult]]]:
    """Each device's script, run one at a time in the background from the module's first
    test on: a device's pip under QEMU keeps one core busy, the host's pip tests the other
    one, and the device tests then read what their device did."""
    pool = ThreadPoolExecutor(max_workers=1)
    runs = {}
    for device in DEVICES:
        requirements = "abidemo demo" if device.python == (3, 11) else "abidemo"
        script = _device_script(device, farm.simple["master-json"], requirements, farm.master)
        runs[device.name] = pool.submit(run_on_device, device, script)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("device", DEVICES, ids=[d.name for d in DEVICES])
def test_each_distribution_s_own_pip_installs_and_imports_on_the_device(
    farm: Farm, device: Device, device_runs: dict[str, Future[CompletedResult]]
) -> None:
    """Under QEMU, with the pip the distribution ships: the abi3 wheel that the farm built
    on CPython 3.11 serves this device's CPython too. On bookworm (pip 23.0.1, which
    crashed on a JSON page carrying dist-info-metadata) also demo, whose page has a yanked
    release, one needing Python 3.12 and one whose files were removed."""
    result = device_runs[device.name].result()
    assert result.returncode == 0, result.output[-4000:]
    _check_doctor(device, result.output, farm)
    assert f"pip {device.pip} from" in result.output
    python = "({}, {})".format(*device.python)
    assert f"imported abidemo 5 {device.arch} {python}" in result.output
    assert "Successfully installed abidemo-1.0" in result.output or "abidemo-1.0" in result.output
    if device.python == (3, 11):
        assert "demo-1.0" in result.output and "demo-2.0" not in result.output
    _record(f"device-{device.name}", [(device.name, f"pip {device.pip}", "master-json", "ok",
                                       f"{result.seconds:.0f} s")])  # fmt: skip
