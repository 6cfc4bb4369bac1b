"""`armwheels builder`: a Celery worker on its target's queues (build.<target>.<tag>) that
runs one job at a time in each of its build slots (builder.slots)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import queue
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast, get_args

from celery import signals

from builder.backends import Backend, BuildOutcome, FarmFault, cancelled_outcome, note
from builder.client import ClaimNotUnderstood, ClaimRefused, MasterClient, ReportRejected
from builder.identity import BuilderIdentity, NoIdentity, take_identity
from builder.log_stream import LogStreamer
from builder.sdist import SdistMismatch, SdistUnavailable, fetch_sdist
from builder.slots import slot_count
from common.config import Settings
from common.job_spec import JobSpec
from common.messages import BUILD_TASK, declare_queues, make_celery, queue_name
from common.protocol import (
    HEARTBEAT_SECONDS,
    MAX_SUMMARY_CHARS,
    PackageManager,
    ProtocolError,
    ResultForm,
    slot_name,
)
from common.states import FailureReason
from common.tags import publishing_index
from common.version import VERSION

log = logging.getLogger(__name__)

# Idle, the builder beats every HEARTBEAT_SECONDS; while a job runs it beats more often:
# the answer is how a quiet build (no new log to stream) learns that the master took its
# job back (cancelled, requeued).
BUSY_HEARTBEAT_SECONDS = 5.0
# After the farm failed a build (FarmFault) the builder waits before its next job, longer
# after each fault in a row: a builder whose engine is broken does not run through the
# queue handing every job back.
FAULT_PAUSE_SECONDS = 5.0
MAX_FAULT_PAUSE_SECONDS = 300.0


class NoBackend(RuntimeError):
    """No way to build here: the message names what to install."""


def is_arm_host(arch: str) -> bool:
    machine = platform.machine().lower()
    return machine == arch or (arch == "armv7l" and machine in ("armv7l", "armv8l"))


def choose_backend(
    settings: Settings,
    target_name: str,
    identity: BuilderIdentity,
    config_file: Path | None = None,
    slot: int = 0,
) -> Backend:
    target = settings.targets.get(target_name)
    if target is None or not target.enabled:
        raise NoBackend(f"no enabled target {target_name} in the configuration")
    arch = target.arch
    wanted = settings.builder.backend
    farm_index = farm_index_url(settings, target_name)
    if wanted == "auto" and target.kind == "distribution":
        # Its wheels are built in the distribution's own image: a board of another
        # distribution (or float ABI) must not build them natively unless told to.
        wanted = "docker"
    if wanted == "auto":
        wanted = "native" if is_arm_host(arch) else "cross"
        if wanted == "cross" and platform.machine().lower() != "x86_64":
            wanted = "docker"
    if wanted == "native":
        if not is_arm_host(arch):
            raise NoBackend(f"--backend native builds {arch} only on an {arch} host")
        from builder.backends.native import NativeBackend, NativeUnavailable

        try:
            native = NativeBackend(
                settings.builder,
                arch,
                target,
                build_user=settings.builder.build_user,
                config_file=config_file,
                slot=slot,
                index_url=settings.upstream.index_url,
                farm_index_url=farm_index,
            )
        except NativeUnavailable as exc:
            raise NoBackend(str(exc)) from exc
        if not native.python_tags():
            raise NoBackend(f"no interpreter here for {', '.join(target.python_tags)}")
        return native
    from builder.backends.cross import CrossBackend, CrossUnavailable
    from builder.backends.docker import DockerBackend, DockerUnavailable

    indexes = (settings.upstream.index_url, farm_index)
    try:
        container: DockerBackend
        if wanted == "cross":
            try:
                container = CrossBackend(settings.builder, arch, target, identity, *indexes)
            except CrossUnavailable as exc:
                if settings.builder.backend == "cross":
                    raise NoBackend(
                        f"{exc}: build it with `armwheels image build --cross`"
                    ) from exc
                log.info("no cross image: every build emulated", extra={"arch": arch})
                container = DockerBackend(settings.builder, arch, target, identity, *indexes)
        else:
            container = DockerBackend(settings.builder, arch, target, identity, *indexes)
    except DockerUnavailable as exc:
        raise NoBackend(
            f"{exc}; install docker.io and qemu-user-static (apt) and start dockerd,"
            f" then `armwheels image build --target {target_name}`"
        ) from exc
    if not container.python_tags():
        container.close()
        raise NoBackend(
            f"build image {target.image} has none of {', '.join(target.python_tags)}"
            f" (it has: {', '.join(container.interpreters) or 'no CPython'})"
        )
    return container


def farm_index_url(settings: Settings, target_name: str) -> str | None:
    """The farm's own index of the target's wheels, where builders also look for build
    dependencies (None: no master URL is configured)."""
    if not settings.builder.master_url:
        return None
    index = publishing_index(target_name, settings.targets[target_name].policy)
    return f"{settings.builder.master_url}/{index + '/' if index else ''}simple/"


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
        # Why the master took the running job back (None: it did not); see abandon().
        self.taken_back: str | None = None
        # The running job's result is being reported or handed back: too late to abandon.
        self._settled = False
        # Orders abandon() (heartbeat and log threads) against the job changing: a cancel()
        # meant for one job lands before the next job's backend.reset().
        self._lock = threading.Lock()
        # Builds the farm failed in a row (FarmFault), and the first pause after one.
        self.faults_in_a_row = 0
        self.fault_pause = FAULT_PAUSE_SECONDS

    def stop(self) -> None:
        """The builder is stopping (SIGTERM): kill the build under way and hand it back,
        so that no job is left `building` for the reconciler to find later. No lock: this
        may run in a signal handler on the thread that runs the job."""
        self.stopping.set()
        self.backend.cancel()

    def abandon(self, job_id: int, why: str) -> bool:
        """The master says `job_id` is no longer this builder's (cancelled, requeued, given
        to another builder): kill its build, and report nothing of it nor hand it back.
        Acts only on the job running now, once; the builder then takes its next job as
        usual. True when it acted."""
        with self._lock:
            if job_id != self.current_job or self._settled or self.taken_back is not None:
                return False
            self.taken_back = why
            self.backend.cancel()
        log.warning("job abandoned: the master took it back", extra={"job_id": job_id, "why": why})
        return True

    def run(self, job_id: int) -> None:
        if self.stopping.is_set():
            return  # not claimed: the message goes back to the broker with the worker
        try:
            spec = self.client.claim(job_id)
        except ClaimNotUnderstood as exc:
            log.error("job handed back: %s", exc, extra={"job_id": job_id})
            self._hand_back(job_id)
            return
        except ClaimRefused as exc:
            log.info("job not claimed: %s", exc, extra={"job_id": job_id})
            return
        with self._lock:
            self.current_job, self.taken_back, self._settled = job_id, None, False
            self.backend.reset()  # the last job's cancel() must not kill this one
        if self.stopping.is_set():
            self.backend.cancel()  # stop() came while the backend was being reset
        work_root = self.settings.builder.work_dir
        started = time.monotonic()
        fault: FarmFault | None = None
        workdir: Path | None = None
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
            try:
                work_root.mkdir(parents=True, exist_ok=True)
                workdir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=work_root))
                log_path = workdir / "build.log"
                outcome, fault = self._build_logged(spec, workdir, log_path)
            except OSError as exc:
                # The builder's own disk failed it (full, unwritable): not the sdist's doing.
                fault = FarmFault(f"the builder's work directory failed: {exc}")
            with self._lock:
                self._settled = True
            if self.taken_back is not None:
                pass  # not ours: the master refuses any result or hand-back of it
            elif self.stopping.is_set():
                self._hand_back(job_id)
            elif fault is not None:
                log.warning("the farm failed the build: %s", fault, extra={"job_id": job_id})
                self._hand_back(job_id)
            else:
                self._report(job_id, outcome, log_path, time.monotonic() - started)
        finally:
            with self._lock:
                self.current_job = None
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        self.faults_in_a_row = self.faults_in_a_row + 1 if fault is not None else 0
        if fault is not None:
            self.stopping.wait(self.pause_after_fault())

    def _build_logged(
        self, spec: JobSpec, workdir: Path, log_path: Path
    ) -> tuple[BuildOutcome, FarmFault | None]:
        """Build with the log streamed to the master as it grows; the outcome, or the
        farm's fault that stopped the build (the outcome then says nothing)."""
        job_id = spec.job_id
        with log_path.open("wb") as sink:
            note(
                sink,
                f"job {job_id} attempt {spec.attempt}: {spec.project} {spec.version}"
                f" for {spec.arch} {spec.python_tag} ({spec.policy})"
                f" on {self.backend.name} backend",
            )
            # The log goes to the master as it grows; the report waits for its end.
            # A refusal saying the job is no longer ours abandons it at once.
            streamer = LogStreamer(self.client, job_id, log_path, on_taken_back=self.abandon)
            streamer.start()
            try:
                outcome = self._build(spec, workdir, sink)
                note(
                    sink,
                    f"outcome: {'built' if outcome.built else outcome.reason}: {outcome.summary}",
                )
                return outcome, None
            except FarmFault as exc:
                note(sink, f"the farm failed this build ({exc}): the job is handed back")
                return cancelled_outcome(), exc
            finally:
                cut_short = self.stopping.is_set() or self.taken_back is not None
                streamer.stop(flush=not cut_short)

    def pause_after_fault(self) -> float:
        """Seconds to wait before the next job, doubling with each fault in a row."""
        if self.faults_in_a_row == 0:
            return 0.0
        pause = self.fault_pause * 2.0 ** (self.faults_in_a_row - 1)
        return min(pause, MAX_FAULT_PAUSE_SECONDS)

    def _build(self, spec: JobSpec, workdir: Path, sink: BinaryIO) -> BuildOutcome:
        try:
            note(sink, f"downloading {spec.sdist_url}")
            sdist = fetch_sdist(spec, workdir / "sdist")
            note(sink, f"sdist verified: sha256 {spec.sdist_sha256}")
        except SdistUnavailable as exc:
            # A network or server failure is worth another attempt later; a URL that can
            # never be fetched (not http(s), 404, 410) fails the job now, saying why.
            return BuildOutcome(
                False,
                reason=FailureReason.SDIST_UNAVAILABLE,
                summary=str(exc),
                transient=exc.transient,
            )
        except SdistMismatch as exc:
            return BuildOutcome(False, reason=FailureReason.HASH_MISMATCH, summary=str(exc))
        if self.stopping.is_set() or self.taken_back is not None:
            return cancelled_outcome()  # not worth preparing a build that cannot run
        try:
            return self.backend.build(spec, sdist, workdir, sink)
        except FarmFault:
            raise
        except Exception as exc:
            # The builder's own code failed, not the sdist's (that runs in the sandbox):
            # worth another attempt, which the master caps.
            sink.write(traceback.format_exc().encode())
            return BuildOutcome(
                False,
                reason=FailureReason.BUILDER_ERROR,
                summary=f"builder error: {exc!r}"[:300],
                transient=True,
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
        form = ResultForm(
            outcome="built" if outcome.built else "failed",
            reason=outcome.reason,
            summary=outcome.summary[:MAX_SUMMARY_CHARS],
            build_seconds=seconds,
            wheel_sha256=wheel_sha256,
            transient=outcome.transient,
            build_path=outcome.build_path,
            system_packages=" ".join(outcome.system_packages or []) or None,
            build_packages=" ".join(outcome.build_packages or []) or None,
            auto_packages=" ".join(outcome.auto_packages or []) or None,
            package_manager=_manager(outcome.package_manager),
            waiting_for=outcome.waiting_for,
        )
        try:
            answer = self.client.report(
                job_id, form, log_path, outcome.wheel if outcome.built else None
            )
            log.info(
                "job reported",
                extra={"job_id": job_id, "state": answer.state, "seconds": round(seconds, 1)},
            )
        except ReportRejected as exc:
            log.error("result rejected by master: %s", exc, extra={"job_id": job_id})
        except ProtocolError as exc:  # stored (a 2xx), only its answer not understood
            log.warning("result answer not understood: %s", exc, extra={"job_id": job_id})


def _manager(name: str | None) -> PackageManager | None:
    """The build image's package manager as the result names it (None: no packages)."""
    for manager in get_args(PackageManager):
        if manager == name:
            return cast(PackageManager, manager)
    return None


def free_disk(settings: Settings) -> int | None:
    """Bytes free where builds unpack; operators see it before a build fills the disk."""
    work = settings.builder.work_dir
    try:
        work.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(work).free
    except OSError:
        return None


class Heartbeats(threading.Thread):
    """Tells the master the builder lives and which job it runs: every `idle` seconds, and
    every `busy` seconds while a job runs. An answer naming the running job under `stop`
    abandons it (JobRunner.abandon)."""

    def __init__(
        self,
        client: MasterClient,
        runner: JobRunner,
        disk: Callable[[], int | None],
        idle: float = HEARTBEAT_SECONDS,
        busy: float = BUSY_HEARTBEAT_SECONDS,
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.client = client
        self.runner = runner
        self.disk = disk
        self.idle = idle
        self.busy = busy
        self._done = threading.Event()

    def beat(self) -> None:
        """One heartbeat, acted upon; raises what the client raises."""
        job_id = self.runner.current_job
        answer = self.client.heartbeat(job_id, self.disk())
        if job_id is not None and job_id in answer.stop:
            self.runner.abandon(job_id, answer.why or "the master took it back")

    def run(self) -> None:
        last = time.monotonic()
        # Waits at most `busy` at a time, so a job that starts while idle is beaten for soon.
        while not self._done.wait(max(0.0, min(self.busy, self._due(last) - time.monotonic()))):
            if time.monotonic() < self._due(last):
                continue
            last = time.monotonic()
            try:
                self.beat()
            except Exception as exc:
                log.warning("heartbeat failed: %r", exc)

    def _due(self, last: float) -> float:
        return last + (self.busy if self.runner.current_job is not None else self.idle)

    def stop(self) -> None:
        self._done.set()


@dataclass
class BuildSlot:
    """One of the builds a host runs at once: a builder of its own to the master (its own
    registration, heartbeats and claims) with its own backend and instance id, so that
    it kills and cleans up only what is its own."""

    number: int
    name: str
    identity: BuilderIdentity
    backend: Backend
    client: MasterClient
    runner: JobRunner
    heartbeats: Heartbeats

    def close(self) -> None:
        self.heartbeats.stop()
        self.backend.close()
        self.client.close()
        self.identity.release()


def open_slot(
    settings: Settings, target: str, number: int, host_name: str, config_file: Path | None
) -> BuildSlot:
    """Take an instance id, make the backend and register slot `number` with the master;
    what was taken is given back if a later step fails."""
    arch = settings.targets[target].arch
    with contextlib.ExitStack() as undo:
        try:
            identity = take_identity(settings.builder.work_dir, target, settings.builder.name)
        except NoIdentity as exc:
            raise NoBackend(str(exc)) from exc
        undo.callback(identity.release)
        name = slot_name(host_name or identity.name, number)
        identity.name = name
        backend = choose_backend(settings, target, identity, config_file, number)
        undo.callback(backend.close)
        client = MasterClient(
            settings.builder.master_url, settings.builder.token.get_secret_value(), slot=number
        )
        undo.callback(client.close)
        tags = backend.python_tags()
        client.register(arch, target, backend.name, tags, VERSION, free_disk(settings))
        undo.pop_all()
    log.info(
        "builder registered",
        extra={
            "builder": name,
            "slot": number,
            "target": target,
            "arch": arch,
            "backend": backend.name,
            "python_tags": ",".join(tags),
        },
    )
    runner = JobRunner(settings, arch, backend, client)
    heartbeats = Heartbeats(client, runner, lambda: free_disk(settings))
    heartbeats.name = f"heartbeat-{number}"
    return BuildSlot(number, name, identity, backend, client, runner, heartbeats)


def run_builder(settings: Settings, target: str, config_file: Path | None = None) -> int:
    """Build the jobs of one configured target (Settings.builder_target chooses it)."""
    if not settings.builder.token.get_secret_value():
        raise NoBackend("builder.token is not set (ARMWHEELS_BUILDER__TOKEN)")
    if target not in settings.enabled_targets():
        raise NoBackend(f"no enabled target {target} in the configuration")
    count = slot_count(settings.builder)
    slots: list[BuildSlot] = []
    try:
        for number in range(count):
            slots.append(
                open_slot(settings, target, number, slots[0].name if slots else "", config_file)
            )
        for slot in slots:
            slot.heartbeats.start()
        return _work(settings, target, slots)
    finally:
        for slot in slots:
            slot.close()


def _work(settings: Settings, target: str, slots: list[BuildSlot]) -> int:
    """The Celery worker: as many tasks at once as there are slots, each run by a free
    slot's runner."""
    app = make_celery(settings)
    free: queue.SimpleQueue[JobRunner] = queue.SimpleQueue()
    for slot in slots:
        free.put(slot.runner)

    @signals.worker_shutting_down.connect
    def on_shutdown(**_: object) -> None:
        for slot in slots:
            slot.runner.stop()

    @app.task(name=BUILD_TASK)
    def build(job_id: int) -> None:
        # Celery runs at most len(slots) tasks at once: one runner is always free.
        runner = free.get()
        try:
            runner.run(int(job_id))
        finally:
            free.put(runner)

    queues = [queue_name(target, tag) for tag in slots[0].backend.python_tags()]
    declare_queues(app, queues)
    log.info("builder at work", extra={"target": target, "slots": len(slots)})
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(len(slots)),
            "--pool",
            "solo" if len(slots) == 1 else "threads",
            "--hostname",
            f"{slots[0].name}@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
    return 0
