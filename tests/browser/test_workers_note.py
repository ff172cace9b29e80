"""The dashboard says when no worker is there to run a job (GET /health counts the
workers' rows of presence), and stops saying it once one has started. Real API,
real worker process, headless Chromium."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.test_dashboard import shoot
from tests.conftest import start_worker
from tests.worker.conftest import wait_for

pytestmark = pytest.mark.browser


def _workers(server) -> int:
    return httpx.get(f"{server.url}/api/v1/health", timeout=10).json()["workers"]


def test_the_page_says_when_no_worker_is_running(
    live_server, signed_in, service_env, tmp_path, screenshots
):
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs")
    note = page.locator("#workers-note")
    note.filter(has_text="No worker is running on this server").wait_for()
    assert "queued jobs wait until one starts" in note.inner_text()
    shoot(page, screenshots, "no-worker")

    worker = start_worker(service_env, tmp_path)
    try:
        wait_for(lambda: _workers(live_server) == 1, "the worker's first beat", timeout=30)
        page.goto(f"{live_server.url}/#/new")  # every page change asks again
        note.wait_for(state="hidden")

        worker.stop()  # a warm shutdown removes the worker's row at once
        assert _workers(live_server) == 0
        page.goto(f"{live_server.url}/#/jobs")
        note.filter(has_text="No worker is running").wait_for()
    finally:
        worker.kill9()
    assert problems.unexpected() == []
