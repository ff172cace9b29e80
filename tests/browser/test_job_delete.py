"""The job page's Delete button (DELETE /api/v1/jobs/<id>) in headless Chromium against
a live API: asked in the page, refused while the job or an evaluation of it is pending.

No worker runs: each job stays where the test puts it, through the API or its rows."""

from __future__ import annotations

import time

import httpx
import pytest

from db.models import Evaluation, Job
from tests.browser.test_job_page import cancel, set_stage

pytestmark = pytest.mark.browser
# frontend/js/detail.js EVAL_POLL_IDLE_MS: how often a finished job's evaluations are re-read
EVAL_POLL_IDLE_S = 10


def job_status(server, job_id: str) -> int:
    """The status code of GET /jobs/<id>."""
    return httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers=server.headers).status_code


def open_job(server, signed_in, job_id: str, shown: str):
    """The job's page, once ``#summary`` shows the badge of status ``shown``: (page, problems)."""
    page, problems = signed_in()
    page.goto(f"{server.url}/#/jobs/{job_id}")
    page.locator(f"#summary .badge-{shown}").wait_for()
    return page, problems


def deletes_sent(page) -> list[str]:
    """The URLs of the DELETE requests the page sends from now on (filled as they go)."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.method == "DELETE" else None)
    return sent


def test_delete_of_a_finished_job_asks_then_removes_it(live_server, signed_in, submit_job):
    """Keyboard only: Delete asks in the page, Keep (or Escape) keeps the job; Delete
    then Delete removes it. The list says so and lacks it; its page says not found."""
    kept = submit_job(name="kept")
    job = submit_job(name="doomed")
    cancel(live_server, job["id"])
    page, problems = open_job(live_server, signed_in, job["id"], "canceled")
    question = page.locator("#delete-confirm")
    assert question.is_hidden()
    page.locator("#delete").focus()
    page.keyboard.press("Enter")
    question.filter(has_text="Delete this job and its checkpoints?").wait_for()
    assert page.evaluate("document.activeElement.id") == "delete-keep"
    page.keyboard.press("Enter")  # Keep
    question.wait_for(state="hidden")
    assert page.evaluate("document.activeElement.id") == "delete"
    page.keyboard.press("Enter")
    question.wait_for()
    page.keyboard.press("Escape")
    question.wait_for(state="hidden")
    assert job_status(live_server, job["id"]) == 200
    page.keyboard.press("Enter")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "delete-yes"
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/#/jobs")
    page.locator("#status").filter(has_text="Job doomed deleted.").wait_for()
    page.locator(f"tr[data-job-id='{kept['id']}']").wait_for()
    assert page.locator(f"tr[data-job-id='{job['id']}']").count() == 0
    assert job_status(live_server, job["id"]) == 404
    problems.allow(404, f"/api/v1/jobs/{job['id']}")
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    error = page.locator("#page-error")
    error.wait_for()
    assert error.inner_text() == f"404: job {job['id']} not found"
    assert problems.unexpected() == []


def test_delete_is_unavailable_until_the_job_ends(
    live_server, signed_in, submit_job, session_factory
):
    """Queued, then running: Delete is marked unavailable, asks nothing and sends
    nothing; once the job has ended (seen over its stream) it is available."""
    job = submit_job()
    page, problems = open_job(live_server, signed_in, job["id"], "queued")
    sent = deletes_sent(page)
    button = page.locator("#delete")
    for status in ("queued", "running"):
        if status == "running":
            set_stage(session_factory, job["id"], "train", 1, step=1)
            page.locator("#summary .badge-running").wait_for()
        assert button.get_attribute("aria-disabled") == "true"
        button.focus()
        page.keyboard.press("Enter")
        button.click(force=True)  # past Playwright's own wait for an enabled button
        assert page.locator("#delete-confirm").is_hidden()
        assert page.evaluate("document.activeElement.id") == "delete"
    with session_factory() as session:
        session.get(Job, job["id"]).status = "failed"
        session.commit()
    page.locator("#summary .badge-failed").wait_for()
    page.locator("#delete[aria-disabled=false]").wait_for()
    assert sent == []
    assert problems.unexpected() == []


def test_delete_refused_shows_the_server_message(
    live_server, signed_in, submit_job, session_factory
):
    """An evaluation queued after the page loaded: the server's 409 is said in the
    status line, the job and its page stay, focus goes back to Delete."""
    job = submit_job()
    cancel(live_server, job["id"])
    page, problems = open_job(live_server, signed_in, job["id"], "canceled")
    with session_factory() as session:
        session.add(Evaluation(job_id=job["id"], status="queued", preset="fast", n=100, eps=[0.1]))
        session.commit()
    problems.allow(409, f"/api/v1/jobs/{job['id']}")
    page.click("#delete")
    page.click("#delete-yes")
    said = page.locator("#status").filter(has_text="not deleted")
    said.wait_for()
    detail = f"job {job['id']} has 1 evaluation(s) queued or running; cancel them first"
    assert said.inner_text() == f"Job not deleted: 409: {detail}"
    assert page.locator("#delete-confirm").is_hidden()
    assert page.evaluate("document.activeElement.id") == "delete"
    assert page.url.endswith(f"#/jobs/{job['id']}")
    assert job_status(live_server, job["id"]) == 200
    assert problems.unexpected() == []


def test_while_a_delete_is_on_its_way_the_page_reads_nothing_more_of_the_job(
    live_server, signed_in, submit_job
):
    """The server has deleted the job but its answer is still on its way (held here for
    longer than the page's idle re-read of the evaluations): the page asks nothing more
    of the job, so nothing answers 404, and it goes to the list when the answer comes."""
    job = submit_job(name="slow answer")
    cancel(live_server, job["id"])
    page, problems = open_job(live_server, signed_in, job["id"], "canceled")
    page.locator("#checkpoints li").first.wait_for()  # the page's first reads are done
    sent: list[tuple[str, str]] = []
    page.on("request", lambda r: sent.append((r.method, r.url)))

    def hold_the_answer(route) -> None:
        if route.request.method != "DELETE":
            route.continue_()
            return
        answer = route.fetch()  # the job is gone on the server from here on
        time.sleep(EVAL_POLL_IDLE_S + 1)
        route.fulfill(response=answer)

    page.route(f"**/api/v1/jobs/{job['id']}", hold_the_answer)
    page.click("#delete")
    page.click("#delete-yes")
    page.wait_for_url(f"{live_server.url}/#/jobs", timeout=30_000)
    page.locator("#status").filter(has_text="Job slow answer deleted.").wait_for()
    # reads sent before the DELETE (the re-read after the job's stream ended may still
    # be due when Delete is clicked) met a job that was there; none may follow it
    of_the_job = [(m, u) for m, u in sent if f"/jobs/{job['id']}" in u]
    deletes = [i for i, (method, _) in enumerate(of_the_job) if method == "DELETE"]
    assert len(deletes) == 1, of_the_job
    assert of_the_job[deletes[0] :] == [("DELETE", f"{live_server.url}/api/v1/jobs/{job['id']}")]
    assert job_status(live_server, job["id"]) == 404
    assert problems.unexpected() == []
