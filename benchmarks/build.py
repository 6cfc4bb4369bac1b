"""Native (x86_64 host) vs emulated (arm64 container under QEMU) build of one real sdist.

Prints three figures and their ratios:
  native    `pip wheel` of the sdist with the host's Python
  emulated  the same `pip wheel` in the arm64 build image under QEMU
  farm job  the builder's whole job through the docker backend, in its sandbox
            (wheelhouse prefetch + build + auditwheel repair + smoke test in a second
            container), first with an empty wheelhouse, then with a warm one

Usage: .venv/bin/python -m benchmarks.build [PROJECT VERSION]   (default msgpack 1.1.0)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from uuid import uuid4

import docker
from rich.console import Console
from rich.table import Table

from builder.backends.docker import DockerBackend
from builder.identity import BuilderIdentity
from common.config import load_settings
from common.job_spec import JobSpec
from tests.sdists import pypi_sdist
from tests.servers import clean_pip_env

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def native_build(sdist: Path, scratch: Path) -> float:
    venv = scratch / "native-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.perf_counter()
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "-q",
            "-w",
            str(scratch / "native"),
            str(sdist),
        ],
        check=True,
        env={**clean_pip_env(), "PIP_CERT": str(CA_BUNDLE)},
    )
    return time.perf_counter() - started


def emulated_build(sdist: Path, image: str) -> float:
    client = docker.from_env()
    script = (
        "python3 -m venv /tmp/v && start=$(date +%s.%N) && "
        "/tmp/v/bin/pip wheel --no-deps --no-cache-dir -q -w /tmp/out /s/"
        + sdist.name
        + " && end=$(date +%s.%N) && echo $start $end"
    )
    output = client.containers.run(
        image,
        ["/bin/sh", "-c", script],
        network_mode="host",
        remove=True,
        volumes={
            str(sdist.parent): {"bind": "/s", "mode": "ro"},
            str(CA_BUNDLE): {"bind": "/ca.crt", "mode": "ro"},
        },
        environment={"PIP_CERT": "/ca.crt", "SSL_CERT_FILE": "/ca.crt"},
    )
    start, end = bytes(output).decode().split()[-2:]
    return float(end) - float(start)


def farm_job(sdist: Path, scratch: Path, project: str, version: str, job: str) -> tuple[float, str]:
    settings = load_settings(None, builder={"ca_bundle": CA_BUNDLE, "work_dir": scratch})
    target = settings.targets["aarch64"]
    backend = DockerBackend(
        settings.builder, "aarch64", target, BuilderIdentity("benchmark", uuid4().hex)
    )
    spec = JobSpec(
        0, project, version, "aarch64", "cp311", target.policy, sdist.name, "", "", None, 1
    )
    started = time.perf_counter()
    with (scratch / f"{job}.log").open("wb") as log:
        outcome = backend.build(spec, sdist, scratch / job, log)
    elapsed = time.perf_counter() - started
    backend.close()
    if not outcome.built or outcome.wheel is None:
        raise SystemExit(f"farm job failed: {outcome.reason}: {outcome.summary}")
    return elapsed, outcome.wheel.name


def main() -> None:
    project, version = (sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else ("msgpack", "1.1.0")
    console = Console()
    sdist = pypi_sdist(project, version)
    image = load_settings(None).targets["aarch64"].image
    with tempfile.TemporaryDirectory(prefix="armwheels-bench-") as tmp:
        scratch = Path(tmp)
        console.log(f"native build of {sdist.name}")
        native = native_build(sdist, scratch)
        console.log(f"emulated build of {sdist.name} in {image}")
        emulated = emulated_build(sdist, image)
        console.log("farm job through the docker backend, empty wheelhouse")
        cold, wheel = farm_job(sdist, scratch, project, version, "cold")
        console.log("farm job again, warm wheelhouse")
        job, wheel = farm_job(sdist, scratch, project, version, "warm")
    table = Table(title=f"{project} {version}: build times (s)")
    for column in ("measure", "seconds", "ratio to native"):
        table.add_column(column)
    table.add_row("native x86_64 pip wheel", f"{native:.1f}", "1.0")
    table.add_row("emulated aarch64 pip wheel", f"{emulated:.1f}", f"{emulated / native:.1f}")
    table.add_row("farm job, empty wheelhouse", f"{cold:.1f}", f"{cold / native:.1f}")
    table.add_row("farm job, warm wheelhouse", f"{job:.1f}", f"{job / native:.1f}")
    console.print(table)
    console.print(f"wheel: {wheel}")
    for label, seconds in (("empty", cold), ("warm", job)):
        console.print(
            f"farm overhead beyond the emulated compile ({label} wheelhouse): "
            f"{seconds - emulated:.1f} s ({(seconds - emulated) / seconds:.0%} of the job)"
        )


if __name__ == "__main__":
    main()
