"""A builder's download of a job's sdist: a URL no attempt can fetch (not http(s), 404, 410,
a redirect to another scheme) fails at once and for good, saying why; a connection error
or a 5xx is transient, retried, and reported as such.

Real parts: an HTTP server on loopback (Starlette under uvicorn) counting what it was
asked, the builder's fetch_sdist, and for the reported outcome a master under uvicorn
with SQLite or PostgreSQL and the builder's JobRunner claiming and reporting the job.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from tenacity import wait_none

from builder.backends import BuildOutcome
from builder.client import MasterClient
from builder.sdist import SdistUnavailable, fetch_sdist
from builder.worker import JobRunner
from common.config import Settings
from common.db import transaction
from common.job_spec import JobSpec
from common.models import BuildJob
from common.states import FailureReason, JobState
from master.web.app import create_app
from tests.builds import ScriptedBackend
from tests.servers import free_port, serve_app
from tests.test_log_stream import live_farm

SDIST = b"the bytes the master recorded"


class _Files:
    """Answers by path: the sdist, 404, 410, 503, a redirect to ftp://."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()

    async def answer(self, request: Request) -> Response:
        path = request.path_params["path"]
        self.requests[path] += 1
        if path == "ok/demo-1.0.tar.gz":
            return Response(SDIST)
        if path.startswith("gone/"):
            return Response("Gone", status_code=410)
        if path.startswith("busy/"):
            return Response("Service Unavailable", status_code=503)
        if path.startswith("elsewhere/"):
            return RedirectResponse("ftp://127.0.0.1/demo-1.0.tar.gz", status_code=302)
        return Response("Not Found", status_code=404)


@pytest.fixture
def files() -> Iterator[tuple[_Files, str]]:
    served = _Files()
    app = Starlette(routes=[Route("/{path:path}", served.answer)])
    with serve_app(app) as url:
        yield served, url


def _spec(url: str) -> JobSpec:
    return JobSpec(
        job_id=1,
        project="demo",
        version="1.0",
        arch="aarch64",
        python_tag="cp311",
        policy="manylinux_2_36",
        sdist_filename="demo-1.0.tar.gz",
        sdist_url=url,
        sdist_sha256=hashlib.sha256(SDIST).hexdigest(),
        sdist_size=len(SDIST),
        attempt=1,
    )


def test_a_recorded_sdist_is_fetched_and_verified(
    files: tuple[_Files, str], tmp_path: Path
) -> None:
    served, url = files
    fetched = fetch_sdist(_spec(f"{url}/ok/demo-1.0.tar.gz"), tmp_path)
    assert fetched.read_bytes() == SDIST
    assert served.requests["ok/demo-1.0.tar.gz"] == 1


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("missing/demo-1.0.tar.gz", "HTTP 404 for "),
        ("gone/demo-1.0.tar.gz", "HTTP 410 for "),
        ("elsewhere/demo-1.0.tar.gz", "Request URL has an unsupported protocol 'ftp://'"),
    ],
)
def test_a_url_that_can_never_be_fetched_fails_once_for_good(
    files: tuple[_Files, str], tmp_path: Path, path: str, reason: str
) -> None:
    served, url = files
    with pytest.raises(SdistUnavailable) as failed:
        fetch_sdist(_spec(f"{url}/{path}"), tmp_path)
    assert not failed.value.transient
    assert reason in str(failed.value)
    assert served.requests[path] == 1  # asked once: no retry


@pytest.mark.parametrize(
    "bad",
    [
        "../../packages/ab/cd/demo-1.0.tar.gz",
        "/packages/demo-1.0.tar.gz",
        "ftp://127.0.0.1/demo-1.0.tar.gz",
        "file:///etc/passwd",
        "http:///demo-1.0.tar.gz",
        "http://127.0.0.1:notaport/demo-1.0.tar.gz",
        "",
    ],
)
def test_a_url_that_is_not_http_fails_for_good_before_any_request(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SdistUnavailable) as failed:
        fetch_sdist(_spec(bad), tmp_path)
    assert not failed.value.transient
    assert str(failed.value) == f"{bad!r} is not an http(s) URL"
    assert not (tmp_path / "demo-1.0.tar.gz").exists()


def test_a_server_error_or_a_refused_connection_is_transient_and_retried(
    files: tuple[_Files, str], tmp_path: Path
) -> None:
    served, url = files
    quick = fetch_sdist.retry_with(wait=wait_none())
    with pytest.raises(SdistUnavailable) as busy:
        quick(_spec(f"{url}/busy/demo-1.0.tar.gz"), tmp_path)
    assert busy.value.transient and "HTTP 503" in str(busy.value)
    assert served.requests["busy/demo-1.0.tar.gz"] == 4
    with pytest.raises(SdistUnavailable) as refused:
        quick(_spec(f"http://127.0.0.1:{free_port()}/demo-1.0.tar.gz"), tmp_path)
    assert refused.value.transient and "ConnectError" in str(refused.value)


class _NeverBuilds(ScriptedBackend):
    """A backend the runner must not reach: the sdist never arrives."""

    name = "none"

    def build(self, spec: JobSpec, sdist: Path, workdir: Path, log: BinaryIO) -> BuildOutcome:
        raise AssertionError("built without an sdist")


@pytest.mark.parametrize(
    ("where", "summary"),
    [
        # What an earlier release of the farm stored from a mirror's relative link.
        (
            "../../packages/demo-1.0.tar.gz",
            "'../../packages/demo-1.0.tar.gz' is not an http(s) URL",
        ),
        ("{url}/missing/demo-1.0.tar.gz", "HTTP 404 for {url}/missing/demo-1.0.tar.gz"),
    ],
)
def test_the_runner_reports_an_unfetchable_sdist_as_a_permanent_failure(
    settings: Settings,
    factory: sessionmaker[Session],
    files: tuple[_Files, str],
    where: str,
    summary: str,
) -> None:
    _, url = files
    with live_farm(settings, factory) as farm:
        released = farm.client.post(f"/api/v1/jobs/{farm.job_id}/release", headers=farm.auth())
        assert released.status_code == 200
        with transaction(factory) as session:
            job = session.get(BuildJob, farm.job_id)
            assert job is not None
            job.source_file.url = where.format(url=url)
            job.source_file.sha256 = hashlib.sha256(SDIST).hexdigest()
        with serve_app(create_app(settings, factory)) as master:
            client = MasterClient(master, farm.token)
            try:
                JobRunner(settings, "aarch64", _NeverBuilds(), client).run(farm.job_id)
            finally:
                client.close()
        log = farm.whole()
    with factory() as session:
        done = session.get(BuildJob, farm.job_id)
        assert done is not None
        # Failed for good on its first attempt: not put back in line for another.
        assert (done.state, done.failure_reason) == (
            JobState.FAILED,
            FailureReason.SDIST_UNAVAILABLE,
        )
        assert done.attempts == 1
        assert done.summary == summary.format(url=url)
    assert f"outcome: sdist-unavailable: {summary.format(url=url)}".encode() in log
