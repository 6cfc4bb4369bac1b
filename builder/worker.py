"""`armwheels builder`: a Celery worker on build.<arch> that runs one job at a time."""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import BinaryIO

from celery import signals

from builder.backends import Backend, BuildOutcome, note
from builder.client import ClaimRefused, JobSpec, MasterClient, ReportRejected
from builder.log_stream import LogStreamer
from builder.sdist import SdistMismatch, SdistUnavailable, fetch_sdist
from common.config import Settings
from common.messages import BUILD_TASK, declare_queues, make_celery, queue_name
from common.states import FailureReason

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0


class NoBackend(RuntimeError):
    """No way to build here: the message names what to install."""


def is_arm_host(arch: str) -> bool:
    machine = platform.machine().lower()
    return machine == arch or (arch == "armv7l" and machine in ("armv7l", "armv8l"))


def choose_backend(settings: Settings, arch: str, name: str) -> Backend:
    target = settings.targets.get(arch)
    if target is None or not target.enabled:
        raise NoBackend(f"no enabled target for {arch} in the configuration")
    wanted = settings.builder.backend
    if wanted == "auto":
        wanted = "native" if is_arm_host(arch) else "docker"
    if wanted == "native":
        if not is_arm_host(arch):
            raise NoBackend(f"--backend native builds {arch} only on an {arch} host")
        from builder.backends.native import NativeBackend, NativeUnavailable

        try:
            native = NativeBackend(
                settings.builder, arch, target, build_user=settings.builder.build_user
            )
        except NativeUnavailable as exc:
            raise NoBackend(str(exc)) from exc
        if not native.python_tags():
            raise NoBackend(f"no interpreter here for {', '.join(target.python_tags)}")
        return native
    from builder.backends.docker import DockerBackend, DockerUnavailable

    try:
        container = DockerBackend(settings.builder, arch, target, name)
    except DockerUnavailable as exc:
        raise NoBackend(
            f"{exc}; install docker.io and qemu-user-static (apt) and start dockerd,"
            f" then `armwheels image build --arch {arch}`"
        ) from exc
    if not container.python_tags():
        container.close()
        raise NoBackend(
            f"build image {target.image} has none of {', '.join(target.python_tags)}"
            f" (it has: {', '.join(container.interpreters) or 'no CPython'})"
        )
    return container


class JobRunner:
    """Claims a job, fetches and verifies its sdist, builds it and reports the result."""

    def __init__(self, settings: Settings, arch: str, backend: Backend, client: MasterClient):
        self.settings = settings
        self.arch = arch
        self.backend = backend
        self.client = client
        self.stopping = threading.Event()
        # The job this builder is running, for its heartbeats.
        self.current_job: int | None = None

    def stop(self) -> None:
        """The builder is stopping (SIGTERM): kill the build under way and hand it back,
        so that no job is left `building` for the reconciler to find later."""
        self.stopping.set()
        self.backend.cancel()

    def run(self, job_id: int) -> None:
        if self.stopping.is_set():
            return  # not claimed: the message goes back to the broker with the worker
        try:
            spec = self.client.claim(job_id)
        except ClaimRefused as exc:
            log.info("job not claimed: %s", exc, extra={"job_id": job_id})
            return
        self.current_job = job_id
        work_root = self.settings.builder.work_dir
        work_root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=work_root))
        log_path = workdir / "build.log"
        started = time.monotonic()
        log.info(
            "job started",
            extra={
                "job_id": job_id,
                "project": spec.project,
                "version": spec.version,
                "python_tag": spec.python_tag,
            },
        )
        try:
            with log_path.open("wb") as sink:
                note(
                    sink,
                    f"job {job_id} attempt {spec.attempt}: {spec.project} {spec.version}"
                    f" for {spec.arch} {spec.python_tag} ({spec.policy})"
                    f" on {self.backend.name} backend",
                )
                # The log goes to the master as it grows; the report waits for its end.
                streamer = LogStreamer(self.client, job_id, log_path)
                streamer.start()
                try:
                    outcome = self._build(spec, workdir, sink)
                    note(
                        sink,
                        f"outcome: {'built' if outcome.built else outcome.reason}:"
                        f" {outcome.summary}",
                    )
                finally:
                    streamer.stop(flush=not self.stopping.is_set())
            if self.stopping.is_set():
                self._hand_back(job_id)
            else:
                self._report(job_id, outcome, log_path, time.monotonic() - started)
        finally:
            self.current_job = None
            shutil.rmtree(workdir, ignore_errors=True)

    def _build(self, spec: JobSpec, workdir: Path, sink: BinaryIO) -> BuildOutcome:
        try:
            note(sink, f"downloading {spec.sdist_url}")
            sdist = fetch_sdist(spec, workdir / "sdist")
            note(sink, f"sdist verified: sha256 {spec.sdist_sha256}")
        except SdistUnavailable as exc:
            # Often PyPI's CDN has not got the file yet: worth another attempt later.
            return BuildOutcome(
                False, reason=FailureReason.SDIST_UNAVAILABLE, summary=str(exc), transient=True
            )
        except SdistMismatch as exc:
            return BuildOutcome(False, reason=FailureReason.HASH_MISMATCH, summary=str(exc))
        try:
            return self.backend.build(spec, sdist, workdir, sink)
        except Exception as exc:
            sink.write(traceback.format_exc().encode())
            return BuildOutcome(
                False, reason=FailureReason.BUILDER_ERROR, summary=f"builder error: {exc!r}"[:300]
            )

    def _hand_back(self, job_id: int) -> None:
        try:
            self.client.release(job_id)
        except Exception as exc:
            # The reconciler hands it back after builder_timeout instead.
            log.error("job not handed back: %r", exc, extra={"job_id": job_id})
        else:
            log.info("job handed back", extra={"job_id": job_id})

    def _report(self, job_id: int, outcome: BuildOutcome, log_path: Path, seconds: float) -> None:
        wheel_sha256 = None
        if outcome.wheel is not None:
            wheel_sha256 = hashlib.sha256(outcome.wheel.read_bytes()).hexdigest()
        try:
            answer = self.client.report(
                job_id,
                "built" if outcome.built else "failed",
                log_path,
                outcome.reason.value if outcome.reason else None,
                outcome.summary,
                seconds,
                outcome.wheel if outcome.built else None,
                wheel_sha256,
                transient=outcome.transient,
            )
            log.info(
                "job reported",
                extra={
                    "job_id": job_id,
                    "state": answer.get("state"),
                    "seconds": round(seconds, 1),
                },
            )
        except ReportRejected as exc:
            log.error("result rejected by master: %s", exc, extra={"job_id": job_id})


def free_disk(settings: Settings) -> int | None:
    """Bytes free where builds unpack; operators see it before a build fills the disk."""
    work = settings.builder.work_dir
    try:
        work.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(work).free
    except OSError:
        return None


def run_builder(settings: Settings, arch: str) -> int:
    token = settings.builder.token.get_secret_value()
    if not token:
        raise NoBackend("builder.token is not set (ARMWHEELS_BUILDER__TOKEN)")
    name = settings.builder.name or f"{platform.node()}-{arch}"
    backend = choose_backend(settings, arch, name)
    client = MasterClient(settings.builder.master_url, token)
    from armwheels import __version__

    tags = backend.python_tags()
    client.register(arch, backend.name, tags, __version__, free_disk(settings))
    log.info(
        "builder registered",
        extra={
            "builder": name,
            "arch": arch,
            "backend": backend.name,
            "python_tags": ",".join(tags),
        },
    )
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                client.heartbeat(runner.current_job, free_disk(settings))
            except Exception as exc:
                log.warning("heartbeat failed: %r", exc)

    runner = JobRunner(settings, arch, backend, client)
    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    app = make_celery(settings)

    @signals.worker_shutting_down.connect
    def on_shutdown(**_: object) -> None:
        runner.stop()

    @app.task(name=BUILD_TASK)
    def build(job_id: int) -> None:
        runner.run(int(job_id))

    queues = [queue_name(arch, tag) for tag in tags]
    declare_queues(app, queues)
    try:
        app.worker_main(
            [
                "worker",
                "--queues",
                ",".join(queues),
                "--concurrency",
                "1",
                "--pool",
                "solo",
                "--hostname",
                f"{name}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
    finally:
        stop.set()
        backend.close()
        client.close()
    return 0
