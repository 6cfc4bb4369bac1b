"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

One scenario against a real master on SQLite: the overview refreshes itself while a job is
queued, a build page tails the live log a builder posts, and a project page's rebuild form
queues a build with a maintainer token and shows the API's refusal for an unknown one."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Frame, Page, expect
from playwright.sync_api import Request as PwRequest
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings, load_settings
from common.db import make_engine, make_sessionmaker, transaction, upgrade
from common.states import FailureReason, JobState, TokenRole
from common.tokens import looks_like_secret
from master.auth import create_token
from tests.browser import CHROMIUM, TIMEOUT_MS, browser_page, live_master, screenshot
from tests.seed import add_release, publish_wheel

__all__ = ["browser_page"]  # the fixture, imported so that pytest finds it here

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/setup installs it)"
)

# A well-formed secret (the aw_ prefix, a plausible length) that no token has.
UNKNOWN_TOKEN = "aw_" + "0" * 40


@dataclass
class Farm:
    settings: Settings
    factory: sessionmaker[Session]
    builder_token: str
    maintainer_token: str


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    """A migrated SQLite master database with a little of everything the dashboard shows:
    a waiting job (demo 1.0), a published wheel (demo 0.9) and failed builds (broken 0.1,
    demo 0.8)."""
    settings = load_settings(
        None,
        database={"url": f"sqlite:///{tmp_path / 'armwheels.db'}"},
        master={"data_dir": tmp_path / "data"},
        builder={"work_dir": tmp_path / "work"},
    )
    engine = make_engine(settings.database.url)
    upgrade(engine)
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        add_release(session, settings, project="demo", version="1.0")
        built = publish_wheel(session, settings, project="demo", version="0.9").job
        built.state, built.attempts, built.build_seconds = JobState.BUILT, 1, 42.0
        built.started_at = built.finished_at = datetime.now(UTC)
        _, _, jobs = add_release(session, settings, project="broken", version="0.1")
        _, _, older = add_release(session, settings, project="demo", version="0.8")
        for job in [*jobs, *older]:
            job.state, job.failure_reason = JobState.FAILED, FailureReason.COMPILE_ERROR
            job.summary = "error: command 'gcc' failed with exit code 1"
            job.attempts, job.finished_at = 1, datetime.now(UTC)
        builder_token = create_token(session, "builder-1", TokenRole.BUILDER)
        maintainer_token = create_token(
            session, "demo-maintainer", TokenRole.MAINTAINER, projects=["demo"]
        )
    try:
        yield Farm(settings, factory, builder_token, maintainer_token)
    finally:
        engine.dispose()


def queue_release(farm: Farm, project: str, version: str) -> int:
    """A new release as the feed would add it; returns its aarch64 job."""
    with transaction(farm.factory) as session:
        _, _, jobs = add_release(session, farm.settings, project=project, version=version)
        return next(job.id for job in jobs if job.arch == "aarch64")


def mark_page(page: Page) -> None:
    """A flag in the page's JavaScript state: gone if the page is reloaded or navigated."""
    page.evaluate("window.__marker = 1")


def assert_not_reloaded(page: Page, url: str, navigations: list[str]) -> None:
    assert page.evaluate("window.__marker") == 1, "the page was reloaded"
    assert navigations == [url], f"the page navigated: {navigations}"


def test_dashboard_live_pages(
    browser_page: Page, farm: Farm, request: pytest.FixtureRequest
) -> None:
    page = browser_page
    timings: dict[str, float] = {}
    with (
        live_master(farm.settings, farm.factory) as base,
        httpx.Client(base_url=base, timeout=30, trust_env=False) as api,
    ):
        builder = {"Authorization": f"Bearer {farm.builder_token}"}

        # 1. The overview refreshes itself: a job queued while it is open shows up.
        started = time.monotonic()
        navigations: list[str] = []
        fragments: list[str] = []

        def navigated(frame: Frame) -> None:
            if frame is page.main_frame:
                navigations.append(frame.url)

        def requested(sent: PwRequest) -> None:
            if "/fragments/" in sent.url:
                fragments.append(sent.url)

        page.on("framenavigated", navigated)
        page.on("request", requested)
        page.goto(f"{base}/")
        expect(page.locator("main#live")).to_have_attribute("data-fragment", "/fragments/overview")
        for table in ("queues", "running-builds", "latest", "failures"):
            expect(page.locator(f"table#{table}")).to_be_attached()
        expect(page.locator("form#search input#search-q[name=q]")).to_be_attached()
        expect(page.locator("#failures")).to_contain_text("broken")
        expect(page.locator("#latest")).to_contain_text("demo")
        depth = page.locator('#queues tr[data-arch="aarch64"] td.depth')
        expect(depth).to_have_text(re.compile(r"^\s*\d+\s*$"))
        before = int(depth.inner_text())
        assert before >= 1, "demo 1.0 waits for aarch64"
        screenshot(page, request, "overview")
        mark_page(page)

        job_id = queue_release(farm, "fresh", "2.0")
        expect(page.locator(f'#waiting a.build-link[href="/builds/{job_id}"]')).to_have_count(1)
        expect(depth).to_have_text(re.compile(rf"^\s*{before + 1}\s*$"))
        assert_not_reloaded(page, f"{base}/", navigations)
        assert any(url.endswith("/fragments/overview") for url in fragments), fragments
        screenshot(page, request, "overview-refreshed")
        timings["overview"] = time.monotonic() - started

        # 2. A builder claims the job; its page tails the live log as chunks arrive.
        started = time.monotonic()
        registration = {"arch": "aarch64", "backend": "docker", "python_tags": ["cp311"]}
        answer = api.post("/api/v1/builders/register", json=registration, headers=builder)
        assert answer.status_code == 200, answer.text
        answer = api.post(f"/api/v1/jobs/{job_id}/claim", headers=builder)
        assert answer.status_code == 200, answer.text
        # The still-open overview moves the job from waiting to running on its own.
        expect(page.locator("#running-builds")).to_contain_text("fresh")
        expect(page.locator(f'#waiting a.build-link[href="/builds/{job_id}"]')).to_have_count(0)
        expect(depth).to_have_text(re.compile(rf"^\s*{before}\s*$"))
        assert_not_reloaded(page, f"{base}/", navigations)

        navigations.clear()
        page.goto(f"{base}/builds/{job_id}")
        expect(page.locator("span#state")).to_contain_text("building")
        log = page.locator('pre#log[data-live="true"]')
        expect(log).to_be_attached()
        mark_page(page)
        chunks = [
            "collecting fresh==2.0\n",
            "running setup.py bdist_wheel <b>not markup</b>\n",
            "\u2713 built fresh-2.0-cp311-cp311-linux_aarch64.whl\n",
        ]
        offset, shown = 0, ""
        for number, chunk in enumerate(chunks, 1):
            data = chunk.encode()
            answer = api.post(
                f"/api/v1/jobs/{job_id}/log",
                params={"offset": offset},
                content=data,
                headers={**builder, "Content-Type": "application/octet-stream"},
            )
            assert answer.status_code == 200, answer.text
            offset += len(data)
            assert answer.json()["total"] == offset
            shown += chunk
            # Exactly the bytes posted so far, in order, each once, appended as text.
            page.wait_for_function(
                "expected => document.querySelector('#log').textContent.endsWith(expected)",
                arg=shown,
                timeout=TIMEOUT_MS,
            )
            text = page.locator("#log").text_content() or ""
            assert all(text.count(part) == 1 for part in chunks[:number]), text
        expect(page.locator("#log b")).to_have_count(0)  # log text is never parsed as HTML
        assert_not_reloaded(page, f"{base}/builds/{job_id}", navigations)
        screenshot(page, request, "build-live-log")
        timings["live log"] = time.monotonic() - started

        # 3. The project page: its tables, and the rebuild form with good and bad tokens.
        started = time.monotonic()
        page.goto(f"{base}/projects/demo")
        for table in ("matrix", "wheels"):
            expect(page.locator(f"table#{table}")).to_be_attached()
        expect(page.locator("#wheels")).to_contain_text("demo-0.9-cp311-cp311-")
        expect(page.locator("code#pip-command")).to_contain_text("demo")
        screenshot(page, request, "project")

        form = page.locator("form#rebuild-form")
        token = form.locator('input#token[type="password"]')
        result = page.locator("div#rebuild-result")
        token.fill(farm.maintainer_token)
        form.locator("select#rebuild-target").select_option("aarch64")
        # demo 0.9's aarch64 wheel is served: the form shows the refusal, naming it.
        form.locator("input#rebuild-version").fill("0.9")
        form.locator("button#rebuild").click()
        expect(page.locator("div#rebuild-result.error")).to_contain_text(
            "armwheels serves demo-0.9-"
        )
        # demo 0.8's build failed: a new job is queued; asked again, the form shows it waiting.
        form.locator("input#rebuild-version").fill("0.8")
        links = result.locator('a[href^="/builds/"]')
        rebuilt: list[str] = []
        for outcome in ("queued", "already waiting"):
            form.locator("button#rebuild").click()
            expect(result).to_have_text(re.compile(rf"^\s*{outcome}"))
            expect(result).not_to_have_class(re.compile(r"\berror\b"))
            expect(links).to_have_count(1)
            rebuilt.append(links.get_attribute("href") or "")
            screenshot(page, request, "project-rebuild-" + outcome.replace(" ", "-"))
        assert rebuilt[0] == rebuilt[1], rebuilt
        job = api.get(f"/api/v1/jobs/{rebuilt[0].rsplit('/', 1)[-1]}").json()
        assert (job["project"], job["version"], job["arch"]) == ("demo", "0.8", "aarch64"), job
        assert job["state"] == "pending", job

        assert looks_like_secret(UNKNOWN_TOKEN)
        token.fill(UNKNOWN_TOKEN)
        form.locator("button#rebuild").click()
        refused = page.locator("div#rebuild-result.error")
        expect(refused).to_contain_text("invalid or revoked token")
        screenshot(page, request, "project-rebuild-refused")
        timings["project"] = time.monotonic() - started

    print(" ".join(f"{step}: {seconds:.1f}s" for step, seconds in timings.items()))
