"""The job page (#/jobs/<id>) in headless Chromium against a live API: its log pane,
its stream after a resume, a failed evaluation, and where the job is in its stages.

No worker runs: each job stays where the test puts it, through the API or its rows."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from db import jobs
from db.models import Checkpoint, Evaluation, Job
from tests.browser.test_dashboard import shoot

pytestmark = pytest.mark.browser

MAX_LOG_LINES = 500  # frontend/js/logpane.js


def add_log(session_factory, job_id: str, messages: list[str]) -> None:
    with session_factory() as session:
        for message in messages:
            jobs.add_log(session, job_id, message)
        session.commit()


def shown_messages(page) -> list[str]:
    """The log pane's messages (each line is ``<ts> <level> <message>``)."""
    text = page.locator("#log").text_content() or ""
    return [line.split(" ", 2)[-1] for line in text.splitlines() if line]


def pane_ends_with(page, message: str) -> None:
    script = "m => (document.getElementById('log')?.textContent || '').trimEnd().endsWith(m)"
    page.wait_for_function(script, arg=message)


def cancel(server, job_id: str) -> None:
    answer = httpx.post(f"{server.url}/api/v1/jobs/{job_id}/cancel", headers=server.headers)
    assert answer.status_code == 202, answer.text


def open_canceled_job(live_server, signed_in, submit_job, session_factory, log: list[str]):
    """A job canceled with ``log`` in its log, open on its page once the page says so:
    ``(job, page, problems)``."""
    job = submit_job()
    cancel(live_server, job["id"])
    add_log(session_factory, job["id"], log)
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    page.locator("#status").filter(has_text="Job canceled.").wait_for()
    return job, page, problems


def add_failed_evaluation(session_factory, job_id: str, error: str, eps: float) -> None:
    with session_factory() as session:
        session.add(
            Evaluation(job_id=job_id, status="failed", preset="fast", n=100, eps=[eps], error=error)
        )
        session.commit()


def test_log_lines_shown_once_when_the_log_is_short(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    """A job with fewer lines than the pane holds: each line once, and a new line once."""
    job = submit_job()
    add_log(session_factory, job["id"], [f"early-{i:03d}" for i in range(30)])
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    pane_ends_with(page, "early-029")
    add_log(session_factory, job["id"], ["late-000"])
    pane_ends_with(page, "late-000")
    counts = Counter(m for m in shown_messages(page) if m.startswith(("early-", "late-")))
    assert len(counts) == 31 and set(counts.values()) == {1}, counts
    shoot(page, screenshots, "job-log")
    assert problems.unexpected() == []


def test_log_pane_keeps_the_last_lines_of_a_long_log(
    live_server, signed_in, submit_job, session_factory
):
    """A finished job with more lines than the stream sends in one poll: the pane
    ends with the log's last line and holds no more than its cap."""
    lines = [f"line-{i:04d}" for i in range(1200)]
    _, page, problems = open_canceled_job(
        live_server, signed_in, submit_job, session_factory, lines
    )
    pane_ends_with(page, "line-1199")
    shown = shown_messages(page)
    assert len(shown) == MAX_LOG_LINES
    assert shown == [f"line-{i:04d}" for i in range(1200 - MAX_LOG_LINES, 1200)]
    assert problems.unexpected() == []


@pytest.mark.parametrize("old_form_id", [None, "81234-95678"], ids=["own-id", "old-form-id"])
def test_resume_follows_the_job_again(
    live_server, signed_in, submit_job, session_factory, old_form_id
):
    """The stream ends with a canceled job; after Resume the page follows the new run
    (here: canceled again from outside) without showing old log lines twice.

    With ``old_form_id``, the reconnect carries an event id of the form before per-job
    numbers (``<row id>-<row id>``), as a tab open across that upgrade sends: the server
    cannot read it and sends the job from its first row, and each line still shows once.
    """
    sent_ids: list[str] = []

    def old_form(route) -> None:
        headers = dict(route.request.headers)
        if "last-event-id" in headers:
            sent_ids.append(headers["last-event-id"])
            headers["last-event-id"] = old_form_id
        route.continue_(headers=headers)

    before = [f"before-{i}" for i in range(5)]
    job, page, problems = open_canceled_job(
        live_server, signed_in, submit_job, session_factory, before
    )
    pane_ends_with(page, "before-4")
    if old_form_id:
        page.route("**/events*", old_form)
    page.click("#resume")
    page.locator("#summary .badge-queued").wait_for()
    add_log(session_factory, job["id"], ["after-resume"])
    pane_ends_with(page, "after-resume")
    cancel(live_server, job["id"])
    page.locator("#summary .badge-canceled").wait_for(timeout=15_000)
    page.locator("#status").filter(has_text="Job canceled.").wait_for()
    if old_form_id:
        assert sent_ids and sent_ids[0].endswith(".5")  # the page resumed after line 5
    counts = Counter(m for m in shown_messages(page) if m.startswith(("before-", "after-")))
    assert len(counts) == 6 and set(counts.values()) == {1}, counts
    assert problems.unexpected() == []


def test_failed_evaluation_shows_its_error(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    job = submit_job()
    cancel(live_server, job["id"])
    error = "AutoAttack stopped: CUDA out of memory while attacking eps 0.1"
    add_failed_evaluation(session_factory, job["id"], error, 0.1)
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    shown = page.locator("#evaluations .eval-error")
    shown.wait_for()
    assert shown.inner_text() == f"Evaluation failed: {error}"
    shoot(page, screenshots, "evaluation-failed")
    assert problems.unexpected() == []


def set_stage(
    session_factory, job_id: str, stage: str, epoch: int, step: int | None = None
) -> None:
    """Puts the job, running, at ``stage``/``epoch``; ``step`` None: between epochs."""
    with session_factory() as session:
        row = session.get(Job, job_id)
        row.status, row.stage, row.epoch, row.step = "running", stage, epoch, step
        row.started_at = row.started_at or datetime.now(UTC) - timedelta(minutes=2)
        session.commit()


def test_epoch_is_counted_against_its_stage(live_server, signed_in, submit_job, session_factory):
    """One burn-in epoch and six training epochs: the last one is "epoch 6 of 6"; an
    epoch that runs and one that is done read differently."""
    job = submit_job(burn_in_epochs=1, epochs=6)
    set_stage(session_factory, job["id"], "train", 6)
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    stage = page.locator("#summary #stage")
    stage.filter(has_text="train").wait_for()
    assert stage.inner_text() == "train, epoch 6 of 6 done"
    set_stage(session_factory, job["id"], "burn_in", 1, step=3)  # seen live, over the stream
    stage.filter(has_text="burn_in").wait_for()
    assert stage.inner_text() == "burn_in, epoch 1 of 1 running"
    set_stage(session_factory, job["id"], "burn_in", 1)
    stage.filter(has_text="done").wait_for()
    assert stage.inner_text() == "burn_in, epoch 1 of 1 done"
    assert problems.unexpected() == []


def _seconds(text: str) -> int:
    """ "2m 5s" / "1h 3m" / "40s" -> seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(part[:-1]) * units[part[-1]] for part in text.split())


def test_a_running_jobs_elapsed_time_goes_on_between_its_events(
    live_server, signed_in, submit_job, session_factory
):
    """The stream sends the job only when something else about it changes; the page's
    elapsed time still moves on, from what the server said, and is not announced."""
    job = submit_job(epochs=6)
    set_stage(session_factory, job["id"], "train", 2, step=5)  # started two minutes ago
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    elapsed = page.locator("#summary #elapsed")
    elapsed.wait_for()
    first = elapsed.inner_text()
    assert _seconds(first) >= 120
    assert elapsed.get_attribute("aria-live") == "off"  # the summary is live: not each second
    page.wait_for_function(
        "first => document.querySelector('#summary #elapsed').textContent !== first", arg=first
    )
    assert _seconds(elapsed.inner_text()) > _seconds(first)
    assert page.locator("#summary #stage").inner_text() == "train, epoch 2 of 6 running"
    assert problems.unexpected() == []


def test_autoattack_stage_says_it_runs_instead_of_no_time_left(
    live_server, signed_in, submit_job, session_factory
):
    """While AutoAttack runs the API knows no time left (eta null): the page and the
    list say AutoAttack is running, with no full bar, "0s" or "evaluate 0"."""
    job = submit_job()
    set_stage(session_factory, job["id"], "evaluate", 0, step=0)
    shown = httpx.get(f"{live_server.url}/api/v1/jobs/{job['id']}", headers=live_server.headers)
    assert shown.json()["eta_seconds"] is None
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    page.locator("#summary #stage").filter(has_text="AutoAttack running").wait_for()
    remaining = page.locator("#summary .fact", has=page.locator("dt", has_text="Remaining"))
    assert remaining.locator("dd").inner_text() == "AutoAttack running"
    assert page.locator("#summary progress").get_attribute("value") is None  # indeterminate
    page.goto(f"{live_server.url}/#/jobs")
    row = page.locator(f"tr[data-job-id='{job['id']}']")
    row.wait_for()
    text = row.inner_text()
    cells = text.split("\t")  # "0s" as a whole cell: an elapsed "2m 0s" is fine
    assert "AutoAttack running" in cells and "evaluate 0" not in text and "0s" not in cells
    assert problems.unexpected() == []


def test_keyboard_focus_stays_on_cancel(live_server, signed_in, submit_job, session_factory):
    """Focus on Cancel of a running job stays there through the job's events, and
    after Enter on it (the cancel is then requested, the button marked unavailable)."""
    job = submit_job(epochs=6)
    set_stage(session_factory, job["id"], "train", 1, step=1)
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    stage = page.locator("#summary #stage")
    stage.filter(has_text="epoch 1 of 6").wait_for()
    page.locator("#cancel").focus()
    set_stage(session_factory, job["id"], "train", 2, step=1)  # a job event redraws the page
    stage.filter(has_text="epoch 2 of 6").wait_for()
    assert page.evaluate("document.activeElement.id") == "cancel"
    page.keyboard.press("Enter")
    page.locator("#status").filter(has_text="Job cancel requested.").wait_for()
    page.locator("#cancel[aria-disabled=true]").wait_for()
    assert page.evaluate("document.activeElement.id") == "cancel"
    assert problems.unexpected() == []


def test_summary_keeps_each_label_with_its_value(live_server, signed_in, submit_job):
    """At 1280 px each value sits right under its own label (same column), never in
    the next cell of the grid."""
    job = submit_job()
    page, problems = signed_in(1280, 900)
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    page.locator("#summary dl.facts dd").first.wait_for()
    pairs = page.evaluate(
        "() => [...document.querySelectorAll('#summary dl.facts dt')].map(dt => {"
        " const dd = dt.nextElementSibling, a = dt.getBoundingClientRect(),"
        " b = dd.getBoundingClientRect();"
        " return [dt.textContent, Math.round(a.left) === Math.round(b.left),"
        " b.top >= a.bottom - 1];"
        " })"
    )
    assert len(pairs) == 6 and all(same and below for _, same, below in pairs), pairs
    assert problems.unexpected() == []


def test_a_failed_download_says_why_in_the_server_words(
    live_server, signed_in, submit_job, session_factory, settings
):
    """The checkpoint's file goes away after the page listed it: the download's
    error shows the server's message, not only the status line's "Not Found"."""
    job = submit_job()
    cancel(live_server, job["id"])
    weights = Path(settings.artifacts_dir) / job["id"] / "final.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"0")
    with session_factory() as session:
        row = Checkpoint(
            job_id=job["id"],
            kind="final",
            stage="train",
            epoch=3,
            path=f"{job['id']}/final.safetensors",
            size=1,
            sha256="00" * 32,
        )
        session.add(row)
        session.commit()
        checkpoint_id = row.id
    page, problems = signed_in()
    problems.allow(404, f"/checkpoints/{checkpoint_id}/download")
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    button = page.locator("#checkpoints button[data-format=safetensors]")
    button.wait_for()
    weights.unlink()
    button.click()
    said = page.locator("#checkpoints li.checkpoint span.muted")
    said.filter(has_text="not found").wait_for()
    assert said.inner_text() == f"404: safetensors file of checkpoint {checkpoint_id} not found"
    assert problems.unexpected() == []
