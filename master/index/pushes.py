"""Pushing published wheels to other PyPI-compatible indexes (the upload API twine uses).

Every wheel the farm publishes gets one WheelPush row per configured push target that
wants its project. The master's background loop uploads the rows that are due. Attempts
are recorded in the database instead of retried in-process: a restart or a second master
carries on where the last one stopped, and an index that is down for a day costs a few
requests with growing gaps, not a stuck thread.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from packaging.metadata import parse_email
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, wait_exponential, wait_random

from common.config import PushTarget, Settings
from common.db import transaction
from common.models import OutputFile, WheelPush
from common.wheels import BadWheel, parse_name, read_contents
from master.pypi.backoff import RetryAfterError, raise_if_transient, upstream_http, wait_retry_after
from master.pypi.upstream import SimpleClient, UpstreamError
from master.storage import Storage, file_sha256

log = logging.getLogger(__name__)

PENDING = "pending"
PUSHED = "pushed"
FAILED = "failed"

# Between attempts on a transient error: 30 s doubling to an hour, or the server's
# Retry-After when that is longer.
RETRY_WAIT = wait_retry_after(wait_exponential(multiplier=30, max=3600) + wait_random(0, 5))
MAX_ERROR = 2000

# Core metadata fields twine sends with an upload: (packaging's raw name, form field).
METADATA_FIELDS = (
    ("metadata_version", "metadata_version"),
    ("summary", "summary"),
    ("description", "description"),
    ("description_content_type", "description_content_type"),
    ("keywords", "keywords"),
    ("home_page", "home_page"),
    ("download_url", "download_url"),
    ("author", "author"),
    ("author_email", "author_email"),
    ("maintainer", "maintainer"),
    ("maintainer_email", "maintainer_email"),
    ("license", "license"),
    ("license_expression", "license_expression"),
    ("license_files", "license_file"),
    ("classifiers", "classifiers"),
    ("platforms", "platform"),
    ("supported_platforms", "supported_platform"),
    ("requires_dist", "requires_dist"),
    ("provides_dist", "provides_dist"),
    ("obsoletes_dist", "obsoletes_dist"),
    ("requires_external", "requires_external"),
    ("requires_python", "requires_python"),
    ("provides_extra", "provides_extra"),
    ("dynamic", "dynamic"),
    ("project_urls", "project_urls"),
)


class TransientPushError(RetryAfterError):
    """Timeouts, connection errors, 429 and 5xx: the push is tried again later."""


@dataclass
class PushRound:
    """What one call of push_due did."""

    pushed: int = 0
    retrying: int = 0
    failed: int = 0


@dataclass
class TargetSummary:
    """A push target's rows by state, for `armwheels push status`."""

    target: str
    pushed: int = 0
    pending: int = 0
    failed: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class _Claimed:
    push_id: int
    target: str
    filename: str
    sha256: str
    project: str
    job_id: int


@dataclass(frozen=True)
class _Outcome:
    state: str  # pushed, failed, or pending (try again later)
    status: int | None
    error: str | None
    retry: RetryAfterError | None = None


def wants(target: PushTarget, project: str) -> bool:
    """An empty projects filter admits every project."""
    return not target.projects or project in target.projects


def queue_pushes(
    session: Session,
    output: OutputFile,
    targets: Sequence[PushTarget],
    now: datetime | None = None,
) -> int:
    """Add a pending push of a just-published wheel for each target that wants its project,
    in the publishing transaction, so a wheel is never published without its pushes."""
    project = output.release.project.name
    when = now or datetime.now(UTC)
    names = [target.name for target in targets if wants(target, project)]
    for name in names:
        session.add(
            WheelPush(output=output, target=name, state=PENDING, attempts=0, next_attempt_at=when)
        )
    if names:
        log.info(
            "wheel pushes queued",
            extra={"file": output.filename, "targets": ",".join(names), "job_id": output.job.id},
        )
    return len(names)


def push_due(
    factory: sessionmaker[Session],
    settings: Settings,
    storage: Storage,
    now: datetime | None = None,
    limit: int = 20,
) -> PushRound:
    """Upload up to `limit` due pushes, one at a time; cheap when there is nothing to do.

    Each row is claimed in a short transaction (SELECT ... FOR UPDATE SKIP LOCKED, then its
    next attempt moved past the upload's time limit), so two masters never upload the same
    row and no transaction stays open during an upload; a master that dies mid-upload only
    leaves the row to be tried again once that lease runs out. Rows of targets no longer
    configured are left alone.
    """
    done = PushRound()
    targets = {target.name: target for target in settings.push}
    if not targets:
        return done
    when = now or datetime.now(UTC)
    for _ in range(limit):
        try:
            claimed = _claim(factory, targets, when)
        except Exception:
            log.exception("claiming a wheel push failed")
            break
        if claimed is None:
            break
        try:
            state = _push_one(factory, targets[claimed.target], storage, claimed, when)
        except Exception:
            # Its lease makes it due again later; the other rows still get their turn.
            log.exception(
                "wheel push crashed",
                extra={"file": claimed.filename, "target": claimed.target},
            )
            continue
        if state == PUSHED:
            done.pushed += 1
        elif state == FAILED:
            done.failed += 1
        else:
            done.retrying += 1
    return done


def push_summary(session: Session, targets: Sequence[str] = ()) -> list[TargetSummary]:
    """Rows per target and state, with the newest error of a row not pushed; `targets`
    (the configured names) are listed even before they have rows."""
    summaries = {name: TargetSummary(name) for name in targets}
    counts = session.execute(
        select(WheelPush.target, WheelPush.state, func.count()).group_by(
            WheelPush.target, WheelPush.state
        )
    ).tuples()
    for target, state, count in counts:
        summary = summaries.setdefault(target, TargetSummary(target))
        if state in (PUSHED, PENDING, FAILED):
            setattr(summary, state, count)
    errors = session.execute(
        select(WheelPush.target, WheelPush.last_error)
        .where(WheelPush.state != PUSHED, WheelPush.last_error.is_not(None))
        .order_by(WheelPush.target, WheelPush.id.desc())
    ).tuples()
    for target, error in errors:
        summary = summaries.setdefault(target, TargetSummary(target))
        if summary.last_error is None:
            summary.last_error = error
    return [summaries[name] for name in sorted(summaries)]


def retry_failed(
    session: Session,
    targets: Sequence[str],
    filename: str | None = None,
    now: datetime | None = None,
) -> int:
    """Make failed pushes of these targets (optionally of one file) pending again, due now,
    with a fresh attempt count; returns how many."""
    query = select(WheelPush).where(WheelPush.state == FAILED, WheelPush.target.in_(targets))
    if filename is not None:
        query = query.join(OutputFile, WheelPush.output_file_id == OutputFile.id).where(
            OutputFile.filename == filename
        )
    when = now or datetime.now(UTC)
    pushes = list(session.scalars(query.with_for_update()))
    for push in pushes:
        push.state = PENDING
        push.attempts = 0
        push.next_attempt_at = when
    return len(pushes)


def has_pushes(session: Session, filename: str) -> bool:
    """Whether any push of this wheel file was ever queued."""
    query = (
        select(WheelPush.id)
        .join(OutputFile, WheelPush.output_file_id == OutputFile.id)
        .where(OutputFile.filename == filename)
        .limit(1)
    )
    return session.scalar(query) is not None


def upload_fields(metadata: bytes, filename: str, sha256: str) -> dict[str, str | list[str]]:
    """The form fields of an upload, as twine sends them: the file's identity and digest,
    and the core metadata fields from the wheel's METADATA (PyPI checks them)."""
    raw, _unparsed = parse_email(metadata)
    values: Mapping[str, object] = dict(raw)
    wheel = parse_name(filename)
    fields: dict[str, str | list[str]] = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": str(values.get("name") or wheel.name),
        "version": str(values.get("version") or wheel.version),
        "filetype": "bdist_wheel",
        # The python tag as the filename spells it (e.g. cp311, py2.py3), as twine does.
        "pyversion": filename.removesuffix(".whl").split("-")[-3],
        "sha256_digest": sha256,
    }
    for key, form in METADATA_FIELDS:
        value = values.get(key)
        if value is None or value == "" or value == [] or value == {}:
            continue
        if key == "keywords" and isinstance(value, list):
            fields[form] = ", ".join(str(item) for item in value)
        elif isinstance(value, dict):
            fields[form] = [f"{label}, {url}" for label, url in value.items()]
        elif isinstance(value, list):
            fields[form] = [str(item) for item in value]
        else:
            fields[form] = str(value)
    return fields


def simple_url(upload_url: str) -> str:
    """Where an index's Simple API probably is, from its upload URL: PyPI's upload host
    serves none; `/legacy/` (warehouse) and the root (pypiserver) sit next to /simple/."""
    parts = urlsplit(upload_url)
    if parts.hostname == "upload.pypi.org":
        return "https://pypi.org/simple/"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    path = path.removesuffix("legacy/")
    return urlunsplit((parts.scheme, parts.netloc, path + "simple/", "", ""))


def retry_delay(attempts: int, error: RetryAfterError) -> timedelta:
    """The gap before the next attempt: the project's backoff policy (master.pypi.backoff)."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = max(1, attempts)
    state.set_exception((type(error), error, None))
    return timedelta(seconds=RETRY_WAIT(state))


def _lease(target: PushTarget) -> timedelta:
    return timedelta(seconds=max(600.0, 4 * target.timeout))


def _claim(
    factory: sessionmaker[Session], targets: Mapping[str, PushTarget], now: datetime
) -> _Claimed | None:
    with transaction(factory) as session:
        push = session.scalars(
            select(WheelPush)
            .where(
                WheelPush.state == PENDING,
                WheelPush.target.in_(list(targets)),
                or_(WheelPush.next_attempt_at.is_(None), WheelPush.next_attempt_at <= now),
            )
            .order_by(WheelPush.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if push is None:
            return None
        push.next_attempt_at = now + _lease(targets[push.target])
        output = push.output
        return _Claimed(
            push.id,
            push.target,
            output.filename,
            output.sha256,
            output.release.project.name,
            output.job_id,
        )


def _push_one(
    factory: sessionmaker[Session],
    target: PushTarget,
    storage: Storage,
    claimed: _Claimed,
    now: datetime,
) -> str:
    path = storage.wheel_path(claimed.project, claimed.filename)
    outcome = _check_file(path, claimed.sha256)
    if outcome is None:
        outcome = _upload(target, claimed, path)
    return _record(factory, target, claimed, outcome, now)


def _check_file(path: Path, sha256: str) -> _Outcome | None:
    """A failure if the file is gone or not the bytes that were published."""
    if not path.is_file():
        return _Outcome(FAILED, None, f"wheel file missing on disk: {path}")
    if file_sha256(path)[0] != sha256:
        return _Outcome(FAILED, None, f"wheel file on disk does not match its sha256: {path}")
    return None


def _upload(target: PushTarget, claimed: _Claimed, path: Path) -> _Outcome:
    try:
        fields = upload_fields(read_contents(path).metadata, claimed.filename, claimed.sha256)
    except BadWheel as exc:
        return _Outcome(FAILED, None, f"cannot read the wheel's metadata: {exc}")
    try:
        with upstream_http(target.timeout, follow_redirects=False) as http, path.open("rb") as f:
            response = http.post(
                target.url,
                data=fields,
                files={"content": (claimed.filename, f, "application/octet-stream")},
                auth=(target.username, target.secret()),
            )
    except httpx.TransportError as exc:
        error = TransientPushError(f"{type(exc).__name__}: {exc}")
        return _Outcome(PENDING, None, str(error), error)
    status = response.status_code
    try:
        raise_if_transient(response, f"upload to {target.name}", TransientPushError)
    except TransientPushError as exc:
        return _Outcome(PENDING, status, _server_message(response), exc)
    if 200 <= status < 300:
        return _Outcome(PUSHED, status, None)
    if _already_exists(response):
        return _verify_existing(target, claimed, status)
    if 300 <= status < 400:
        where = response.headers.get("Location", "?")
        return _Outcome(FAILED, status, f"HTTP {status}: redirected to {where}; set that url")
    return _Outcome(FAILED, status, _server_message(response))


def _already_exists(response: httpx.Response) -> bool:
    """The answers indexes give for a filename they have (the same test as twine's
    --skip-existing): pypiserver 409, PyPI 400 "File already exists", GitLab, Nexus."""
    if response.status_code == 409:
        return True
    if response.status_code != 400:
        return False
    text = f"{response.reason_phrase} {response.text}".lower()
    return any(s in text for s in ("already exist", "already been taken", "updating asset"))


def _verify_existing(target: PushTarget, claimed: _Claimed, status: int) -> _Outcome:
    """The index has a file of that name: done if it is our bytes (per its Simple page),
    refused for good if it is different bytes."""
    client = SimpleClient(simple_url(target.url), target.timeout, attempts=1)
    try:
        page = client.project_page(claimed.project)
    except (RetryAfterError, UpstreamError, httpx.HTTPError, ValueError) as exc:
        note = f"already existed on the index (not verified: {exc})"
        return _Outcome(PUSHED, status, note[:MAX_ERROR])
    finally:
        client.close()
    theirs = next((f.sha256 for f in page.files if f.filename == claimed.filename), None)
    if theirs == claimed.sha256:
        return _Outcome(PUSHED, status, None)
    if theirs is None:
        return _Outcome(PUSHED, status, "already existed on the index (not verified: no sha256)")
    return _Outcome(
        FAILED,
        status,
        f"the index has a different {claimed.filename} (sha256 {theirs[:16]}, "
        f"ours {claimed.sha256[:16]})",
    )


def _server_message(response: httpx.Response) -> str:
    """The status line and the body's text (tags stripped), in one line."""
    text = response.text
    if "html" in response.headers.get("Content-Type", ""):
        text = re.sub(r"(?is)<(style|script|title)\b.*?</\1\s*>", " ", text)
        text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    text = " ".join(text.split())
    message = f"HTTP {response.status_code} {response.reason_phrase}"
    return f"{message}: {text}"[:MAX_ERROR] if text else message


def _record(
    factory: sessionmaker[Session],
    target: PushTarget,
    claimed: _Claimed,
    outcome: _Outcome,
    now: datetime,
) -> str:
    extra = {
        "file": claimed.filename,
        "target": claimed.target,
        "job_id": claimed.job_id,
        "status": outcome.status or "",
    }
    with transaction(factory) as session:
        push = session.get(WheelPush, claimed.push_id, with_for_update=True)
        if push is None or push.state != PENDING:
            return push.state if push is not None else FAILED
        push.attempts += 1
        push.last_status = outcome.status
        push.last_error = outcome.error[:MAX_ERROR] if outcome.error else None
        extra["attempts"] = push.attempts
        if outcome.state == PUSHED:
            push.state = PUSHED
            push.pushed_at = now
            push.next_attempt_at = None
            log.info("wheel pushed", extra={**extra, "note": outcome.error or ""})
        elif outcome.state == FAILED or push.attempts >= target.max_attempts:
            push.state = FAILED
            push.next_attempt_at = None
            if outcome.state != FAILED:
                push.last_error = f"gave up after {push.attempts} attempts: {outcome.error}"[
                    :MAX_ERROR
                ]
            log.warning("wheel push failed", extra={**extra, "error": push.last_error or ""})
        else:
            error = outcome.retry or TransientPushError(outcome.error or "")
            push.next_attempt_at = now + retry_delay(push.attempts, error)
            log.info(
                "wheel push will be retried",
                extra={
                    **extra,
                    "error": push.last_error or "",
                    "next_attempt_at": push.next_attempt_at.isoformat(),
                },
            )
        return push.state
