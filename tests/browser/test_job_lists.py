"""The jobs list and the compare page in headless Chromium against a live API:
paging past the first page (with filters kept), the compare picker's paging and
search, and compared jobs of different datasets. No worker runs."""

from __future__ import annotations

import re

import pytest

from db.models import Job
from tests.browser.test_dashboard import shoot
from tests.browser.test_job_page import add_failed_evaluation, cancel

pytestmark = pytest.mark.browser

ROWS = "table.jobs tbody tr[data-job-id]"


def names(page, selector: str) -> list[str]:
    return [n.strip() for n in page.locator(selector).all_inner_texts()]


def wait_rows(page, count: int, first: str) -> None:
    """Until the table shows ``count`` jobs, ``first`` at the top."""
    page.wait_for_function(
        "([sel, n, first]) => { const rows = document.querySelectorAll(sel);"
        " return rows.length === n && rows[0].querySelector('a').textContent === first; }",
        arg=[ROWS, count, first],
    )


def test_jobs_list_pages_past_fifty_and_keeps_its_filter(
    live_server, signed_in, submit_job, screenshots
):
    """52 DyART jobs and 3 clean ones (newest first): page 2 holds the oldest; with the
    method filter on, paging stays within DyART jobs, through the list's refreshes."""
    for i in range(52):
        submit_job(name=f"dy-{i:02d}")
    for i in range(3):
        submit_job(name=f"cl-{i}", method="clean")
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs")
    wait_rows(page, 50, "cl-2")
    assert page.locator("#jobs-where").inner_text() == "1–50 of 55"
    assert page.locator("#jobs-prev").is_disabled()
    page.click("#jobs-next")
    wait_rows(page, 5, "dy-04")
    assert names(page, f"{ROWS} td a") == ["dy-04", "dy-03", "dy-02", "dy-01", "dy-00"]
    assert page.locator("#jobs-next").is_disabled()

    page.select_option("#f-method", "dyart")  # a new filter starts at its first page
    wait_rows(page, 50, "dy-51")
    page.click("#jobs-next")
    wait_rows(page, 2, "dy-01")
    assert page.locator("#jobs-where").inner_text() == "51–52 of 52"
    page.wait_for_timeout(3500)  # the list refreshes every 3 s: same filter, same page
    assert names(page, f"{ROWS} td a") == ["dy-01", "dy-00"]
    shoot(page, screenshots, "jobs-page-2")
    page.click("#jobs-prev")
    wait_rows(page, 50, "dy-51")
    assert problems.unexpected() == []


def test_compare_picker_pages_and_searches(live_server, signed_in, submit_job):
    """The picker shows 20 jobs a page; a job beyond the first page is found by
    search, and a pick made on one page is kept on another."""
    jobs = [submit_job(name=f"run-{i:02d}") for i in range(25)]
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/compare")
    picks = page.locator(".pick-list label.pick")
    picks.nth(19).wait_for()
    assert picks.count() == 20 and "run-24" in picks.first.inner_text()
    page.check(f"#pick-{jobs[24]['id']}")
    page.click("#pick-next")
    page.locator(f"#pick-{jobs[0]['id']}").wait_for()
    assert picks.count() == 5
    page.fill("#pick-q", "run-03")
    page.wait_for_function("document.querySelectorAll('.pick-list label.pick').length === 1")
    page.check(f"#pick-{jobs[3]['id']}")
    page.click(".picker button[type=submit]")
    page.wait_for_url(re.compile(r"#/compare\?ids="))
    rows = page.locator("table.compare-table tbody tr")
    rows.nth(1).wait_for()
    shown = {rows.nth(i).get_attribute("data-job-id") for i in range(rows.count())}
    assert shown == {jobs[24]["id"], jobs[3]["id"]}
    assert problems.unexpected() == []


def test_compare_shows_datasets_and_warns_when_they_differ(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    digits, other = submit_job(name="on-digits"), submit_job(name="on-mnist")
    error = "AutoAttack stopped: the checkpoint file is missing"
    with session_factory() as session:
        row = session.get(Job, other["id"])
        row.dataset, row.config = "mnist10k", {**row.config, "dataset": "mnist10k"}
        session.commit()
    add_failed_evaluation(session_factory, other["id"], error, 0.3)
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/compare?ids={digits['id']},{other['id']}")
    page.locator("table.compare-table tbody tr").nth(1).wait_for()
    cells = names(page, "table.compare-table tbody td.dataset")
    assert cells == ["digits", "mnist10k"]
    warning = page.locator("#dataset-warning")
    assert warning.is_visible() and "digits, mnist10k" in warning.inner_text()
    card = page.locator(f".side-by-side section[data-job-id='{other['id']}']")
    assert card.locator(".eval-error").inner_text() == f"Evaluation failed: {error}"
    shoot(page, screenshots, "compare-datasets")

    same = submit_job(name="also-digits")
    page.goto(f"{live_server.url}/#/compare?ids={digits['id']},{same['id']}")
    page.locator("table.compare-table tbody tr").nth(1).wait_for()
    assert page.locator("#dataset-warning").count() == 0
    assert problems.unexpected() == []


def focused(page) -> dict:
    """Where the keyboard focus is: the element's tag, class and its row's job id."""
    return page.evaluate(
        "() => { const e = document.activeElement;"
        " return { tag: e.tagName, cls: e.className,"
        " job: e.closest('tr')?.dataset.jobId ?? null, checked: !!e.checked }; }"
    )


def test_list_refresh_keeps_focus_and_ticks(live_server, signed_in, submit_job, session_factory):
    """A ticked checkbox keeps the keyboard focus and its tick through the list's
    refreshes, also when a new job appears above its row."""
    jobs = [submit_job(name=f"keep-{i}") for i in range(3)]
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs")
    wait_rows(page, 3, "keep-2")
    box = page.locator(f"tr[data-job-id='{jobs[1]['id']}'] input[type=checkbox]")
    box.focus()
    page.keyboard.press("Space")
    submit_job(name="keep-new")  # the next refresh draws a row above the focused one
    wait_rows(page, 4, "keep-new")
    with session_factory() as session:  # and the focused row's own cells change
        session.get(Job, jobs[1]["id"]).status = "canceled"
        session.commit()
    page.locator(f"tr[data-job-id='{jobs[1]['id']}'] .badge-canceled").wait_for()
    assert focused(page) == {"tag": "INPUT", "cls": "pick", "job": jobs[1]["id"], "checked": True}
    page.click("#compare-selected")
    page.wait_for_url(re.compile(rf"#/compare\?ids={jobs[1]['id']}$"))
    assert problems.unexpected() == []


def test_list_filters_and_page_survive_back_and_reload(live_server, signed_in, submit_job):
    """The status filter and the page offset are in the address: Back from a job and
    a reload show the same filtered page."""
    for i in range(53):
        submit_job(name=f"q-{i:02d}")
    cancel(live_server, submit_job(name="c-0")["id"])
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs")
    wait_rows(page, 50, "c-0")
    page.select_option("#f-status", "queued")
    wait_rows(page, 50, "q-52")
    page.click("#jobs-next")
    wait_rows(page, 3, "q-02")
    page.wait_for_url(re.compile(r"#/jobs\?status=queued&offset=50$"))
    page.click(f"{ROWS} td a >> text=q-01")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-zA-Z-]+$"))
    page.locator("#summary").wait_for()
    page.go_back()
    wait_rows(page, 3, "q-02")
    assert page.locator("#f-status").input_value() == "queued"
    page.reload()
    wait_rows(page, 3, "q-02")
    assert page.locator("#jobs-where").inner_text() == "51–53 of 53"
    assert page.locator("#f-status").input_value() == "queued"
    assert problems.unexpected() == []


def test_empty_filter_and_empty_compare_say_why(live_server, signed_in, submit_job):
    submit_job(name="only-queued")
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs")
    wait_rows(page, 1, "only-queued")
    page.click("#compare-selected")
    page.locator("#compare-note").filter(has_text="Tick the jobs to compare").wait_for()
    assert "#/compare" not in page.url
    page.select_option("#f-status", "succeeded")
    empty = page.locator("table.jobs tbody tr.empty")
    empty.filter(has_text="No job matches these filters.").wait_for()
    assert "start one" not in empty.inner_text()
    assert problems.unexpected() == []


def test_list_says_when_its_refresh_fails_and_recovers(live_server, signed_in, submit_job):
    """The network goes away under the list: it says the connection is lost and that
    it retries, keeps the rows, and drops the line once the server answers again."""
    job = submit_job(name="still-here")
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs")
    wait_rows(page, 1, "still-here")
    lost = page.locator("#connection-lost")
    assert lost.is_hidden()
    page.context.set_offline(True)
    lost.filter(has_text="Connection lost, retrying").wait_for()
    assert page.locator(f"tr[data-job-id='{job['id']}']").count() == 1
    page.context.set_offline(False)
    lost.wait_for(state="hidden")
    offline = [p for p in problems.unexpected() if "ERR_INTERNET_DISCONNECTED" not in p]
    assert offline == []


def test_phone_width_shows_the_status_column(live_server, signed_in, submit_job):
    job = submit_job(name="phone")
    page, problems = signed_in(375, 812)
    page.goto(f"{live_server.url}/#/jobs")
    badge = page.locator(f"tr[data-job-id='{job['id']}'] .badge")
    badge.wait_for()
    box = badge.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 375, box
    assert problems.unexpected() == []


def test_compare_names_a_job_it_cannot_find_and_shows_the_others(
    live_server, signed_in, submit_job
):
    first, second = submit_job(name="here-1"), submit_job(name="here-2")
    page, problems = signed_in()
    problems.allow(404, "/api/v1/jobs/no-such-job")
    problems.allow(404, "/api/v1/jobs/no-such-job/metrics")
    problems.allow(404, "/api/v1/jobs/no-such-job/evaluations")
    page.goto(f"{live_server.url}/#/compare?ids={first['id']},no-such-job,{second['id']}")
    page.locator("#compare-missing").filter(has_text="no-such-job").wait_for()
    rows = page.locator("table.compare-table tbody tr")
    rows.nth(1).wait_for()
    assert rows.count() == 2
    assert problems.unexpected() == []
