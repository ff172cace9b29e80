"""Browser fixtures: one headless Chromium per session, pages that record their errors."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DYART_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOAD_FAILURE = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class PageProblems:
    """Console errors, page exceptions and failed requests seen by one page."""

    console: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    allowed: list[tuple[int, str]] = field(default_factory=list)

    def allow(self, status: int, path: str) -> None:
        """Expect one response of ``status`` for a URL ending in ``path`` (not a problem)."""
        self.allowed.append((status, path))

    def _expected(self, status: int, url: str) -> bool:
        return any(status == s and url.split("?")[0].endswith(p) for s, p in self.allowed)

    def unexpected(self) -> list[str]:
        statuses = {s for s, _ in self.allowed}
        console = [
            m
            for m in self.console
            if not ((hit := LOAD_FAILURE.search(m)) and int(hit.group(1)) in statuses)
        ]
        return console + self.failed


def _watch(page, problems: PageProblems) -> None:
    def on_console(message) -> None:
        if message.type == "error":
            problems.console.append(message.text)

    def on_response(response) -> None:
        if response.status >= 400 and not problems._expected(response.status, response.url):
            problems.failed.append(f"{response.status} {response.request.method} {response.url}")

    def on_failed(request) -> None:
        if "aborted" not in (request.failure or "").lower():
            problems.failed.append(f"failed {request.method} {request.url}: {request.failure}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.console.append(f"page error: {error}"))
    page.on("response", on_response)
    page.on("requestfailed", on_failed)


@pytest.fixture(scope="session")
def chromium() -> Iterator:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set DYART_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def open_page(chromium, tmp_path) -> Iterator:
    """``open_page(width=1280, height=900)`` -> (page, PageProblems); downloads allowed."""
    contexts = []

    def make(width: int = 1280, height: int = 900):
        context = chromium.new_context(
            viewport={"width": width, "height": height}, accept_downloads=True
        )
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        problems = PageProblems()
        _watch(page, problems)
        return page, problems

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """``$DYART_TEST_ARTIFACTS/screenshots`` (default ./test-artifacts/screenshots)."""
    folder = Path(os.environ.get("DYART_TEST_ARTIFACTS", "test-artifacts")) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def signed_in(open_page, live_server):
    """``signed_in(width, height)`` -> (page, PageProblems) of a browser that holds
    ``live_server``'s token, so every page opens signed in."""
    token = live_server.headers["Authorization"].removeprefix("Bearer ")

    def make(width: int = 1280, height: int = 900):
        page, problems = open_page(width, height)
        page.add_init_script(f"localStorage.setItem('dyart.token', {token!r})")
        return page, problems

    return make


@pytest.fixture
def submit_job(live_server):
    """``submit_job(**fields)`` -> the job (JSON) the API created: a small digits job,
    queued for good unless the test starts a worker."""
    import httpx

    def submit(**fields) -> dict:
        body = {"dataset": "digits", "architecture": "mlp", "method": "dyart", **fields}
        body.setdefault("burn_in_epochs", 1)
        body.setdefault("epochs", 3)
        body.setdefault("eval_preset", "fast")
        created = httpx.post(
            f"{live_server.url}/api/v1/jobs", json=body, headers=live_server.headers
        )
        assert created.status_code == 201, created.text
        return created.json()

    return submit
