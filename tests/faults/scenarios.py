"""The faults, each injected into a running farm while its jobs build, then checked:
every job ends as in the undisturbed run, no wheel is published twice or in part, and
the database, files and static index agree (check.fsck_findings: `armwheels fsck`).

Each scenario returns its row of the fault table; tests/faults/test_faults.py asserts
them and benchmarks/faults.py prints them.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kombu import Queue
from sqlalchemy import func, select, text

from common.config import load_settings
from common.messages import BUILD_TASK, broker_priority, make_celery, queue_name
from common.models import Builder, BuildJob, IndexChange
from common.states import JobState
from tests.faults.check import FaultResult, Outcome, compare, outcomes
from tests.faults.farm import Batch, Farm
from tests.faults.proxy import DROP, PASS, STALL
from tests.servers import wait_until
from tests.test_native_backend import ARCH, TAG

# Long enough for a build here (about 20 s, two at once on two cores) and its retries.
SETTLE = 240.0


def baseline(farm: Farm) -> Outcome:
    """The undisturbed run: how the suite's sdist ends when nothing goes wrong."""
    batch = farm.add_batch("calm", 1)
    farm.wait_settled(batch.jobs, SETTLE)
    with farm.session() as session:
        [ended] = outcomes(session, batch.jobs).values()
    assert ended.state == "built", ended
    return ended


def _result(farm: Farm, fault: str, expected: Outcome, batch: Batch, injected: int) -> FaultResult:
    farm.wait_settled(batch.jobs, SETTLE)
    _static_caught_up(farm)
    assert farm.factory is not None
    result = FaultResult(fault, injected)
    return compare(result, expected, farm.factory, farm.data_dir, batch.jobs, batch.projects)


def _static_caught_up(farm: Farm) -> None:
    """The master's loop brings the static index up to date within a round."""

    def current() -> bool:
        with farm.session() as session:
            serial = session.scalar(select(func.max(IndexChange.id))) or 0
        try:
            shown = int((farm.data_dir / "simple" / ".serial").read_text())
        except (OSError, ValueError):
            return False
        return shown >= serial

    wait_until(current, 30, "the static index to catch up", 0.2)


def _job_pids(farm: Farm, job_id: int) -> list[int]:
    """The processes of the build of `job_id` (its temporary folder is job-<id>-*)."""
    marker = f"/job-{job_id}-".encode()
    found = []
    for pid in farm.build_pids():
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
    return found


def _building(farm: Farm, job_id: int) -> str:
    """Wait until the job's build runs on a builder; that builder's name."""
    wait_until(lambda: bool(_job_pids(farm, job_id)), 120, f"job {job_id} to build", 0.05)
    name = farm.builder_of(job_id)
    assert name is not None
    return name


def kill_builder_mid_build(farm: Farm, expected: Outcome) -> FaultResult:
    """kill -9 of the builder while its build runs; it starts again, registers, and the
    master hands the job back (the attempt counted); the build dies with its builder."""
    batch = farm.add_batch("killed-build", 1)
    job = batch.jobs[0]
    name = _building(farm, job)
    time.sleep(1.0)  # well into the build: its venv is being made
    farm.builders[name].kill9()
    wait_until(lambda: not _job_pids(farm, job), 10, "the build to die with its builder", 0.1)
    farm.start_builder(name)
    return _result(farm, "kill -9 builder mid-build", expected, batch, 1)


def kill_builder_mid_upload(farm: Farm, expected: Outcome) -> FaultResult:
    """kill -9 of the builder while the master receives its result: the master has part
    of the request; the builder's connection then resets."""
    batch = farm.add_batch("killed-upload", 1)
    for proxy in farm.proxies.values():
        proxy.hold_uploads(after=4096, job=batch.jobs[0])
    try:
        wait_until(lambda: any(p.held.is_set() for p in farm.proxies.values()), SETTLE, "an upload")
        [name] = [n for n, p in farm.proxies.items() if p.held.is_set()]
        farm.builders[name].kill9()
        farm.proxies[name].reset_held()
    finally:
        for proxy in farm.proxies.values():
            proxy.release_uploads()
    farm.start_builder(name)
    return _result(farm, "kill -9 builder mid-upload", expected, batch, 1)


@contextlib.contextmanager
def _row_locked(farm: Farm, builder: str) -> Iterator[Callable[[], bool]]:
    """Hold the builder's row: the master's transaction storing the result waits on it
    after the wheel is written, before its commit. Yields a check that it waits."""
    assert farm.factory is not None
    engine = farm.factory.kw["bind"]
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(
            select(Builder.id).where(Builder.name == builder).with_for_update()
        ).all()

        def result_waits() -> bool:
            with engine.connect() as probe:
                waiting = probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query ILIKE '%current_job_id%'"
                    )
                ).scalar()
            return bool(waiting)

        try:
            yield result_waits
        finally:
            transaction.rollback()


def kill_master_mid_upload(farm: Farm, expected: Outcome) -> FaultResult:
    """kill -9 of the master with a result half stored: the wheel written into its file
    tree, the database transaction not committed. The builder sends the result again
    to the restarted master."""
    assert farm.master is not None
    batch = farm.add_batch("killed-master", 1)
    job, project = batch.jobs[0], batch.projects[0]
    name = _building(farm, job)
    repaired = f"job-{job}-*/out/wheelhouse/*.whl"
    wait_until(lambda: any(farm.work_root.glob(repaired)), SETTLE, "the repaired wheel", 0.05)
    published = farm.data_dir / "files" / project
    with _row_locked(farm, name) as result_waits:
        wait_until(lambda: published.is_dir() and any(published.glob("*.whl")), 60, "the wheel")
        wait_until(result_waits, 30, "the result's commit to wait", 0.05)
        farm.master.kill9()
    farm.start_master()
    return _result(farm, "kill -9 master mid-upload", expected, batch, 1)


def kill_master_mid_static_write(farm: Farm, expected: Outcome) -> FaultResult:
    """kill -9 of the master while it updates the static index for a wheel it has just
    committed: the suite holds the tree's lock, so the update waits inside it. The
    restarted master's loop brings the tree up to date."""
    assert farm.master is not None
    batch = farm.add_batch("killed-static", 1)
    job = batch.jobs[0]
    _building(farm, job)  # dispatched: the master's loop waits on the lock from now on too
    lock = farm.data_dir / "simple" / ".lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            farm.wait_state(job, JobState.BUILT, SETTLE)
            time.sleep(0.5)  # the request goes on from its commit to the tree's lock
            farm.master.kill9()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    farm.start_master()
    return _result(farm, "kill -9 master mid-static-index write", expected, batch, 1)


def _states(farm: Farm, batch: Batch) -> list[JobState]:
    return [job.state for job in farm.states(batch.jobs).values()]


def redis_flushed_and_restarted(farm: Farm) -> Batch:
    """Redis flushed while two jobs build and one waits in it, then restarted (it keeps
    nothing on disk) while the two still build. The waiting job's message is gone: it
    stays queued until master.requeue_after (60 s here), then goes round again; the other
    scenarios run meanwhile, and redis_settled() checks the batch."""
    batch = farm.add_batch("redis", 3)

    def two_building_one_queued() -> bool:
        states = _states(farm, batch)
        return states.count(JobState.BUILDING) == 2 and states.count(JobState.QUEUED) == 1

    wait_until(two_building_one_queued, SETTLE, "two jobs building and one queued", 0.05)
    farm.redis.flush()
    time.sleep(1)
    farm.redis.stop()
    time.sleep(1)
    farm.redis.start()
    return batch


def postgres_restarted_mid_dispatch(farm: Farm, expected: Outcome) -> FaultResult:
    """PostgreSQL stopped as a crash would stop it while jobs are dispatched and claimed,
    started again 2 s later (with crash recovery)."""
    batch = farm.add_batch("postgres", 2)
    # Sent, or already claimed: a builder may claim a job before its queued mark commits.
    dispatched = (JobState.QUEUED, JobState.BUILDING)
    wait_until(lambda: any(s in dispatched for s in _states(farm, batch)), 30, "a dispatch", 0.02)
    farm.postgres.stop("immediate")
    time.sleep(2)
    farm.postgres.start()
    return _result(farm, "PostgreSQL restarted mid-dispatch", expected, batch, 1)


def network_stalled_and_dropped(farm: Farm, expected: Outcome) -> FaultResult:
    """The proxies between builders and master stall every connection for 8 s while a job
    builds, then reset every connection for 4 s; then its upload is cut part way."""
    batch = farm.add_batch("network", 1)
    _building(farm, batch.jobs[0])
    proxies = list(farm.proxies.values())
    for mode, seconds in ((STALL, 8.0), (DROP, 4.0)):
        for proxy in proxies:
            proxy.set_mode(mode)
        time.sleep(seconds)
        for proxy in proxies:
            proxy.set_mode(PASS)
    for proxy in proxies:
        proxy.hold_uploads(after=4096, job=batch.jobs[0])
    try:
        wait_until(lambda: any(p.held.is_set() for p in proxies), SETTLE, "an upload")
        for proxy in proxies:
            if proxy.held.is_set():
                proxy.set_mode(DROP)
                time.sleep(1)
                proxy.set_mode(PASS)
    finally:
        for proxy in proxies:
            proxy.release_uploads()
    return _result(farm, "builder-master link stalled, dropped", expected, batch, 3)


def two_builders_claim_at_once(farm: Farm, expected: Outcome) -> FaultResult:
    """Two messages for one job reach the two idle builders together: both claim it."""
    batch = farm.add_batch("twice", 1)
    job = batch.jobs[0]
    # Queued by hand: the dispatcher sends nothing for it; its two messages go out here.
    with farm.session() as session, session.begin():
        found = session.get(BuildJob, job)
        assert found is not None
        found.state = JobState.QUEUED
    settings = load_settings(None, broker={"url": farm.redis.url})
    app = make_celery(settings)  # the farm's wiring; its configuration names ARM queues
    queue = queue_name(ARCH, TAG)
    app.conf.task_queues = [*app.conf.task_queues, Queue(queue)]
    with app.producer_or_acquire() as producer:
        for _ in range(2):
            app.send_task(
                BUILD_TASK, args=[job], queue=queue, priority=broker_priority(5), producer=producer
            )
    result = _result(farm, "two builders claim one job at once", expected, batch, 1)
    assert farm.master is not None
    claims = farm.master.log.read_text().count(f'msg="job claimed" job_id={job} ')
    refused = sum(
        node.log.read_text().count(f"job not claimed: job {job} is")
        for node in farm.builders.values()
    )
    if (claims, refused) != (1, 1):
        result.problems.append(f"job {job}: {claims} claims, {refused} refused")
    return result


# --- full disks ------------------------------------------------------------------------


def fill(folder: Path) -> Path:
    """Fill the small file system mounted at `folder` to its last block; the filler."""
    assert folder.is_mount(), f"{folder} is no file system of the farm's own"
    filler = folder / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False
    )
    return filler


def master_disk_full(farm: Farm, expected: Outcome) -> FaultResult:
    """The master's data disk fills while a job builds: its live log and its result are
    refused (503) and sent again; once the disk has room, the result is stored."""
    batch = farm.add_batch("master-disk", 1)
    job = batch.jobs[0]
    _building(farm, job)
    filler = fill(farm.data_dir)
    refused = f"route=/api/v1/jobs/{job}/result"
    try:
        wait_until(lambda: _master_said(farm, refused), SETTLE, "the result to be refused")
    finally:
        filler.unlink()
    return _result(farm, "master data disk full, then freed", expected, batch, 1)


def builder_disk_full(farm: Farm, expected: Outcome) -> FaultResult:
    """The builders' work disk is full when a job comes: the builder cannot even write its
    log, hands the job back as the farm's fault and pauses; once the disk has room, the
    job builds."""
    filler = fill(farm.work_root)
    batch = farm.add_batch("builder-disk", 1)
    handed_back = f'msg="job handed back" job_id={batch.jobs[0]} '
    try:
        wait_until(lambda: _master_said(farm, handed_back), SETTLE, "the job handed back")
    finally:
        filler.unlink()
    return _result(farm, "builder work disk full, then freed", expected, batch, 1)


def kill_two_slot_builder_mid_builds(farm: Farm, expected: Outcome) -> FaultResult:
    """A builder host with two build slots (builder.slots = 2) builds two jobs at once,
    one per slot, each slot a builder of its own to the master. kill -9 of the host with
    both builds under way: both builds die with it, and on its restart each slot hands
    back its own job (the attempt counted) and both are built again. The other builders
    are stopped first, so that the two jobs can only go to the slots."""
    for node in farm.builders.values():
        node.stop()
    host = "slots"
    farm.add_builder(host, slots=2)
    batch = farm.add_batch("slotted", 2, build_seconds=8)

    def both_building() -> bool:
        owners = {farm.builder_of(job) for job in batch.jobs}
        return owners == {host, f"{host}#1"} and all(_job_pids(farm, j) for j in batch.jobs)

    wait_until(both_building, 120, "one job building in each slot", 0.1)
    farm.builders[host].kill9()
    wait_until(
        lambda: not any(_job_pids(farm, j) for j in batch.jobs),
        10,
        "the builds to die with their host",
        0.1,
    )
    farm.start_builder(host)
    return _result(farm, SLOTS, expected, batch, 2)


def _master_said(farm: Farm, text: str) -> bool:
    return farm.master is not None and farm.master.said(text)


# --- the whole run -----------------------------------------------------------------------

Scenario = Callable[[Farm, Outcome], FaultResult]
# Before the Redis fault (both builders idle), during its wait, after it settled.
FIRST: list[tuple[str, Scenario]] = [
    ("two builders claim one job at once", two_builders_claim_at_once)
]
MEANWHILE: list[tuple[str, Scenario]] = [
    ("kill -9 builder mid-build", kill_builder_mid_build),
    ("kill -9 builder mid-upload", kill_builder_mid_upload),
    ("kill -9 master mid-upload", kill_master_mid_upload),
    ("kill -9 master mid-static-index write", kill_master_mid_static_write),
    ("builder-master link stalled, dropped", network_stalled_and_dropped),
    ("PostgreSQL restarted mid-dispatch", postgres_restarted_mid_dispatch),
]
DISKS: list[tuple[str, Scenario]] = [
    ("master data disk full, then freed", master_disk_full),
    ("builder work disk full, then freed", builder_disk_full),
]
REDIS = "Redis flushed, then restarted"
SLOTS = "kill -9 of a two-slot builder mid-builds"


def run_scenarios(farm: Farm) -> list[FaultResult]:
    """Every fault once, in an order that lets the Redis fault's wait overlap the others;
    a scenario that fails to run is a row that did not survive, and the run goes on."""
    expected = baseline(farm)
    results = [_guarded(name, scenario, farm, expected) for name, scenario in FIRST]
    try:
        redis: Batch | FaultResult = redis_flushed_and_restarted(farm)
    except Exception as exc:
        redis = FaultResult(REDIS, problems=[f"did not run: {exc!r}"])
    results += [_guarded(name, scenario, farm, expected) for name, scenario in MEANWHILE]
    if isinstance(redis, Batch):
        batch = redis
        redis = _guarded(REDIS, lambda f, e: _result(f, REDIS, e, batch, 2), farm, expected)
    results.append(redis)
    for name, scenario in DISKS:
        if farm.small_disks:
            results.append(_guarded(name, scenario, farm, expected))
        else:
            results.append(FaultResult(name, skipped="no tmpfs could be mounted here"))
    # Last: it stops the farm's other builders.
    results.append(_guarded(SLOTS, kill_two_slot_builder_mid_builds, farm, expected))
    return results


def _guarded(name: str, scenario: Scenario, farm: Farm, expected: Outcome) -> FaultResult:
    try:
        return scenario(farm, expected)
    except Exception as exc:
        return FaultResult(name, problems=[f"did not run to its end: {exc!r}"])
