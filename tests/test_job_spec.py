"""The job spec is the one contract between a master's claim answer and a builder."""

from __future__ import annotations

import threading
from dataclasses import FrozenInstanceError
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from builder.backends import Backend
from builder.client import ClaimNotUnderstood, MasterClient
from builder.worker import JobRunner
from common.config import load_settings
from common.job_spec import JobSpec
from common.recipes import Recipe


def _answer(**changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "job_id": 7,
        "project": "msgpack",
        "version": "1.1.0",
        "arch": "aarch64",
        "python_tag": "cp311",
        "policy": "manylinux2014",
        "sdist_filename": "msgpack-1.1.0.tar.gz",
        "sdist_url": "https://files.example/msgpack-1.1.0.tar.gz",
        "sdist_sha256": "ab" * 32,
        "sdist_size": 167_014,
        "attempt": 2,
    }
    answer.update(changes)
    return answer


def test_a_claim_answer_reads_back_with_its_recipe() -> None:
    spec = JobSpec.from_json(_answer(recipe={"apt": ["liblzo2-dev"], "env": {"CFLAGS": "-O1"}}))
    assert (spec.job_id, spec.project, spec.attempt, spec.sdist_size) == (7, "msgpack", 2, 167_014)
    assert spec.recipe == Recipe(apt=["liblzo2-dev"], env={"CFLAGS": "-O1"})
    assert JobSpec.from_json(_answer()).recipe is None


def test_fields_a_newer_master_adds_are_ignored() -> None:
    spec = JobSpec.from_json(_answer(priority=9, deadline="tomorrow"))
    assert spec == JobSpec.from_json(_answer())
    assert not hasattr(spec, "priority")


@pytest.mark.parametrize(
    "answer",
    [
        {k: v for k, v in _answer().items() if k != "sdist_sha256"},
        _answer(job_id="seven"),
        _answer(recipe={"apt": ["bad name; rm -rf /"]}),
        ["not", "a", "mapping"],
        None,
    ],
    ids=["missing-field", "mistyped-field", "bad-recipe", "a-list", "null"],
)
def test_an_answer_that_is_no_job_spec_is_refused(answer: Any) -> None:
    with pytest.raises(ValueError):
        JobSpec.from_json(answer)


def test_specs_are_frozen_and_built_positionally_by_builders_and_benchmarks() -> None:
    spec = JobSpec(
        1, "six", "1.16.0", "armv7l", "cp311", "manylinux2014", "s.tar.gz", "", "", None, 1
    )
    assert spec.arch == "armv7l" and spec.recipe is None
    with pytest.raises(FrozenInstanceError):
        spec.attempt = 2  # type: ignore[misc]


class _OtherMaster(BaseHTTPRequestHandler):
    """A master of another version on loopback: it claims the job but answers the claim
    with what this builder cannot read, and records the requests it gets."""

    claim_answer = b'{"job_id": "seven"}'
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.seen.append(self.path)
        body = self.claim_answer if self.path.endswith("/claim") else b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("answer", [b'{"job_id": "seven"}', b"<html>not json</html>"])
def test_a_claim_answer_the_builder_cannot_read_hands_the_job_back(
    answer: bytes, tmp_path: Path
) -> None:
    _OtherMaster.claim_answer, _OtherMaster.seen = answer, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherMaster)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = MasterClient(f"http://127.0.0.1:{server.server_address[1]}", "token")
    try:
        with pytest.raises(ClaimNotUnderstood, match=r"^claim answer is not a job spec: "):
            client.claim(7)
        settings = load_settings(None, builder={"work_dir": tmp_path / "work"})
        runner = JobRunner(settings, "aarch64", cast(Backend, object()), client)
        runner.run(7)  # the backend is never reached
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join()
    assert _OtherMaster.seen == [
        "/api/v1/jobs/7/claim",
        "/api/v1/jobs/7/claim",
        "/api/v1/jobs/7/release",
    ]
    assert runner.current_job is None
