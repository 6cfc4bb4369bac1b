"""The master's builder API against a real database: claims, uploads and each rejection."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from common.db import transaction
from common.models import Builder, BuildJob, OutputFile, Release
from common.protocol import SLOT_HEADER
from common.states import FailureReason, JobState, SkipReason, TokenRole
from master.auth import create_token
from master.builds.build_plan import plan_builds
from master.pypi.feed import apply_events
from master.pypi.journal import JournalEvent, parse_entry
from master.web.app import create_app
from tests.conftest import make_wheel
from tests.seed import add_release
from tests.wheels import elf_header

GOOD = "demo-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"


@dataclass
class Farm:
    client: TestClient
    factory: sessionmaker[Session]
    settings: Settings
    job_id: int
    token: str
    other_token: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def upload(
        self,
        filename: str = GOOD,
        body: bytes | None = None,
        sha256: str | None = None,
        token: str | None = None,
        job_id: int | None = None,
        **form: str,
    ) -> Any:
        body = make_wheel(filename) if body is None else body
        data = {
            "outcome": "built",
            "summary": "ok",
            "wheel_sha256": sha256 or hashlib.sha256(body).hexdigest(),
            **form,
        }
        return self.client.post(
            f"/api/v1/jobs/{job_id or self.job_id}/result",
            headers=self.auth(token),
            data=data,
            files={"log": ("build.log", b"compiling...\n"), "wheel": (filename, body)},
        )

    def job(self) -> BuildJob:
        with self.factory() as session:
            job = session.get(BuildJob, self.job_id)
            assert job is not None
            return job


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    with transaction(factory) as session:
        _, _, [job] = add_release(
            session,
            settings,
            upstream_files=[
                "demo-1.0.tar.gz",
                "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                "demo-1.0-cp311-cp311-manylinux2014_aarch64.whl",
            ],
        )
        token = create_token(session, "b1", TokenRole.BUILDER)
        other = create_token(session, "b2", TokenRole.BUILDER)
        job_id = job.id
    with TestClient(create_app(settings, factory)) as client:
        farm = Farm(client, factory, settings, job_id, token, other)
        for secret in (token, other):
            answer = client.post(
                "/api/v1/builders/register",
                headers=farm.auth(secret),
                json={"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]},
            )
            assert answer.status_code == 200, answer.text
        claimed = client.post(f"/api/v1/jobs/{job_id}/claim", headers=farm.auth())
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["sdist_filename"] == "demo-1.0.tar.gz"
        yield farm


def test_good_upload_is_published(farm: Farm) -> None:
    body = make_wheel(GOOD, extra={"demo.libs/libffi-abc.so.8": elf_header("aarch64")})
    answer = farm.upload(body=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job": farm.job_id, "state": "built", "file": GOOD}
    with farm.factory() as session:
        output = session.scalar(select(OutputFile))
        assert output is not None
        assert output.sha256 == hashlib.sha256(body).hexdigest()
        assert output.grafted == ["libffi-abc.so.8"]
        assert output.requires_python == ">=3.8"
    assert farm.job().state == JobState.BUILT
    wheel = farm.client.get(f"/files/demo/{GOOD}")
    assert wheel.content == body
    assert farm.client.get(f"/files/demo/{GOOD}.metadata").text.startswith("Metadata-Version")
    assert "compiling" in farm.client.get(f"/logs/{farm.job_id}").text
    # The same result again is refused: the job is finished.
    assert farm.upload(body=body).status_code == 409


def test_failed_outcome_keeps_log(farm: Farm) -> None:
    answer = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/result",
        headers=farm.auth(),
        data={"outcome": "failed", "reason": "compile-error", "summary": "missing header ffi.h"},
        files={"log": ("build.log", b"fatal error: ffi.h: No such file or directory\n")},
    )
    assert answer.status_code == 200, answer.text
    job = farm.job()
    assert job.state == JobState.FAILED and job.failure_reason == FailureReason.COMPILE_ERROR
    assert "ffi.h" in farm.client.get(f"/logs/{farm.job_id}").text


def _rejected(answer: Any, status: int, text: str) -> None:
    assert answer.status_code == status, answer.text
    assert text in answer.json()["error"]


def test_bad_token(farm: Farm) -> None:
    _rejected(farm.upload(token="aw_" + "x" * 40), 401, "invalid or revoked token")
    _rejected(farm.upload(token="garbage"), 401, "malformed")
    answer = farm.client.post(f"/api/v1/jobs/{farm.job_id}/result", data={"outcome": "built"})
    _rejected(answer, 401, "missing Authorization")
    assert farm.job().state == JobState.BUILDING


def test_wrong_job(farm: Farm) -> None:
    _rejected(farm.upload(token=farm.other_token), 403, "not assigned to builder b2")
    _rejected(farm.upload(job_id=999999), 404, "no such job")
    assert farm.job().state == JobState.BUILDING


@pytest.mark.parametrize(
    ("filename", "status", "message"),
    [
        ("other-1.0-cp311-cp311-manylinux2014_aarch64.whl", 400, "project other"),
        ("demo-2.0-cp311-cp311-manylinux2014_aarch64.whl", 400, "version 2.0"),
        ("demo-1.0-cp311-cp311-manylinux2014_armv7l.whl", 400, "not for aarch64"),
        ("demo-1.0-py3-none-any.whl", 400, "not for aarch64"),
        ("demo-1.0-cp310-cp310-manylinux2014_aarch64.whl", 400, "cp311 does not install"),
        ("demo-1.0-cp312-abi3-manylinux2014_aarch64.whl", 400, "cp311 does not install"),
        ("demo-1.0-cp311-cp310-manylinux2014_aarch64.whl", 400, "cp311 does not install"),
        ("demo-1.0-cp311-cp311-manylinux2014_aarch64.whl", 409, "exists upstream"),
        ("not-a-wheel.zip", 400, "not a valid wheel filename"),
    ],
)
def test_wrong_wheel_name(farm: Farm, filename: str, status: int, message: str) -> None:
    _rejected(farm.upload(filename=filename, body=make_wheel(GOOD)), status, message)
    job = farm.job()
    assert job.state == JobState.FAILED and job.failure_reason == FailureReason.UPLOAD_REJECTED
    assert message in (job.summary or "")
    with farm.factory() as session:
        assert session.scalar(select(OutputFile)) is None


def test_path_in_filename(farm: Farm) -> None:
    # Multipart filenames are reduced by some clients; send the raw header to be sure.
    body = make_wheel(GOOD)
    boundary = "b0undary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="outcome"\r\n\r\nbuilt\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="wheel_sha256"\r\n\r\n'
        f"{hashlib.sha256(body).hexdigest()}\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="log"; filename="l"\r\n\r\nx\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="wheel"; '
        f'filename="../../{GOOD}"\r\nContent-Type: application/octet-stream\r\n\r\n',
    ]
    payload = "".join(parts).encode() + body + f"\r\n--{boundary}--\r\n".encode()
    answer = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/result",
        content=payload,
        headers={**farm.auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    _rejected(answer, 400, "plain file name")
    assert not list(farm.settings.master.data_dir.glob("**/*.whl"))


def test_bad_hash(farm: Farm) -> None:
    _rejected(farm.upload(sha256="ab" * 32), 400, "sha256 mismatch")


def test_not_a_zip(farm: Farm) -> None:
    _rejected(farm.upload(body=b"this is not a zip file at all"), 400, "not a zip")


def test_zip_without_dist_info(farm: Farm) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("demo/__init__.py", "")
    _rejected(farm.upload(body=buffer.getvalue()), 400, "dist-info")


def test_oversize(farm: Farm) -> None:
    farm.settings.master.max_upload_bytes = 100
    with TestClient(create_app(farm.settings, farm.factory)) as small:
        farm.client = small
        _rejected(farm.upload(), 413, "larger than 100 bytes")
    assert not list(farm.settings.master.data_dir.glob("files/**/*.whl"))


def test_malformed_form(farm: Farm) -> None:
    answer = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/result",
        headers=farm.auth(),
        data={"outcome": "exploded"},
        files={"log": ("l", b"")},
    )
    _rejected(answer, 422, "outcome")
    answer = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/result",
        headers=farm.auth(),
        data={"outcome": "failed"},
        files={"log": ("l", b"")},
    )
    _rejected(answer, 400, "needs a reason")
    answer = farm.client.post("/api/v1/jobs/notanumber/claim", headers=farm.auth())
    assert answer.status_code == 422 and "error" in answer.json()


def test_claim_rules(farm: Farm) -> None:
    _rejected(
        farm.client.post(f"/api/v1/jobs/{farm.job_id}/claim", headers=farm.auth()), 409, "building"
    )
    armv7 = farm.client.post(
        "/api/v1/builders/register",
        headers=farm.auth(farm.other_token),
        json={"arch": "armv7l", "backend": "docker"},
    )
    assert armv7.status_code == 200
    bad = farm.client.post(
        "/api/v1/builders/register",
        headers=farm.auth(),
        json={"arch": "x86_64", "backend": "docker"},
    )
    assert bad.status_code == 422


def test_restarted_builder_hands_back_its_job(farm: Farm) -> None:
    answer = farm.client.post(
        "/api/v1/builders/register",
        headers=farm.auth(),
        json={"arch": "aarch64", "backend": "docker"},
    )
    assert answer.status_code == 200
    job = farm.job()
    assert job.state == JobState.PENDING and job.builder_id is None


def test_yanked_and_removed_upstream_show_in_the_index(farm: Farm) -> None:
    assert farm.upload().status_code == 200
    settings = farm.settings.model_copy(deep=True)
    settings.upstream.projects = "all"
    settings.upstream.feed = "changelog"

    def change(action: str, serial: int) -> None:
        event = parse_entry(["demo", "1.0", 1_700_000_000, action, serial])
        assert isinstance(event, JournalEvent)
        with transaction(farm.factory) as session:
            apply_events(session, [event], settings)

    json_accept = {"Accept": "application/vnd.pypi.simple.v1+json"}
    change("yank release", 1)
    page = farm.client.get("/simple/demo/", headers=json_accept).json()
    assert [(f["filename"], f["yanked"]) for f in page["files"]] == [(GOOD, True)]
    change("remove release", 2)
    # The project has nothing left to serve: it answers like an unknown project.
    assert farm.client.get("/simple/demo/", headers=json_accept).status_code == 404
    assert farm.client.get(f"/files/demo/{GOOD}").status_code == 404
    projects = farm.client.get("/simple/", headers=json_accept).json()["projects"]
    assert projects == []
    with farm.factory() as session:
        output = session.scalar(select(OutputFile))
        assert output is not None and output.filename == GOOD  # history stays


def test_builders_claim_only_jobs_for_their_interpreters(farm: Farm) -> None:
    with transaction(farm.factory) as session:
        first = session.get(BuildJob, farm.job_id)
        assert first is not None
        other = BuildJob(
            release_id=first.release_id,
            source_file_id=first.source_file_id,
            target="aarch64",
            arch="aarch64",
            python_tag="cp312",
            policy=first.policy,
            state=JobState.QUEUED,
        )
        session.add(other)
        session.flush()
        other_id = other.id
    answer = farm.client.post(f"/api/v1/jobs/{other_id}/claim", headers=farm.auth(farm.other_token))
    assert answer.status_code == 409
    assert "needs cp312" in answer.json()["error"]
    bad = farm.client.post(
        "/api/v1/builders/register",
        headers=farm.auth(farm.other_token),
        json={"arch": "aarch64", "backend": "docker", "python_tags": ["cp311", "../x"]},
    )
    assert bad.status_code == 422
    assert bad.json()["error"].startswith("body.python_tags.1:")


def test_transient_failures_are_retried_up_to_the_cap(farm: Farm) -> None:
    assert farm.settings.master.max_attempts == 3

    def fail(attempt: int) -> Any:
        return farm.client.post(
            f"/api/v1/jobs/{farm.job_id}/result",
            headers=farm.auth(),
            data={
                "outcome": "failed",
                "reason": "out-of-memory",
                "summary": "cc1plus was killed",
                "transient": "true",
            },
            files={"log": ("build.log", f"attempt {attempt}: Killed signal\n".encode())},
        )

    for attempt in (1, 2):
        assert fail(attempt).json()["state"] == "pending"
        job = farm.job()
        assert job.attempts == attempt and job.builder_id is None
        assert job.summary == f"attempt {attempt} failed, retrying: cc1plus was killed"
        claimed = farm.client.post(f"/api/v1/jobs/{farm.job_id}/claim", headers=farm.auth())
        assert claimed.json()["attempt"] == attempt + 1
    assert fail(3).json()["state"] == "failed"
    job = farm.job()
    assert (job.state, job.failure_reason, job.attempts) == (
        JobState.FAILED,
        FailureReason.OUT_OF_MEMORY,
        3,
    )
    # Each attempt's log is kept; the job points at the last.
    assert "attempt 3" in farm.client.get(f"/logs/{farm.job_id}").text
    # A permanent failure is never retried.
    answer = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/result",
        headers=farm.auth(),
        data={"outcome": "failed", "reason": "compile-error", "transient": "maybe"},
        files={"log": ("build.log", b"x")},
    )
    assert answer.status_code == 422


def test_heartbeats_report_the_running_job_and_free_disk(farm: Farm) -> None:
    def beat(body: Any) -> Any:
        return farm.client.post("/api/v1/builders/heartbeat", headers=farm.auth(), json=body)

    assert beat({"job_id": farm.job_id, "free_disk": 123_456_789}).status_code == 200
    # An old builder's empty heartbeat still counts as a sign of life.
    assert farm.client.post("/api/v1/builders/heartbeat", headers=farm.auth()).status_code == 200
    status = farm.client.get("/api/v1/status").json()
    [b1] = [b for b in status["builders"] if b["name"] == "b1"]
    assert (b1["current_job"], b1["reported_job"], b1["free_disk"]) == (
        farm.job_id,
        farm.job_id,
        123_456_789,
    )
    for bad in ({"job_id": 0}, {"free_disk": -1}, {"job_id": "x"}):
        answer = beat(bad)
        assert answer.status_code == 422 and "error" in answer.json()
    assert beat({"job_id": None, "free_disk": 5}).status_code == 200
    status = farm.client.get("/api/v1/status").json()
    [b1] = [b for b in status["builders"] if b["name"] == "b1"]
    assert (b1["reported_job"], b1["free_disk"]) == (None, 5)


def test_the_openapi_document_describes_the_api(farm: Farm) -> None:
    with warnings.catch_warnings():
        # FastAPI warns of two operations with one operationId (GET and HEAD on one route).
        warnings.simplefilter("error", UserWarning)
        answer = farm.client.get("/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    paths = document["paths"]
    for path, method in [
        ("/api/v1/builders/register", "post"),
        ("/api/v1/jobs/{job_id}/claim", "post"),
        ("/api/v1/jobs/{job_id}/result", "post"),
        ("/api/v1/projects/{name}/rebuild", "post"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/skips", "get"),
        ("/simple/{name}/", "get"),
    ]:
        assert method in paths[path], (path, method)
    operation_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    # The claim's answer is the job spec builders read (common/job_spec.py).
    spec = document["components"]["schemas"]["JobSpec"]
    assert {"job_id", "sdist_url", "sdist_sha256", "attempt"} <= set(spec["required"])


ABI3 = "demo-1.0-cp36-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"


@pytest.fixture
def abi3_farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    """demo 1.0 with a job for each of cp311, cp312 and cp313 on aarch64, the cp311 one
    claimed by builder b1 and the cp312 one by b2."""
    settings.targets["aarch64"].python_tags = ["cp311", "cp312", "cp313"]
    with transaction(factory) as session:
        _, _, jobs = add_release(session, settings)
        token = create_token(session, "b1", TokenRole.BUILDER)
        other = create_token(session, "b2", TokenRole.BUILDER)
        by_tag = {job.python_tag: job.id for job in jobs}
    with TestClient(create_app(settings, factory)) as client:
        farm = Farm(client, factory, settings, by_tag["cp311"], token, other)
        for secret, tag in ((token, "cp311"), (other, "cp312")):
            answer = client.post(
                "/api/v1/builders/register",
                headers=farm.auth(secret),
                json={"arch": "aarch64", "backend": "docker", "python_tags": [tag]},
            )
            assert answer.status_code == 200, answer.text
            claimed = client.post(f"/api/v1/jobs/{by_tag[tag]}/claim", headers=farm.auth(secret))
            assert claimed.status_code == 200, claimed.text
        yield farm


def _jobs_by_tag(farm: Farm) -> dict[str, BuildJob]:
    with farm.factory() as session:
        return {job.python_tag: job for job in session.scalars(select(BuildJob))}


def test_a_stable_abi_wheel_is_published_once_for_every_cpython_it_serves(
    abi3_farm: Farm,
) -> None:
    farm = abi3_farm
    answer = farm.upload(ABI3)
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "built"
    jobs = _jobs_by_tag(farm)
    assert jobs["cp311"].state == JobState.BUILT
    # The waiting cp313 job is moot: CPython 3.13 installs the cp36-abi3 wheel.
    assert jobs["cp313"].state == JobState.SKIPPED
    assert jobs["cp313"].skip_reason == SkipReason.COVERED_BY_FARM
    assert ABI3 in (jobs["cp313"].summary or "")
    # The cp312 build was already running: its identical wheel is not published again
    # and the job is not a failure.
    other = farm.upload(ABI3, token=farm.other_token, job_id=jobs["cp312"].id)
    assert other.status_code == 200, other.text
    expected = {"job": jobs["cp312"].id, "state": "skipped", "file": None, "served": ABI3}
    assert other.json() == expected
    jobs = _jobs_by_tag(farm)
    assert jobs["cp312"].state == JobState.SKIPPED
    assert jobs["cp312"].skip_reason == SkipReason.COVERED_BY_FARM
    with farm.factory() as session:
        assert [o.filename for o in session.scalars(select(OutputFile))] == [ABI3]
    page = farm.client.get("/simple/demo/?format=json").json()
    assert [f["filename"] for f in page["files"]] == [ABI3]


def test_a_later_cpython_target_is_not_planned_where_an_abi3_wheel_serves_it(
    abi3_farm: Farm,
) -> None:
    farm = abi3_farm
    assert farm.upload(ABI3).status_code == 200
    farm.settings.targets["aarch64"].python_tags = ["cp311", "cp312", "cp313", "cp314"]
    with transaction(farm.factory) as session:
        release = session.scalars(select(Release)).one()
        created = plan_builds(session, release, release.source_files[0], farm.settings)
        assert created == []
    jobs = _jobs_by_tag(farm)
    assert jobs["cp314"].state == JobState.SKIPPED
    assert jobs["cp314"].skip_reason == SkipReason.COVERED_BY_FARM
    assert jobs["cp314"].summary == f"armwheels serves {ABI3}"


def test_each_build_slot_of_a_host_is_a_builder_of_its_own(farm: Farm) -> None:
    """A host with several build slots sends SLOT_HEADER: each slot registers, claims and
    hands back on its own under the host's one token; no header is slot 0."""

    def slot(number: str) -> dict[str, str]:
        return {**farm.auth(), SLOT_HEADER: number}

    registration = {"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]}
    answer = farm.client.post("/api/v1/builders/register", headers=slot("1"), json=registration)
    assert answer.status_code == 200 and answer.json()["name"] == "b1#1"
    builders = {b["name"]: b for b in farm.client.get("/api/v1/status").json()["builders"]}
    assert (builders["b1"]["slot"], builders["b1"]["current_job"]) == (0, farm.job_id)
    assert (builders["b1#1"]["slot"], builders["b1#1"]["current_job"]) == (1, None)
    # Slot 1 restarting hands back nothing of slot 0's, nor may it report slot 0's job.
    answer = farm.client.post("/api/v1/builders/register", headers=slot("1"), json=registration)
    assert answer.status_code == 200
    assert farm.job().state == JobState.BUILDING
    refused = farm.client.post(
        f"/api/v1/jobs/{farm.job_id}/result",
        headers=slot("1"),
        data={"outcome": "failed", "reason": "compile-error", "summary": "x"},
        files={"log": ("build.log", b"...")},
    )
    assert refused.status_code == 403 and "not assigned to builder b1#1" in refused.text
    # Slot 0 (named by the header or by its absence) restarting hands back its own job,
    # which slot 1 then claims as any builder would.
    answer = farm.client.post("/api/v1/builders/register", headers=slot("0"), json=registration)
    assert answer.status_code == 200 and answer.json()["name"] == "b1"
    assert farm.job().state == JobState.PENDING
    claimed = farm.client.post(f"/api/v1/jobs/{farm.job_id}/claim", headers=slot("1"))
    assert claimed.status_code == 200, claimed.text
    with farm.factory() as session:
        owner = session.get(Builder, farm.job().builder_id)
        assert owner is not None and (owner.name, owner.slot) == ("b1#1", 1)
    assert farm.upload().status_code == 403  # slot 0 is not its builder
    for bad in ("x", "64", "-1", "01", " 1", "1.0", ""):
        answer = farm.client.post("/api/v1/builders/heartbeat", headers=slot(bad))
        assert answer.status_code == 400, (bad, answer.text)
        assert SLOT_HEADER in answer.json()["error"]
