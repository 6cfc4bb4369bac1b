"""A distribution target built for real: an sdist linking a system library, built in a
Debian bookworm armel (soft-float) image under QEMU, tagged with armel's machines, its
Debian packages recorded, imported in the same image, then published by the master under
the distribution's own index only; on a Debian armel system the doctor the master serves
names it, and that system's own pip installs it (never the armhf wheel beside it in
/simple/) and imports it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient
from packaging.utils import parse_wheel_filename
from sqlalchemy import select

from builder.backends import BuildOutcome
from builder.backends.docker import DockerBackend
from builder.identity import BuilderIdentity
from builder.image import build_local_image
from builder.worker import choose_backend
from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.job_spec import JobSpec
from common.models import OutputFile
from common.states import TokenRole
from master.auth import create_token
from master.web.app import create_app
from tests.builds import build_logged
from tests.devices import Device, run_on_device
from tests.sdists import zlib_linking_sdist
from tests.seed import add_release
from tests.servers import serve_app
from tests.wheels import arm32_objects, elf_header, make_wheel

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ARMEL = "debian-bookworm-armel"
ARMEL_IMAGE = "armwheels/build-armel:bookworm"
PLATFORM = "linux_armv5tel.linux_armv6l.linux_armv7l.linux_armv8l"
# A Debian bookworm armel system (its own python3 and ensurepip's pip).
ARMEL_DEVICE = Device("bookworm", "armel", (3, 11), "23.0.1", "2.36")
FETCH = (
    "import sys, urllib.request;"
    " sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())"
)
BEGIN, END = "--- doctor ---", "--- doctor done ---"


def _settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        None,
        database={"url": database_url},
        master={"data_dir": tmp_path / "data"},
        builder={
            "work_dir": tmp_path / "work",
            "build_timeout": 1200,
            "ca_bundle": CA_BUNDLE if CA_BUNDLE.exists() else None,
        },
        targets={
            "armv7l": {
                "image": "armwheels/build-armv7l:bookworm",
                "policy": "manylinux_2_31_armv7l",
            },
            ARMEL: {
                "arch": "armv7l",
                "kind": "distribution",
                "float_abi": "soft",
                "image": ARMEL_IMAGE,
                "suite": "bookworm",
                "python_tags": ["cp311"],
            },
        },
    )


def _report_built(
    client: TestClient,
    secret: str,
    job_id: int,
    target: str,
    filename: str,
    body: bytes,
    **form: str,
) -> Any:
    """A builder of the target registers, claims the job and reports the wheel built."""
    auth = {"Authorization": f"Bearer {secret}"}
    registration = {
        "arch": "armv7l",
        "target": target,
        "backend": "docker",
        "python_tags": ["cp311"],
    }
    assert client.post("/api/v1/builders/register", headers=auth, json=registration).is_success
    assert client.post(f"/api/v1/jobs/{job_id}/claim", headers=auth).is_success
    return client.post(
        f"/api/v1/jobs/{job_id}/result",
        headers=auth,
        data={
            "outcome": "built",
            "summary": "built",
            "wheel_sha256": hashlib.sha256(body).hexdigest(),
            **form,
        },
        files={"log": ("build.log", b"built\n"), "wheel": (filename, body)},
    )


@pytest.fixture(scope="module")
def armel_image() -> str:
    """Debian bookworm armel, made once (debootstrap under QEMU, ~4 min) and kept while
    its recipe is unchanged, as `armwheels image build --target` makes it."""
    build_local_image(
        "armel",
        ARMEL_IMAGE,
        CA_BUNDLE if CA_BUNDLE.exists() else None,
        suite="bookworm",
        distribution=True,
    )
    return ARMEL_IMAGE


def test_an_armel_wheel_is_built_tagged_and_served_by_its_own_index_only(
    armel_image: str, tmp_path: Path
) -> None:
    # One database is enough: the master's side runs on both in test_distribution_index.
    database_url = f"sqlite:///{tmp_path / 'armwheels.db'}"
    settings = _settings(database_url, tmp_path)
    target = settings.targets[ARMEL]
    # auto picks the distribution's own image on any host.
    backend = choose_backend(settings, ARMEL, BuilderIdentity("armel", uuid4().hex))
    assert isinstance(backend, DockerBackend) and backend.target.image == armel_image
    assert backend.python_tags() == ["cp311"]
    sdist = zlib_linking_sdist(tmp_path / "src", tmp_path / "dist")
    spec = JobSpec(
        1, "zver", "1.0", "armv7l", "cp311", target.policy, sdist.name, "", "", None, 1, None,
        None, "fail", ARMEL,
    )  # fmt: skip
    outcome: BuildOutcome
    outcome, log = build_logged(backend, spec, sdist, tmp_path, "armel")
    assert outcome.built and outcome.wheel is not None, log[-4000:]
    wheel = outcome.wheel
    assert wheel.name == f"zver-1.0-cp311-cp311-{PLATFORM}.whl"
    _, _, _, tags = parse_wheel_filename(wheel.name)
    assert {t.platform for t in tags} == set(PLATFORM.split("."))
    assert arm32_objects(wheel, "soft") == ["zver/_speed.cpython-311-arm-linux-gnueabi.so"]
    assert "auditwheel" not in log.split("building wheel from", 1)[1]
    packages = outcome.system_packages or []
    assert {p.split("=")[0] for p in packages} >= {"libc6", "zlib1g"}, packages
    assert "smoke test passed" in log

    # The master publishes it under the distribution's index alone, with its packages.
    engine = make_engine(database_url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        _, _, jobs = add_release(session, settings, project="zver")
        [job_id] = [j.id for j in jobs if j.target == ARMEL]
        secret = create_token(session, "armel", TokenRole.BUILDER)
        [armhf_job] = [j.id for j in jobs if j.target == "armv7l"]
        armhf_secret = create_token(session, "armhf", TokenRole.BUILDER)
    body = wheel.read_bytes()
    with TestClient(create_app(settings, factory)) as client:
        # An armhf (hard-float) wheel of the same release in /simple/, as the armv7l
        # target would publish it.
        armhf = "zver-1.0-cp311-cp311-manylinux_2_31_armv7l.whl"
        hard = make_wheel(armhf, modules=("zver",), extra={"zver/_speed.so": elf_header("armv7l")})
        published = _report_built(client, armhf_secret, armhf_job, "armv7l", armhf, hard)
        assert published.status_code == 200, published.text
        answer = _report_built(
            client, secret, job_id, ARMEL, wheel.name, body, system_packages=" ".join(packages)
        )
        assert answer.status_code == 200, answer.text
        assert wheel.name in client.get(f"/{ARMEL}/simple/zver/").text
        assert client.get(f"/{ARMEL}/files/zver/{wheel.name}").content == body
        assert wheel.name not in client.get("/simple/zver/").text
    with factory() as session:
        output = session.scalar(select(OutputFile).where(OutputFile.index_name == ARMEL))
        assert output is not None and output.system_packages == packages

    # A Debian bookworm armel system: the doctor served by the master, then the exact
    # pip line it gives, with /simple/ as the main index.
    with serve_app(create_app(settings, factory)) as master:
        script = (
            "python3 -m venv /tmp/v\n"
            f"python3 -c '{FETCH}' {master}/doctor > /tmp/doctor.py\n"
            f"/tmp/v/bin/python /tmp/doctor.py zver==1.0 --json --farm {master} > /tmp/d.json\n"
            f"echo '{BEGIN}'; cat /tmp/d.json; echo '{END}'\n"
            'eval "$(/tmp/v/bin/python -c \'import json; print(json.load(open("/tmp/d.json"))'
            '["project"]["install"].replace("python3 -m pip", "/tmp/v/bin/pip"))\')"\n'
            "/tmp/v/bin/pip list --format=freeze | grep -i zver\n"
            "cd / && /tmp/v/bin/python -c 'import zver, platform; "
            'print("imported zver with zlib", zver.version(), platform.machine())\'\n'
        )
        result = run_on_device(ARMEL_DEVICE, script, env={"PIP_INDEX_URL": f"{master}/simple/"})
    engine.dispose()
    assert result.returncode == 0, result.output[-4000:]
    report = json.loads(result.output.split(BEGIN, 1)[1].split(END, 1)[0])
    facts = report["device"]
    assert (facts["float_abi"], facts["userland_bits"], facts["distribution"]) == (
        "soft",
        32,
        ARMEL,
    )
    assert (facts["libc"], facts["glibc"]) == ("glibc", "2.36")
    assert not any("manylinux" in tag for tag in facts["tags"])
    verdicts = {w["filename"]: w for w in report["project"]["wheels"]}
    assert verdicts[wheel.name]["fits"]
    assert not verdicts[armhf]["fits"]
    assert verdicts[armhf]["why_not"].endswith(f"use {master}/{ARMEL}/simple/")
    assert report["project"]["install"] == (
        f"python3 -m pip install --extra-index-url {master}/{ARMEL}/simple/ 'zver==1.0'"
    )
    assert "zver==1.0" in result.output
    assert "imported zver with zlib 1.2.13" in result.output
