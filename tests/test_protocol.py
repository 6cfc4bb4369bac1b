"""The builder API's bodies (common/protocol.py): each reads back what it writes, ignores
what a newer release adds, refuses what is missing or mistyped naming the field, and the
bytes on the wire are those earlier builders send and read."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

import armwheels
from builder.client import LogOffsetMismatch, LogRefused, MasterClient
from builder.log_stream import CHUNK_BYTES
from common.config import ConfigError, Settings, load_settings
from common.db import transaction
from common.protocol import (
    HEARTBEAT_SECONDS,
    MAX_CHUNK_BYTES,
    Body,
    ErrorBody,
    Heartbeat,
    HeartbeatAnswer,
    JobAnswer,
    LogAccepted,
    LogGap,
    LogRefusal,
    ProtocolError,
    Registered,
    Registration,
    ResultAnswer,
    ResultForm,
)
from common.states import ARCHES, Arch, FailureReason, TokenRole
from common.version import UNKNOWN, VERSION, installed_version
from master.auth import create_token
from master.web.app import create_app
from tests.conftest import make_wheel
from tests.seed import add_release

GOOD = "demo-1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"

# One of each body, as the wire carries it.
SAMPLES: list[tuple[type[Body], dict[str, Any]]] = [
    (
        Registration,
        {
            "arch": "armv7l",
            "backend": "native",
            "python_tags": ["cp311", "cp313"],
            "version": "0.2.0",
            "free_disk": 2**40,
            "target": "armv7l-pi",
        },
    ),
    (Heartbeat, {"job_id": 7, "free_disk": 0}),
    (Registered, {"builder_id": 3, "name": "pi-aarch64"}),
    (HeartbeatAnswer, {"ok": True, "handed_back": [4], "stop": [7], "why": "skipped (cancelled)"}),
    (JobAnswer, {"job": 7, "state": "pending"}),
    (LogAccepted, {"job": 7, "total": 4096}),
    (LogGap, {"error": "log chunk at 9, expected 5", "expected": 5}),
    (LogRefusal, {"error": "job 7 is built", "stop": True, "state": "built", "why": "built"}),
    (ErrorBody, {"error": "no such job"}),
    (ResultAnswer, {"job": 7, "state": "built", "file": GOOD}),
    (ResultAnswer, {"job": 7, "state": "built", "file": None, "served": GOOD}),
    (
        ResultForm,
        {
            "outcome": "failed",
            "reason": "out-of-memory",
            "summary": "cc1plus was killed",
            "build_seconds": 12.5,
            "wheel_sha256": None,
            "transient": True,
            "build_path": "emulated-after-cross",
            "system_packages": "libc6=2.36-9+deb12u13 zlib1g=1:1.2.13.dfsg-1",
            "build_packages": "libffi-dev liblzo2-dev",
            "auto_packages": "libffi-dev",
            "package_manager": "apt-get",
            "waiting_for": "numpy>=1.22",
        },
    ),
]
IDS = [f"{model.__name__}-{n}" for n, (model, _) in enumerate(SAMPLES)]


@pytest.mark.parametrize(("model", "data"), SAMPLES, ids=IDS)
def test_every_body_reads_back_what_it_writes(model: type[Body], data: dict[str, Any]) -> None:
    body = model.from_json(data)
    assert body.model_dump(mode="json") == data
    assert model.from_bytes(json.dumps(data)) == body


@pytest.mark.parametrize(("model", "data"), SAMPLES, ids=IDS)
def test_fields_a_newer_release_adds_are_ignored(model: type[Body], data: dict[str, Any]) -> None:
    newer = model.from_json({**data, "priority": 9, "deadline": {"at": "tomorrow"}})
    assert newer == model.from_json(data)
    assert "priority" not in newer.model_dump()


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (Registration, {"backend": "docker"}, "arch"),
        (Registration, {"arch": "x86_64", "backend": "docker"}, "arch"),
        (
            Registration,
            {"arch": "aarch64", "backend": "docker", "python_tags": ["py3"]},
            "python_tags.0",
        ),
        (Registration, {"arch": "aarch64", "backend": "docker", "free_disk": "9"}, "free_disk"),
        (Heartbeat, {"job_id": "7"}, "job_id"),
        (Heartbeat, {"job_id": 2**31}, "job_id"),
        (Registered, {"name": "b1"}, "builder_id"),
        (HeartbeatAnswer, {"stop": ["seven"]}, "stop.0"),
        (HeartbeatAnswer, {"stop": 7}, "stop"),
        (HeartbeatAnswer, {"why": ["no"]}, "why"),
        (JobAnswer, {"job": 7}, "state"),
        (LogAccepted, {"job": 7}, "total"),
        (LogAccepted, {"job": 7, "total": -1}, "total"),
        (LogGap, {"error": "gap", "expected": "soon"}, "expected"),
        (LogRefusal, {"stop": True}, "error"),
        (ResultAnswer, {"job": 7, "state": "built"}, "file"),
        (ResultForm, {"summary": "no outcome"}, "outcome"),
        (ResultForm, {"outcome": "exploded"}, "outcome"),
        (ResultForm, {"outcome": "failed", "reason": "gremlins"}, "reason"),
        (ResultForm, {"outcome": "failed", "build_seconds": "nan"}, "build_seconds"),
        (ResultForm, {"outcome": "failed", "transient": "maybe"}, "transient"),
        (ResultForm, {"outcome": "failed", "build_path": "teleported"}, "build_path"),
        (ResultForm, {"outcome": "failed", "auto_packages": "a;reboot"}, "auto_packages"),
        (ResultForm, {"outcome": "failed", "package_manager": "pacman"}, "package_manager"),
        (ResultForm, {"outcome": "failed", "waiting_for": "numpy @ http://x/"}, "waiting_for"),
        (ResultForm, {"outcome": "failed", "waiting_for": "numpy>>"}, "waiting_for"),
    ],
)
def test_a_missing_or_mistyped_field_is_refused_by_name(
    model: type[Body], data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProtocolError) as refused:
        model.from_json(data)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{model.__name__}: {field}: ")


def test_what_is_not_a_body_is_refused() -> None:
    for content in (b"<html>502 Bad Gateway</html>", b"[1, 2]", b"null"):
        with pytest.raises(ProtocolError, match=r"^HeartbeatAnswer: "):
            HeartbeatAnswer.from_bytes(content)
    # What a master that predates `stop` answers reads as nothing to act on.
    assert HeartbeatAnswer.from_bytes(b'{"ok": true}') == HeartbeatAnswer()


def test_a_result_form_is_sent_as_earlier_builders_sent_it() -> None:
    form = ResultForm(outcome="built", summary="built x", build_seconds=2.0, wheel_sha256="ab" * 32)
    assert form.fields() == {
        "outcome": "built",
        "summary": "built x",
        "build_seconds": "2.000",
        "wheel_sha256": "ab" * 32,
    }
    failed = ResultForm(
        outcome="failed",
        reason=FailureReason.TIMEOUT,
        summary="build exceeded 3600 s",
        build_seconds=3600.0004,
        transient=True,
    )
    assert failed.fields() == {
        "outcome": "failed",
        "summary": "build exceeded 3600 s",
        "build_seconds": "3600.000",
        "transient": "true",
        "reason": "timeout",
    }
    assert ResultForm.from_json(failed.fields()) == failed.model_copy(
        update={"build_seconds": 3600.0}
    )


def test_served_is_left_out_of_a_result_answer_that_has_none() -> None:
    assert ResultAnswer(job=1, state="failed", file=None).model_dump_json() == (
        '{"job":1,"state":"failed","file":null}'
    )


def test_one_arch_type_one_heartbeat_interval_one_version() -> None:
    assert ARCHES == get_args(Arch) == ("aarch64", "armv7l")
    assert CHUNK_BYTES <= MAX_CHUNK_BYTES
    # A builder timeout shorter than the idle heartbeat would take live builders' jobs.
    assert load_settings(None, master={"builder_timeout": HEARTBEAT_SECONDS})
    with pytest.raises(ConfigError, match="builder_timeout"):
        load_settings(None, master={"builder_timeout": HEARTBEAT_SECONDS - 1})
    assert VERSION == importlib.metadata.version("armwheels") == armwheels.__version__
    assert installed_version("armwheels-no-such-distribution") == UNKNOWN


# --- through the real master ---------------------------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the bodies do not depend on the database (the others cover both)."""
    return f"sqlite:///{tmp_path / 'armwheels.db'}"


@dataclass
class Farm:
    client: TestClient
    auth: dict[str, str]
    token: str
    job_id: int


@pytest.fixture
def farm(settings: Settings, factory: sessionmaker[Session]) -> Iterator[Farm]:
    with transaction(factory) as session:
        _, _, [job] = add_release(session, settings)
        token = create_token(session, "old-builder", TokenRole.BUILDER)
        job_id = job.id
    with TestClient(create_app(settings, factory)) as client:
        yield Farm(client, {"Authorization": f"Bearer {token}"}, token, job_id)


def _exactly(answer: httpx.Response, status: int, body: dict[str, Any]) -> None:
    """The answer is `body`, byte for byte as the master before common/protocol.py wrote it."""
    assert answer.status_code == status, answer.text
    assert answer.content == json.dumps(body, separators=(",", ":")).encode()


def test_a_builder_of_the_previous_release_gets_the_answers_it_always_got(farm: Farm) -> None:
    """Bodies copied from builder/client.py as it was before common/protocol.py, and the
    answers that master gave them, recorded byte for byte."""
    c, auth, job = farm.client, farm.auth, farm.job_id
    octets = {**auth, "Content-Type": "application/octet-stream"}
    registration = {
        "arch": "aarch64",
        "backend": "docker",
        "python_tags": ["cp311", "cp312"],
        "version": "0.1.0",
        "free_disk": 123456789,
    }
    registered = c.post("/api/v1/builders/register", headers=auth, json=registration)
    _exactly(
        registered, 200, {"builder_id": registered.json()["builder_id"], "name": "old-builder"}
    )
    quiet = {"ok": True, "handed_back": [], "stop": [], "why": None}
    _exactly(c.post("/api/v1/builders/heartbeat", headers=auth), 200, quiet)
    idle = {"job_id": None, "free_disk": 123456789}
    _exactly(c.post("/api/v1/builders/heartbeat", headers=auth, json=idle), 200, quiet)

    spec = {
        "job_id": job,
        "project": "demo",
        "version": "1.0",
        "arch": "aarch64",
        "python_tag": "cp311",
        "policy": "manylinux2014_aarch64",
        "sdist_filename": "demo-1.0.tar.gz",
        "sdist_url": "http://127.0.0.1:1/demo-1.0.tar.gz",
        "sdist_sha256": "0" * 64,
        "sdist_size": 10,
        "attempt": 1,
        "recipe": None,
        # Added since, at the end: a builder of the previous release ignores them
        # (JobSpec ignores fields it does not know).
        "emulate_because": None,
        "newer_policy": "publish",
        "target": "aarch64",
    }
    _exactly(c.post(f"/api/v1/jobs/{job}/claim", headers=auth), 200, spec)
    busy = {"job_id": job, "free_disk": 123456789}
    _exactly(c.post("/api/v1/builders/heartbeat", headers=auth, json=busy), 200, quiet)
    chunk = c.post(
        f"/api/v1/jobs/{job}/log", headers=octets, params={"offset": 0}, content=b"building\n"
    )
    _exactly(chunk, 200, {"job": job, "total": 9})
    gap = c.post(f"/api/v1/jobs/{job}/log", headers=octets, params={"offset": 100}, content=b"x")
    _exactly(gap, 409, {"error": "log chunk at 100, expected 9", "expected": 9})

    killed = c.post(
        f"/api/v1/jobs/{job}/result",
        headers=auth,
        data={
            "outcome": "failed",
            "summary": "cc1plus was killed",
            "build_seconds": "12.500",
            "transient": "true",
            "reason": "out-of-memory",
        },
        files={"log": ("build.log", b"Killed\n", "text/plain")},
    )
    _exactly(killed, 200, {"job": job, "state": "pending", "file": None})
    _exactly(c.post(f"/api/v1/jobs/{job}/claim", headers=auth), 200, {**spec, "attempt": 2})
    _exactly(
        c.post(f"/api/v1/jobs/{job}/release", headers=auth), 200, {"job": job, "state": "pending"}
    )
    _exactly(c.post(f"/api/v1/jobs/{job}/claim", headers=auth), 200, {**spec, "attempt": 2})

    wheel = make_wheel(GOOD)
    built = c.post(
        f"/api/v1/jobs/{job}/result",
        headers=auth,
        data={
            "outcome": "built",
            "summary": f"built {GOOD}",
            "build_seconds": "2.000",
            "wheel_sha256": hashlib.sha256(wheel).hexdigest(),
        },
        files={
            "log": ("build.log", b"ok\n", "text/plain"),
            "wheel": (GOOD, wheel, "application/octet-stream"),
        },
    )
    _exactly(built, 200, {"job": job, "state": "built", "file": GOOD})

    late = c.post(
        f"/api/v1/jobs/{job}/log", headers=octets, params={"offset": 9}, content=b"late\n"
    )
    gone = f"job {job} is built, not building"
    _exactly(late, 409, {"error": gone, "stop": True, "state": "built", "why": "built"})
    _exactly(
        c.post(f"/api/v1/jobs/{job}/claim", headers=auth), 409, {"error": f"job {job} is built"}
    )
    _exactly(c.post(f"/api/v1/jobs/{job}/release", headers=auth), 409, {"error": gone})
    again = c.post(
        f"/api/v1/jobs/{job}/result",
        headers=auth,
        data={
            "outcome": "failed",
            "summary": "x",
            "build_seconds": "1.000",
            "reason": "compile-error",
        },
        files={"log": ("build.log", b"x\n", "text/plain")},
    )
    _exactly(again, 409, {"error": gone})

    # Refusals name the field, as they always did.
    wrong_arch = c.post(
        "/api/v1/builders/register", headers=auth, json={**registration, "arch": "x86_64"}
    )
    _exactly(wrong_arch, 422, {"error": "body.arch: Input should be 'aarch64' or 'armv7l'"})
    text_id = c.post(
        "/api/v1/builders/heartbeat", headers=auth, json={"job_id": "7", "free_disk": None}
    )
    _exactly(text_id, 422, {"error": "body.job_id: Input should be a valid integer"})
    no_outcome = c.post(
        f"/api/v1/jobs/{job}/result",
        headers=auth,
        data={"summary": "x"},
        files={"log": ("build.log", b"x\n", "text/plain")},
    )
    _exactly(no_outcome, 422, {"error": "body.outcome: Field required"})


def _client(farm: Farm) -> MasterClient:
    """This release's builder client, talking to the real master in-process."""
    client = MasterClient("http://testserver", farm.token)
    client.http.close()
    client.http = farm.client
    farm.client.headers.update(farm.auth)
    return client


def test_this_builder_and_this_master_understand_each_other(farm: Farm, tmp_path: Path) -> None:
    client = _client(farm)
    registered = client.register("aarch64", "aarch64", "docker", ["cp311"], VERSION, 2**33)
    assert registered.name == "old-builder"
    assert client.heartbeat() == HeartbeatAnswer()
    spec = client.claim(farm.job_id)
    assert (spec.job_id, spec.arch, spec.attempt) == (farm.job_id, "aarch64", 1)
    assert client.heartbeat(farm.job_id, 2**33) == HeartbeatAnswer()
    assert client.append_log(farm.job_id, 0, b"building\n") == 9
    with pytest.raises(LogOffsetMismatch) as gap:
        client.append_log(farm.job_id, 100, b"x")
    assert gap.value.expected == 9

    log, wheel = tmp_path / "build.log", tmp_path / GOOD
    log.write_bytes(b"building\nok\n")
    wheel.write_bytes(make_wheel(GOOD))
    form = ResultForm(
        outcome="built",
        summary=f"built {GOOD}",
        build_seconds=2.0,
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
    )
    assert client.report(farm.job_id, form, log, wheel) == ResultAnswer(
        job=farm.job_id, state="built", file=GOOD
    )
    with pytest.raises(LogRefused) as refused:
        client.append_log(farm.job_id, 9, b"late\n")
    assert refused.value.taken_back == "built"


def test_an_answer_this_builder_cannot_read_names_the_field() -> None:
    """A master of another release answering with a mistyped field (loopback transport)."""
    answers = {
        "/api/v1/builders/heartbeat": b'{"ok": true, "stop": "all"}',
        "/api/v1/jobs/7/log": b'{"job": 7, "total": "lots"}',
        "/api/v1/builders/register": b'{"name": "b1"}',
    }

    def master(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answers[request.url.path])

    client = MasterClient("http://master", "token")
    client.http.close()
    client.http = httpx.Client(base_url="http://master", transport=httpx.MockTransport(master))
    with client.http:
        with pytest.raises(ProtocolError, match=r"^HeartbeatAnswer: stop: "):
            client.heartbeat(7, 1)
        with pytest.raises(ProtocolError, match=r"^LogAccepted: total: "):
            client.append_log(7, 0, b"x")
        with pytest.raises(ProtocolError, match=r"^Registered: builder_id: Field required"):
            client.register("armv7l", "armv7l", "native", [], VERSION)


def test_the_api_states_the_package_version(farm: Farm) -> None:
    assert farm.client.get("/openapi.json").json()["info"]["version"] == VERSION
