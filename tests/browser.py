"""A real headless browser for the dashboard tests: Debian's chromium driven by Playwright.

The browser is never downloaded (`playwright install` is not used): Playwright launches
/usr/bin/chromium, which scripts/setup installs. Chromium's own background traffic is off,
so it only talks to the loopback master the test starts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from common.config import Settings
from master.web.app import create_app
from tests.servers import ROOT, serve_app

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Loopback only: never route the master's URLs through a proxy from the environment.
    "--no-proxy-server",
]
# Generous: a loaded CI machine may be slow to start chromium or to answer a refresh.
TIMEOUT_MS = 15_000


@contextmanager
def live_master(settings: Settings, factory: sessionmaker[Session]) -> Iterator[str]:
    """The real master app under uvicorn on a free loopback port; yields its base URL."""
    with serve_app(create_app(settings, factory)) as url:
        yield url


@pytest.fixture
def browser_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A page of a freshly launched headless chromium with an empty profile; the browser
    is closed (its process ended) after the test."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            timeout=60_000,
        )
        try:
            context.set_default_timeout(TIMEOUT_MS)
            context.set_default_navigation_timeout(TIMEOUT_MS)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


def screenshot(page: Page, request: pytest.FixtureRequest, name: str) -> Path:
    """A full-page screenshot kept as a CI artifact:
    test-artifacts/screenshots/<test>-<name>.png under the repository root."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = SCREENSHOTS / f"{test}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
