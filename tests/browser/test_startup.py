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


JOBS = "table.jobs tbody tr[data-job-id]"


def test_forget_leaves_the_job_list(live_server, signed_in, submit_job):
    """After Forget no job of the forgotten token stays on screen."""
    submit_job(name="private")
    page, problems = signed_in()
    problems.allow(401, "/api/v1/me")
    page.goto(f"{live_server.url}/#/jobs")
    page.locator(JOBS).first.wait_for()
    page.click("#settings-btn")
    page.click("#token-clear")
    page.locator("#signed-out").filter(has_text="needs an API token").wait_for()
    assert page.locator("table.jobs").count() == 0
    assert page.locator("#whoami").inner_text() == ""
    assert page.locator("#status").inner_text() == "Token forgotten."
    assert problems.unexpected() == []


def test_a_revoked_token_signs_the_page_out(
    live_server, signed_in, submit_job, session_factory, make_user
):
    """A token revoked while the list is open: the next refresh's 401 signs the page
    out with the server's reason; nothing of the list stays, nor the user's name. A
    new token then brings the list back."""
    from db import tokens

    submit_job(name="before-revoke")
    page, problems = signed_in()
    for path in ("/api/v1/jobs", "/api/v1/me", "/api/v1/health"):
        problems.allow(401, path)
    page.goto(f"{live_server.url}/#/jobs")
    page.locator(JOBS).first.wait_for()
    page.locator("#whoami").filter(has_text="signed in as").wait_for()
    token = live_server.headers["Authorization"].removeprefix("Bearer ")
    with session_factory() as session:
        tokens.revoke_user_tokens(session, tokens.user_for_token(session, token))
        session.commit()
    out = page.locator("#signed-out")
    out.filter(has_text="invalid or revoked token").wait_for()
    assert page.locator("#whoami").inner_text() == ""
    assert page.locator("#app .filters, #app table, #app .pager").count() == 0
    assert page.locator("#settings").is_visible()
    _, fresh = make_user("after-revoke")
    page.fill("#token-input", fresh)
    page.click("#token-form button[type=submit]")
    page.locator("#whoami").filter(has_text="signed in as after-revoke").wait_for()
    page.locator("table.jobs").wait_for()
    assert problems.unexpected() == []


def test_a_page_that_cannot_load_is_tried_again(live_server, signed_in, submit_job):
    """The network is gone when a job's page opens: the page says the server cannot
    be reached and that it tries again, and shows the job once it answers."""
    job = submit_job(name="comes-back")
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs")
    page.locator(JOBS).first.wait_for()
    page.context.set_offline(True)
    page.evaluate(f"location.hash = '#/jobs/{job['id']}'")
    page.locator("#startup-error").filter(has_text="server cannot be reached").wait_for()
    assert "Trying again every" in page.locator("#app").inner_text()
    page.context.set_offline(False)
    page.locator("#summary .badge-queued").wait_for()
    assert page.locator("#startup-error").count() == 0
    offline = [p for p in problems.unexpected() if "ERR_INTERNET_DISCONNECTED" not in p]
    assert offline == []


def test_job_stream_says_when_the_connection_is_lost(service_env, make_user, open_page, tmp_path):
    """The server goes away under an open job page: the page says the connection is
    lost and that it retries, then that live updates resumed once a server is back."""
    _, token = make_user("stream")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = serve(service_env, port, tmp_path / "api-1.log")
    second = None
    body = {"dataset": "digits", "architecture": "mlp", "method": "clean", "eval_preset": "fast"}
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{url}/api/v1/jobs", json=body, headers=headers)
    assert created.status_code == 201, created.text
    page, problems = open_page()
    page.add_init_script(f"localStorage.setItem('dyart.token', {token!r})")
    try:
        with page.expect_response(lambda r: r.url.split("?")[0].endswith("/events")):
            page.goto(f"{url}/#/jobs/{created.json()['id']}")  # the stream is open
        page.locator("#summary .badge-queued").wait_for()
        first.stop(grace=10)
        page.locator("#status").filter(has_text="Connection to the server lost").wait_for()
        second = serve(service_env, port, tmp_path / "api-2.log")
        page.locator("#status").filter(has_text="Live updates resumed.").wait_for()
    finally:
        first.stop(grace=10)
        if second is not None:
            second.stop(grace=10)
    gone = ("ERR_CONNECTION_REFUSED", "ERR_INCOMPLETE_CHUNKED_ENCODING")  # the server stopped
    assert [p for p in problems.unexpected() if not any(g in p for g in gone)] == []
