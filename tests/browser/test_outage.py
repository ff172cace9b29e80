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
    """A queued job's page follows the job while Postgres refuses the service's
    connections, twice: once when the page's stream is being opened (it is refused
    with 503), once when it is open (it says ``unavailable``). Each time the page keeps
    what it shows and says the database cannot be reached, then that live updates
    resumed; at the end it shows the job canceled, with no console error, no request
    failed but the 503, and no traceback in the server's log."""
    body = {**SMALL_JOB, "method": "dyart"}
    created = httpx.post(f"{live_server.url}/api/v1/jobs", json=body, headers=live_server.headers)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    database = service_env["DYART_DATABASE_URL"]
    status = "#status"
    page, problems = open_page()
    problems.allow(503, "/events")
    token = live_server.headers["Authorization"].removeprefix("Bearer ")
    page.add_init_script(f"localStorage.setItem('dyart.token', {token!r})")
    held, released = [], []

    def hold_first_stream(route) -> None:
        route.continue_() if released else held.append(route)

    page.route("**/api/v1/jobs/*/events*", hold_first_stream)
    page.goto(f"{live_server.url}/#/jobs/{job_id}")
    page.locator("#summary .badge-queued").wait_for()
    while not held:  # the page has asked for its stream; the request waits here
        page.wait_for_timeout(50)

    with database_outage(database):  # the stream is refused: 503
        released.append(True)
        held[0].continue_()
        page.locator(status).filter(has_text="database unavailable").wait_for()
        assert page.locator("#summary .badge-queued").count() == 1  # what was shown stays
    page.locator(status).filter(has_text="Live updates resumed.").wait_for()

    page.evaluate(f"document.querySelector({status!r}).textContent = ''")
    with database_outage(database):  # the open stream's polls fail: ``unavailable``
        page.locator(status).filter(has_text="database unavailable").wait_for()
        shoot(page, screenshots, "job-database-away")
    page.locator(status).filter(has_text="Live updates resumed.").wait_for()

    canceled = httpx.post(
        f"{live_server.url}/api/v1/jobs/{job_id}/cancel", headers=live_server.headers
    )
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled", canceled.text
    page.locator("#summary .badge-canceled").wait_for()
    page.locator(status).filter(has_text="Job canceled.").wait_for()
    assert problems.unexpected() == []
    log = live_server.process.output()
    assert "Traceback" not in log
    assert "database unreachable" in log and "database unavailable on GET" in log
