"""The dashboard's start in headless Chromium when the server cannot say who the
token belongs to for a reason other than the token: its database is away (503), or
the server itself is gone. The page says which, tries again, and starts once the
server answers. (A 401 asking for a token: test_dashboard's sign-in.)"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.browser.test_dashboard import shoot
from tests.conftest import ServiceProcess, free_port, subprocess_env

pytestmark = pytest.mark.browser


def serve(service_env: dict[str, str], port: int, log: Path, **overrides: str) -> ServiceProcess:
    """The API on ``port`` (a fixed port: the page's address must outlive the server)."""
    env = subprocess_env(service_env, DYART_AUTH="required", DYART_PORT=str(port), **overrides)
    command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = ServiceProcess(command, env, log)

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).is_success
        except httpx.HTTPError:
            return False

    process.wait_for(healthy, "API server", timeout=60)
    return process


def test_start_says_database_or_server_away_and_tries_again(
    service_env, make_user, open_page, screenshots, tmp_path
):
    _, token = make_user("startup")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    unreachable_db = f"sqlite:///{tmp_path}/no-such-folder/dyart.db"
    first = serve(service_env, port, tmp_path / "api-1.log", DYART_DATABASE_URL=unreachable_db)
    second = None
    page, problems = open_page()
    problems.allow(503, "/api/v1/me")
    page.add_init_script(f"localStorage.setItem('dyart.token', {token!r})")
    try:
        page.goto(f"{url}/#/jobs")
        error = page.locator("#startup-error")
        error.filter(has_text="cannot reach its database").wait_for()
        assert page.locator("#settings").is_hidden()  # not a token problem: no token box
        assert "API token" not in page.locator("#app").inner_text()
        shoot(page, screenshots, "startup-database-away")

        first.stop(grace=10)
        page.click("#retry")
        error.filter(has_text="server cannot be reached").wait_for()

        second = serve(service_env, port, tmp_path / "api-2.log")  # tried again on its own
        page.locator("#whoami").filter(has_text="signed in as startup").wait_for(timeout=20_000)
        page.locator("table.jobs").wait_for()
    finally:
        first.stop(grace=10)
        if second is not None:
            second.stop(grace=10)
    refused = [p for p in problems.unexpected() if "ERR_CONNECTION_REFUSED" not in p]
    assert refused == []
