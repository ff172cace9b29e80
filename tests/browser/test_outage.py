"""The job page in headless Chromium while Postgres stops answering, then answers again."""

from __future__ import annotations

from contextlib import contextmanager

import httpx
import pytest

from tests.browser.test_dashboard import SMALL_JOB, shoot
from tests.conftest import BACKEND

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        BACKEND != "postgres",
        reason="the outage is Postgres refusing connections to the test's database",
    ),
]


@contextmanager
def database_outage(url: str):
    """No connection to ``url``'s database opens, and every open one is cut, until exit."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')


def test_job_page_says_when_the_database_is_away_and_when_it_is_back(
    live_server, service_env, open_page, screenshots
):
    """A queued job's page is open; Postgres refuses the service's connections: the
    page says the database cannot be reached, keeps its content and its stream; the
    database comes back and the job is canceled: the page says live updates resumed
    and shows the canceled job, with no failed request, no console error and no
    traceback in the server's log."""
    created = httpx.post(
        f"{live_server.url}/api/v1/jobs",
        json={**SMALL_JOB, "method": "dyart"},
        headers=live_server.headers,
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    page, problems = open_page()
    token = live_server.headers["Authorization"].removeprefix("Bearer ")
    page.add_init_script(f"localStorage.setItem('dyart.token', {token!r})")
    page.goto(f"{live_server.url}/#/jobs/{job_id}")
    page.locator("#summary .badge-queued").wait_for()
    page.locator("#evaluations").filter(has_text="No evaluation yet.").wait_for()

    with database_outage(service_env["DYART_DATABASE_URL"]):
        page.locator("#status").filter(has_text="database unavailable").wait_for()
        assert page.locator("#summary .badge-queued").count() == 1  # what was shown stays
        shoot(page, screenshots, "job-database-away")
    page.locator("#status").filter(has_text="Live updates resumed.").wait_for()

    canceled = httpx.post(
        f"{live_server.url}/api/v1/jobs/{job_id}/cancel", headers=live_server.headers
    )
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled", canceled.text
    page.locator("#summary .badge-canceled").wait_for()
    page.locator("#status").filter(has_text="Job canceled.").wait_for()
    assert problems.unexpected() == []
    log = live_server.process.output()
    assert "Traceback" not in log
    assert "database unreachable" in log or "database unavailable" in log
