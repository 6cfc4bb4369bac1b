"""Two masters and two builders racing over the same jobs on one PostgreSQL database.

Two real master HTTP server processes serve one database and one data directory. Two
builders (threads, each with a client per master, each request sent to either master)
and the reconciler (a thread with sessions of its own) are released together by a
barrier, round after round: claims of one job, results (built, failed, failed for a
transient reason; at times the same result sent to both masters at once, as a builder
retrying does; for a stable-ABI release the one wheel both of its jobs build), releases,
heartbeats naming a job or none (a job claimed longer ago than the grace and not named
goes back), registrations (a builder that registers again gives up what it held) and,
for a builder made to look silent, the reconciler's hand-backs all collide. Then the
builders are gone, the reconciler takes back what they held, every job still waiting is
built, and the database, the files and the answers must agree: each job ended, once, in
one final state its fields agree with; it was built at most once; its attempts are the
claims that counted; no wheel was published twice or written over; no master answered
500 (or logged an error) and every refusal was a JSON 4xx.

Races found by it are pinned by the deterministic tests at the end.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, TargetSettings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.models import Builder, BuildJob, OutputFile, Release, SourceFile
from common.protocol import HEARTBEAT_SECONDS, LOG_PART, WHEEL_PART, ResultForm
from common.states import FINAL_STATES, FailureReason, JobState, SkipReason, TokenRole
from master.auth import create_token
from master.builds import jobs
from master.builds.build_plan import create_jobs
from master.builds.reconciler import reconcile
from master.index.fsck import SETTLE_SECONDS, check
from master.index.uploads import AlreadyServed, accept_wheel
from master.pypi.releases import get_or_create_project
from master.storage import Storage, file_sha256
from master.web.app import create_app
from master.web.builder_api import HAND_BACK_GRACE
from tests.conftest import _postgres_database
from tests.seed import add_builder
from tests.servers import http_master, wait_until
from tests.wheels import make_wheel

pytestmark = pytest.mark.postgres

ROUNDS = 300
MAX_ATTEMPTS = 3
RELEASES = 30  # the even ones build one stable-ABI wheel that serves both targets
TAGS = ("cp311", "cp312")
PLATFORM = "manylinux_2_17_aarch64.manylinux2014_aarch64"
# The least builder timeout there is: a builder that sent no claim, heartbeat or
# registration for this long has gone, and the reconciler hands its jobs back.
BUILDER_TIMEOUT = HEARTBEAT_SECONDS
# How long ago a builder that goes quiet for a round was last heard of: past the timeout.
SILENT_SINCE = timedelta(seconds=2 * BUILDER_TIMEOUT)
# How long ago an unreported job is made to have been claimed: past the grace.
CLAIMED_LONG_AGO = 2 * HAND_BACK_GRACE
SEED = 16
# The race ends with this many jobs left (or after ROUNDS): some held by the builders,
# which the final reconciliation hands back, and some waiting, which the drain builds.
LEFT_TO_DRAIN = 6


@dataclass(frozen=True)
class JobInfo:
    id: int
    project: str
    python_tag: str
    abi3: bool

    def wheel_name(self) -> str:
        tags = "cp37-abi3" if self.abi3 else f"{self.python_tag}-{self.python_tag}"
        return f"{self.project}-1.0-{tags}-{PLATFORM}.whl"


# What a builder asks: a claim, a result (built, failed, failed for a transient reason),
# a release, a heartbeat (naming a job, or none), or to be registered again.
Kind = Literal["claim", "built", "failed", "transient", "release", "beat", "register"]
RESULTS: tuple[Kind, ...] = ("built", "failed", "transient")


@dataclass(frozen=True)
class Call:
    """One request of a builder, about `job`, to master number `master`."""

    kind: Kind
    job: int | None
    master: int


@dataclass
class Answer:
    round: int
    builder: str
    call: Call
    status: int
    body: Any
    wheel: tuple[str, str] | None = None  # the filename and sha256 a built result sent


def _clean(response: httpx.Response) -> tuple[bool, Any]:
    """Whether an answer is a success or a 4xx whose JSON body says why; its body."""
    try:
        body = response.json()
    except ValueError:
        return False, response.text[:300]
    if response.status_code == 200:
        return True, body
    refused = 400 <= response.status_code < 500
    return refused and isinstance(body, dict) and isinstance(body.get("error"), str), body


class RacingBuilder:
    """A builder: a client per master, the jobs it believes it holds (what the answers
    told it), this round's calls, and every answer it got."""

    def __init__(self, name: str, secret: str, urls: list[str], jobs: dict[int, JobInfo]):
        auth = {"Authorization": f"Bearer {secret}"}
        self.name = name
        self.clients = [httpx.Client(base_url=url, headers=auth, timeout=60) for url in urls]
        self.jobs = jobs
        self.id = 0
        self.round = 0
        self.held: set[int] = set()
        self.plan: list[Call] = []
        self.answers: list[Answer] = []
        self.unclean: list[str] = []
        self._pool = ThreadPoolExecutor(2)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown()
        for client in self.clients:
            client.close()

    def play(self) -> None:
        """This round's calls, all at once (two of them: the same result to both masters)."""
        wheel = self._wheel()
        list(self._pool.map(lambda call: self.send(call, wheel), self.plan))

    def _wheel(self) -> bytes | None:
        """The wheel this round's build made (one per round: twin results send the same)."""
        built = [call for call in self.plan if call.kind == "built"]
        if not built or built[0].job is None:
            return None
        info = self.jobs[built[0].job]
        # Every build's bytes differ, as real builds' do (time stamps).
        stamp = f"{self.name} round {self.round}\n".encode()
        return make_wheel(info.wheel_name(), modules=(info.project,), extra={"build.txt": stamp})

    def send(self, call: Call, wheel: bytes | None = None) -> Answer:
        client = self.clients[call.master]
        sent: tuple[str, str] | None = None
        if call.kind == "claim":
            response = client.post(f"/api/v1/jobs/{call.job}/claim")
        elif call.kind == "release":
            response = client.post(f"/api/v1/jobs/{call.job}/release")
        elif call.kind == "beat":
            response = client.post("/api/v1/builders/heartbeat", json={"job_id": call.job})
        elif call.kind == "register":
            registration = {"arch": "aarch64", "backend": "docker", "python_tags": list(TAGS)}
            response = client.post("/api/v1/builders/register", json=registration)
        else:
            files: dict[str, tuple[str, bytes]] = {LOG_PART: ("build.log", b"building\n")}
            if call.kind == "built":
                assert wheel is not None and call.job is not None
                filename = self.jobs[call.job].wheel_name()
                sent = (filename, hashlib.sha256(wheel).hexdigest())
                form = ResultForm(outcome="built", summary="ok", wheel_sha256=sent[1])
                files[WHEEL_PART] = (filename, wheel)
            elif call.kind == "transient":
                form = ResultForm(outcome="failed", reason=FailureReason.NETWORK, transient=True)
            else:
                form = ResultForm(outcome="failed", reason=FailureReason.COMPILE_ERROR)
            response = client.post(
                f"/api/v1/jobs/{call.job}/result", data=form.fields(), files=files
            )
        clean, body = _clean(response)
        answer = Answer(self.round, self.name, call, response.status_code, body, sent)
        with self._lock:
            if not clean:
                self.unclean.append(f"{call}: {response.status_code} {body}")
            self.answers.append(answer)
            self._learn(answer)
        return answer

    def _learn(self, answer: Answer) -> None:
        """What the builder knows from an answer about the jobs it holds."""
        call, body = answer.call, answer.body
        if call.kind == "register" and answer.status == 200:
            self.id = body["builder_id"]
            self.held.clear()
        elif call.kind == "claim" and answer.status == 200:
            assert call.job is not None
            self.held.add(call.job)
        elif call.kind == "beat" and answer.status == 200:
            self.held -= {*body["handed_back"], *body["stop"]}
        elif call.kind in (*RESULTS, "release"):
            # Done with it, or told it is no longer its own.
            self.held.discard(call.job or 0)


@dataclass
class Race:
    urls: list[str]
    factory: sessionmaker[Session]
    settings: Settings
    jobs: dict[int, JobInfo]
    builders: list[RacingBuilder]
    releases: list[list[int]]  # job ids per release
    reconciled: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # how long the rounds took
    errors: list[BaseException] = field(default_factory=list)


def _add_releases(session: Session, settings: Settings, count: int) -> dict[int, JobInfo]:
    """`count` releases with a job per CPython of TAGS each, through the build plan."""
    targets = {"aarch64": settings.targets["aarch64"]}
    infos = {}
    for number in range(count):
        project = get_or_create_project(session, f"race{number}")
        release = Release(project=project, version="1.0", upstream_files=[])
        source = SourceFile(
            release=release,
            filename=f"race{number}-1.0.tar.gz",
            url=f"http://127.0.0.1:1/race{number}-1.0.tar.gz",
            sha256="0" * 64,
            size=10,
        )
        session.add_all([release, source])
        session.flush()
        for job in create_jobs(session, release, source, targets):
            infos[job.id] = JobInfo(job.id, project.name, job.python_tag, number % 2 == 0)
    assert len(infos) == count * len(TAGS)
    return infos


@contextmanager
def _database(tmp_path: Path) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """A fresh PostgreSQL database, migrated, with settings building for TAGS on aarch64."""
    with contextmanager(_postgres_database)() as url:
        settings = load_settings(
            None,
            database={"url": url},
            master={
                "data_dir": tmp_path / "data",
                "max_attempts": MAX_ATTEMPTS,
                "builder_timeout": BUILDER_TIMEOUT,
            },
            targets={
                "aarch64": TargetSettings(
                    arch="aarch64",
                    image="armwheels/build-aarch64:bookworm",
                    python_tags=list(TAGS),
                    policy="manylinux2014_aarch64",
                )
            },
        )
        engine = make_engine(url)
        try:
            upgrade(engine)
            yield settings, make_sessionmaker(engine)
        finally:
            engine.dispose()


@contextmanager
def _race(tmp_path: Path) -> Iterator[Race]:
    """Releases and builder tokens on a fresh database, two masters serving it (one HTTP
    process each), and the two builders, registered."""
    with ExitStack() as stack:
        settings, factory = stack.enter_context(_database(tmp_path))
        with transaction(factory) as session:
            jobs = _add_releases(session, settings, RELEASES)
            secrets = {name: create_token(session, name, TokenRole.BUILDER) for name in "ab"}
        options = {"max_attempts": MAX_ATTEMPTS, "builder_timeout": BUILDER_TIMEOUT}
        masters = [http_master(settings, tmp_path, 1, f"master-{n}", options) for n in range(2)]
        with ThreadPoolExecutor(2) as starting:  # both start at once: half the wait
            urls = list(starting.map(stack.enter_context, masters))
        builders = [RacingBuilder(name, secrets[name], urls, jobs) for name in "ab"]
        for builder in builders:
            stack.callback(builder.close)
            assert builder.send(Call("register", None, 0)).status == 200
        by_release: dict[str, list[int]] = defaultdict(list)
        for info in jobs.values():
            by_release[info.project].append(info.id)
        yield Race(urls, factory, settings, jobs, builders, list(by_release.values()))


def _plan(rng: random.Random, race: Race, hot: list[int]) -> None:
    """Each builder's calls for the next round, on the jobs of the `hot` release mostly."""
    target = rng.choice(hot)
    for builder in race.builders:
        master = rng.randrange(2)
        held = sorted(builder.held)
        mine = [job for job in held if job in hot] or held
        choices: dict[Kind, float] = {"claim": 3.0, "beat": 0.6, "register": 0.25}
        if mine:
            choices |= {"built": 3.0, "transient": 0.6, "failed": 0.4, "release": 0.5}
            choices["claim"] = 1.0 if len(held) < 2 else 0.2
            choices["beat"] = 1.0
        kind: Kind = rng.choices(list(choices), weights=list(choices.values()))[0]
        if kind == "claim":
            # Half the time both builders go for the same job.
            job = target if rng.random() < 0.5 else rng.choice(hot)
            builder.plan = [Call("claim", job, master)]
        elif kind in RESULTS:
            job = rng.choice(mine)
            builder.plan = [Call(kind, job, master)]
            if rng.random() < 0.3:  # a retry of the same result, sent to the other master
                builder.plan.append(Call(kind, job, 1 - master))
        elif kind == "release":
            builder.plan = [Call("release", rng.choice(mine), master)]
        elif kind == "beat":
            named = rng.choice([None, *held])
            builder.plan = [Call("beat", named, master)]
            unreported = [job for job in held if job != named]
            if unreported and rng.random() < 0.6:
                _claimed_long_ago(race.factory, builder, unreported)
        else:
            builder.plan = [Call("register", None, master)]
        if held and rng.random() < 0.15:
            # Quiet for a while, as far as the master knows: the reconciler takes its jobs
            # back in this round unless the builder's own call comes first.
            _silent(race.factory, builder)


def _claimed_long_ago(
    factory: sessionmaker[Session], builder: RacingBuilder, ids: list[int]
) -> None:
    """Jobs still building on `builder` look claimed before the heartbeat's grace."""
    with transaction(factory) as session:
        session.execute(
            update(BuildJob)
            .where(
                BuildJob.id.in_(ids),
                BuildJob.state == JobState.BUILDING,
                BuildJob.builder_id == builder.id,
            )
            .values(started_at=datetime.now(UTC) - CLAIMED_LONG_AGO)
        )


def _silent(factory: sessionmaker[Session], builder: RacingBuilder) -> None:
    """The builder was last heard of longer ago than the builder timeout."""
    with transaction(factory) as session:
        session.execute(
            update(Builder)
            .where(Builder.id == builder.id)
            .values(last_seen_at=datetime.now(UTC) - SILENT_SINCE)
        )


def _next_release(rng: random.Random, race: Race, hot: list[int]) -> list[int]:
    """The jobs of the release to race over next: `hot` again while a job of it waits or
    builds, mostly; another such release; none when only LEFT_TO_DRAIN jobs are left."""
    with race.factory() as session:
        active = set(
            session.scalars(select(BuildJob.id).where(BuildJob.state.not_in(FINAL_STATES)))
        )
    if len(active) <= LEFT_TO_DRAIN:
        return []
    if active.intersection(hot) and rng.random() < 0.8:
        return hot
    waiting = [jobs for jobs in race.releases if active.intersection(jobs)]
    return rng.choice(waiting) if waiting else []


def _run_rounds(race: Race) -> None:
    """ROUNDS rounds: the planner, the builders and the reconciler meet at `start`, the
    calls and a reconciliation go out together, and all meet again at `done`."""
    rng = random.Random(SEED)
    parties = len(race.builders) + 2
    start, done = threading.Barrier(parties), threading.Barrier(parties)
    stop = threading.Event()

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while True:
                    start.wait()
                    if stop.is_set():
                        return
                    work()
                    done.wait()
            except threading.BrokenBarrierError:
                pass
            except BaseException as exc:
                race.errors.append(exc)
                start.abort()
                done.abort()

        return run

    def reconciler() -> None:
        with transaction(race.factory) as session:
            outcome = reconcile(session, race.settings)
        race.reconciled.update(
            handed_back=outcome.handed_back, lost=outcome.lost, requeued=outcome.requeued
        )

    threads = [
        threading.Thread(target=guarded(builder.play), name=builder.name)
        for builder in race.builders
    ]
    threads.append(threading.Thread(target=guarded(reconciler), name="reconciler"))
    for thread in threads:
        thread.start()
    hot: list[int] = []
    began = time.monotonic()
    try:
        for number in range(1, ROUNDS + 1):
            hot = _next_release(rng, race, hot)
            if not hot:
                break  # the drain ends the jobs left
            _plan(rng, race, hot)
            for builder in race.builders:
                builder.round = number
            start.wait()
            done.wait()
        race.seconds = time.monotonic() - began
        stop.set()
        start.wait()
    except threading.BrokenBarrierError:
        pass
    finally:
        stop.set()
        start.abort()
        for thread in threads:
            thread.join(60)
    if race.errors:
        raise race.errors[0]


def _drain(race: Race) -> None:
    """The race is over: the builders are gone (the reconciler hands back what they
    held), then one builder registers again and builds every job still waiting."""
    later = datetime.now(UTC) + timedelta(hours=1)
    with transaction(race.factory) as session:
        outcome = reconcile(session, race.settings, now=later)
    race.reconciled.update(final_handed_back=outcome.handed_back, final_lost=outcome.lost)
    with race.factory() as session:
        building = session.scalars(
            select(BuildJob.id).where(BuildJob.state == JobState.BUILDING)
        ).all()
    assert not building, f"jobs stuck in building after the final reconciliation: {building}"
    builder = race.builders[0]
    builder.round = ROUNDS + 1
    builder.send(Call("register", None, 0))
    for _ in range(MAX_ATTEMPTS + 1):
        with race.factory() as session:
            waiting = session.scalars(
                select(BuildJob.id).where(BuildJob.state == JobState.PENDING).order_by(BuildJob.id)
            ).all()
        for job in waiting:
            if builder.send(Call("claim", job, 0)).status == 200:
                builder.plan = [Call("built", job, 1)]
                builder.play()


def _story(race: Race, answers: list[Answer]) -> str:
    """What happened, to show that it raced: the answers of each kind and status, the
    hand-backs, and the results sent twice at once or for both jobs of one release."""
    tally = Counter(f"{answer.call.kind} {answer.status}" for answer in answers)
    beats = [
        answer.body for answer in answers if answer.call.kind == "beat" and answer.status == 200
    ]
    results: dict[tuple[int, int | None], list[Answer]] = defaultdict(list)
    by_release: dict[tuple[int, str], set[int]] = defaultdict(set)
    for answer in answers:
        if answer.call.kind == "built" and answer.call.job is not None:
            results[(answer.round, answer.call.job)].append(answer)
            by_release[(answer.round, race.jobs[answer.call.job].project)].add(answer.call.job)
    rounds = max((answer.round for answer in answers if answer.round <= ROUNDS), default=0)
    return "\n".join(
        [
            f"rounds: {rounds} in {race.seconds:.1f} s",
            f"answers: {dict(sorted(tally.items()))}",
            f"reconciler: {dict(race.reconciled)}",
            f"heartbeats: {sum(len(body['handed_back']) for body in beats)} jobs handed back,"
            f" {sum(len(body['stop']) for body in beats)} builds told to stop",
            "built results sent to both masters at once:"
            f" {sum(len(sent) > 1 for sent in results.values())}",
            "built results for both jobs of a release at once:"
            f" {sum(len(jobs) > 1 for jobs in by_release.values())}",
        ]
    )


def test_two_masters_two_builders_and_the_reconciler_race(tmp_path: Path) -> None:
    with _race(tmp_path) as race:
        _run_rounds(race)
        _drain(race)
        answers = sorted(
            (answer for builder in race.builders for answer in builder.answers),
            key=lambda answer: answer.round,
        )
        print(_story(race, answers))
        wrong = [line for builder in race.builders for line in builder.unclean]
        wrong += _check_contention(answers)
        wrong += _check_jobs(race, answers)
        wrong += _check_wheels(race, answers)
        assert not wrong, "\n".join(wrong)
    # Leaving _race stopped the masters: neither logged an error (a 500 logs one).


def _check_contention(answers: list[Answer]) -> list[str]:
    """It raced: claims of one job sent at once found one winner, never two."""
    claims: dict[tuple[int, int | None], list[int]] = defaultdict(list)
    for answer in answers:
        if answer.call.kind == "claim":
            claims[(answer.round, answer.call.job)].append(answer.status)
    contested = {key: statuses for key, statuses in claims.items() if len(statuses) > 1}
    wrong = [
        f"round {round_}: job {job} claimed twice at once"
        for (round_, job), statuses in contested.items()
        if statuses.count(200) > 1
    ]
    won = [statuses for statuses in contested.values() if sorted(statuses) == [200, 409]]
    print(f"claims of one job at once: {len(contested)}, won by one builder: {len(won)}")
    if not won:
        wrong.append("no two claims of one pending job ever met: it did not race")
    return wrong


def _check_jobs(race: Race, answers: list[Answer]) -> list[str]:
    """Every job ended once, in one final state that its fields agree with, after as
    many attempts as counted claims; no builder is left linked to a job."""
    counted: Counter[int] = Counter()
    built_answers: Counter[int] = Counter()
    for answer in answers:
        if answer.status != 200:
            continue
        kind, job_id = answer.call.kind, answer.call.job or 0
        if kind == "claim":
            counted[job_id] += 1
        elif kind == "release":
            counted[job_id] -= 1  # a builder stopping in good order: not counted
        elif kind == "beat":
            for handed_back in answer.body["handed_back"]:
                counted[handed_back] -= 1  # an unreported job: not counted either
        elif kind == "built" and answer.body["state"] == JobState.BUILT:
            built_answers[job_id] += 1
    wrong = []
    with race.factory() as session:
        for job in session.scalars(select(BuildJob).order_by(BuildJob.id)):
            ok = job.state in FINAL_STATES and job.finished_at is not None
            ok &= job.attempts == counted[job.id] and job.attempts <= MAX_ATTEMPTS
            ok &= built_answers[job.id] == (job.state == JobState.BUILT)
            if job.state == JobState.BUILT:
                ok &= job.failure_reason is None and len(job.outputs) == 1
            elif job.state == JobState.FAILED:
                ok &= job.failure_reason not in (None, FailureReason.UPLOAD_REJECTED)
                ok &= not job.outputs
            else:
                ok &= job.skip_reason == SkipReason.COVERED_BY_FARM and not job.outputs
            if not ok:
                wrong.append(
                    f"job {job.id}: {job.state} {job.failure_reason or job.skip_reason}"
                    f" attempts {job.attempts} (counted claims {counted[job.id]}),"
                    f" {built_answers[job.id]} built answers, {len(job.outputs)} wheels,"
                    f" finished {job.finished_at}"
                )
        linked = session.execute(
            select(Builder.name, Builder.current_job_id).where(Builder.current_job_id.is_not(None))
        ).all()
    wrong += [f"builder {name} still linked to job {job}" for name, job in linked]
    return wrong


def _check_wheels(race: Race, answers: list[Answer]) -> list[str]:
    """One wheel per built job, published once, its file the bytes of the result that
    was accepted; a covered job's target served by its sibling's wheel; fsck finds the
    database, the files and the static index agreeing."""
    accepted = {
        answer.body["file"]: answer.wheel
        for answer in answers
        if answer.call.kind == "built" and answer.status == 200 and answer.body["file"]
    }
    storage = Storage(race.settings.master.data_dir)
    wrong = []
    with race.factory() as session:
        outputs = session.scalars(select(OutputFile)).all()
        per_job = Counter(output.job_id for output in outputs)
        wrong += [f"job {job} has {count} wheels" for job, count in per_job.items() if count > 1]
        if set(accepted) != {output.filename for output in outputs}:
            wrong.append(f"wheels accepted {sorted(accepted)}, published {outputs}")
        for output in outputs:
            path = storage.wheel_path(output.release.project.name, output.filename)
            on_disk = file_sha256(path)[0] if path.exists() else "no file"
            if not output.published or output.job.state != JobState.BUILT:
                wrong.append(f"{output.filename} published for a job {output.job.state}")
            if accepted.get(output.filename) != (output.filename, output.sha256):
                wrong.append(f"{output.filename}: sha256 {output.sha256} is no accepted build's")
            if on_disk != output.sha256:
                wrong.append(f"{output.filename}: the file is {on_disk}, its row {output.sha256}")
        served = {output.release_id for output in outputs}
        for job in session.scalars(select(BuildJob).where(BuildJob.state == JobState.SKIPPED)):
            if not race.jobs[job.id].abi3 or job.release_id not in served:
                wrong.append(f"job {job.id} covered, but no wheel of its release serves it")
    report = check(
        race.factory, race.settings.master.data_dir, static=True, now=time.time() + SETTLE_SECONDS
    )
    wrong += [
        f"fsck: {finding.kind} {finding.path}: {finding.detail}" for finding in report.findings
    ]
    return wrong


def test_a_stable_abi_wheel_uploaded_for_two_targets_at_once_is_published_once(
    tmp_path: Path,
) -> None:
    """The cp311 and cp312 jobs of a stable-ABI release upload the one wheel they both
    build at the same moment: the first is published, the second finds it served (its
    job is covered), and the file stays the bytes the published row hashes."""
    with _database(tmp_path) as (settings, factory):
        with transaction(factory) as session:
            first_job, second_job = _add_releases(session, settings, 1).values()
        storage = Storage(settings.master.data_dir)
        filename = first_job.wheel_name()
        limit = settings.master.max_upload_bytes
        first, second = (
            make_wheel(filename, modules=(first_job.project,), extra={"build.txt": stamp})
            for stamp in (b"first", b"second")
        )
        outcome: list[BaseException | OutputFile] = []

        def upload_second() -> None:
            with factory() as session:
                job = session.get(BuildJob, second_job.id)
                assert job is not None
                try:
                    sha256 = hashlib.sha256(second).hexdigest()
                    outcome.append(
                        accept_wheel(
                            session, storage, job, filename, sha256, io.BytesIO(second), limit
                        )
                    )
                    session.commit()
                except BaseException as exc:  # what happened is the test's finding
                    outcome.append(exc)

        with factory() as session:
            job = session.get(BuildJob, first_job.id)
            assert job is not None
            sha256 = hashlib.sha256(first).hexdigest()
            accept_wheel(session, storage, job, filename, sha256, io.BytesIO(first), limit)
            # The second upload runs until it waits for the first one's transaction.
            racer = threading.Thread(target=upload_second)
            racer.start()
            wait_until(lambda: _waiting_for_a_lock(factory), 30, "the second upload to wait")
            session.commit()
        racer.join(30)
    [second_outcome] = outcome
    assert isinstance(second_outcome, AlreadyServed), repr(second_outcome)
    assert file_sha256(storage.wheel_path(first_job.project, filename))[0] == sha256


def _waiting_for_a_lock(factory: sessionmaker[Session]) -> bool:
    with factory() as session:
        waiting = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


def test_a_wheel_published_while_its_sibling_is_claimed_leaves_that_build_be(
    tmp_path: Path,
) -> None:
    """A stable-ABI wheel is published (for cp311) while a builder claims the cp312 job it
    also serves: the claim stands and the build goes on (its upload will find the wheel
    served), rather than the publish ending as `skipped` a job that is building and
    leaving its builder linked to it."""
    with _database(tmp_path) as (settings, factory):
        with transaction(factory) as session:
            built, sibling = _add_releases(session, settings, 1).values()
            first, second = (
                add_builder(session, "a", python_tags=TAGS),
                add_builder(session, "b", python_tags=TAGS),
            )
            job = session.get(BuildJob, built.id)
            assert job is not None
            jobs.claim(job, first)
            ids = first.id, second.id
        filename = built.wheel_name()
        body = make_wheel(filename, modules=(built.project,))
        failures: list[BaseException] = []

        def publish() -> None:
            try:
                with transaction(factory) as session:
                    job = session.get(BuildJob, built.id)
                    assert job is not None
                    sha256 = hashlib.sha256(body).hexdigest()
                    storage = Storage(settings.master.data_dir)
                    limit = settings.master.max_upload_bytes
                    accept_wheel(session, storage, job, filename, sha256, io.BytesIO(body), limit)
            except BaseException as exc:
                failures.append(exc)

        with factory() as session:
            # The claim of the sibling, as POST /api/v1/jobs/{id}/claim makes it.
            job = session.get(BuildJob, sibling.id, with_for_update=True)
            claimer = session.get(Builder, ids[1])
            assert job is not None and claimer is not None
            jobs.claim(job, claimer)
            session.flush()
            publisher = threading.Thread(target=publish)
            publisher.start()
            wait_until(lambda: _waiting_for_a_lock(factory), 30, "the publish to wait")
            session.commit()
        publisher.join(30)
        assert not failures, failures
        with factory() as session:
            job = session.get(BuildJob, sibling.id)
            claimer = session.get(Builder, ids[1])
            assert job is not None and claimer is not None
            assert (job.state, job.builder_id) == (JobState.BUILDING, claimer.id), job.summary
            assert claimer.current_job_id == job.id


def test_a_builder_registering_while_the_reconciler_takes_its_job_back(
    tmp_path: Path,
) -> None:
    """The reconciler has locked the job of a builder gone silent and is about to free
    the builder, when the builder registers again: both end, one after the other, and
    the job is handed back once (no deadlock, no 500)."""
    with _database(tmp_path) as (settings, factory):
        with transaction(factory) as session:
            [info, _] = _add_releases(session, settings, 1).values()
            secret = create_token(session, "a", TokenRole.BUILDER)
        app = create_app(settings, factory)
        registration = {"arch": "aarch64", "backend": "docker", "python_tags": list(TAGS)}
        with TestClient(app, headers={"Authorization": f"Bearer {secret}"}) as client:
            assert client.post("/api/v1/builders/register", json=registration).status_code == 200
            assert client.post(f"/api/v1/jobs/{info.id}/claim").status_code == 200
            # The reconciler (its own engine) stops once it holds the job's row lock.
            engine = make_engine(settings.database.url)
            locked, go = threading.Event(), threading.Event()

            @event.listens_for(engine, "after_cursor_execute")
            def pause(*args: Any) -> None:
                if "FOR UPDATE" in args[2] and not locked.is_set():
                    locked.set()
                    go.wait(30)

            failures: list[BaseException] = []

            def reconciler() -> None:
                try:
                    with transaction(make_sessionmaker(engine)) as session:
                        silent = timedelta(seconds=2 * settings.master.builder_timeout)
                        reconcile(session, settings, now=datetime.now(UTC) + silent)
                except BaseException as exc:
                    failures.append(exc)

            thread = threading.Thread(target=reconciler)
            thread.start()
            assert locked.wait(30)
            with ThreadPoolExecutor(1) as pool:
                registered = pool.submit(
                    client.post, "/api/v1/builders/register", json=registration
                )
                wait_until(lambda: _waiting_for_a_lock(factory), 30, "the registration to wait")
                go.set()
                answer = registered.result(60)
            thread.join(60)
            engine.dispose()
        assert answer.status_code == 200, answer.text
        assert not failures, failures
        with factory() as session:
            job = session.get(BuildJob, info.id)
            assert job is not None
            assert (job.state, job.attempts, job.builder_id) == (JobState.PENDING, 1, None)
