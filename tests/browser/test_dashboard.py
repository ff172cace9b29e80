"""The dashboard in real headless Chromium against a live API and a real worker."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.browser

SMALL_JOB = {
    "dataset": "digits",
    "architecture": "mlp",
    "burn_in_epochs": 1,
    "epochs": 3,
    "eval_preset": "fast",
    "eval_eps": [0.1],
    "eval_n": 100,
}
FINAL = {"succeeded", "failed", "canceled"}


def shoot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, server) -> None:
    """Open the dashboard without a token, get asked for one, enter it."""
    page.goto(f"{server.url}/#/jobs")
    page.locator("#token-input").wait_for(state="visible")
    page.fill("#token-input", server.headers["Authorization"].removeprefix("Bearer "))
    page.click("#token-form button[type=submit]")
    page.locator("#whoami").filter(has_text="signed in as").wait_for()


def fill_job_form(page, epochs: str) -> None:
    page.select_option("#field-dataset", "digits")
    page.select_option("#field-architecture", "mlp")
    page.select_option("#field-method", "dyart")
    page.fill("#field-name", "browser-dyart")
    page.fill("#field-hparams-iterations", "5")
    page.fill("#field-burn_in_epochs", "1")
    page.fill("#field-epochs", epochs)
    page.select_option("#field-eval_preset", "fast")
    page.fill("#field-eval_eps", "0.1")
    page.fill("#field-eval_n", "100")


def wait_final(server, job_id: str, timeout: float = 150.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/api/v1/jobs/{job_id}", headers=server.headers).json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def int_attr(page, selector: str, attr: str) -> int:
    value = page.locator(selector).first.get_attribute(attr)
    return int(float(value or 0))


def submit_and_watch(page, problems, shots: Path) -> str:
    """Bad epochs -> message next to the field; good form -> live detail page."""
    page.click("a[href='#/new']")
    page.locator("#job-form").wait_for()
    fill_job_form(page, epochs="0")
    assert page.locator("#field-hparams-r0").input_value() == "0.2"  # 2 x digits eps 0.1
    assert page.locator("#field-architecture option[value=preact_resnet18]").is_disabled()
    problems.allow(422, "/api/v1/jobs")
    page.click("#job-form button[type=submit]")
    error = page.locator("#err-epochs")
    error.filter(has_text=re.compile("epochs")).wait_for()
    assert page.locator("#field-epochs").get_attribute("aria-invalid") == "true"
    shoot(page, shots, "new-job")
    page.fill("#field-epochs", "3")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-zA-Z-]+$"))
    assert "queued" in page.locator("#status").inner_text()  # the notice follows the job
    page.locator("#summary progress").wait_for()
    start_progress = int_attr(page, "#summary progress", "value")
    start_points = int_attr(page, "#charts figure.chart-box", "data-points")
    page.wait_for_function(
        f"document.querySelector('#summary progress').value > {start_progress}"
        " || document.querySelector('#summary .badge-failed')",
        timeout=120_000,
    )
    failed = page.locator("#summary .badge-failed")
    assert failed.count() == 0, f"the job failed: {page.locator('#summary .error').inner_text()}"
    page.wait_for_function(
        f"document.querySelector('#charts figure.chart-box').dataset.points > {start_points}",
        timeout=120_000,
    )
    return page.url.rsplit("/", 1)[1]


def check_results(page, shots: Path, tmp_path: Path) -> None:
    """Finished job: AutoAttack table marked quick, a checkpoint that downloads intact."""
    page.locator("#summary .badge-succeeded").wait_for(timeout=150_000)
    page.locator("table.autoattack tbody tr").first.wait_for(timeout=60_000)
    page.locator(".warn", has_text="not comparable to leaderboard numbers").first.wait_for()
    item = page.locator("#checkpoints li.checkpoint").first
    item.wait_for()
    shown = item.locator("code.sha256").inner_text().strip()
    with page.expect_download() as info:
        item.locator("button[data-format=safetensors]").click()
    target = tmp_path / info.value.suggested_filename
    info.value.save_as(target)
    assert target.stat().st_size > 0
    assert hashlib.sha256(target.read_bytes()).hexdigest() == shown
    shoot(page, shots, "job-detail")  # the README's docs/dashboard.png is a copy of this shot


def check_compare(page, server, ids: list[str], shots: Path) -> None:
    assert "Job succeeded." in page.locator("#status").inner_text()
    page.evaluate(f"location.hash = '#/compare?ids={','.join(ids)}'")  # in-app navigation
    page.wait_for_function("document.getElementById('status').textContent === ''")
    rows = page.locator("table.compare-table tbody tr")
    rows.nth(1).wait_for()
    assert rows.count() == 2
    legend = page.locator("#app .charts figure").nth(1).locator(".legend li")
    assert legend.count() >= 4  # val clean + val PGD of each job
    assert page.locator(".side-by-side section.card").count() == 2
    shoot(page, shots, "compare")


def check_jobs_list(page, server, open_page, shots: Path) -> None:
    page.goto(f"{server.url}/#/jobs")
    page.locator("table.jobs tbody tr[data-job-id]").nth(1).wait_for()
    page.select_option("#f-method", "clean")
    page.wait_for_function(
        "document.querySelectorAll('table.jobs tbody tr[data-job-id]').length == 1"
    )
    page.select_option("#f-method", "")
    shoot(page, shots, "jobs")
    phone, phone_problems = open_page(width=390, height=844)
    token = server.headers["Authorization"].removeprefix("Bearer ")
    phone.add_init_script(f"localStorage.setItem('dyart.token', {token!r})")
    phone.goto(f"{server.url}/#/jobs")
    phone.locator("table.jobs tbody tr[data-job-id]").first.wait_for()
    shoot(phone, shots, "jobs-phone")
    assert phone_problems.unexpected() == []


def test_dashboard_end_to_end(live_server, worker_process, open_page, screenshots, tmp_path):
    page, problems = open_page()
    problems.allow(401, "/api/v1/me")
    sign_in(page, live_server)
    try:
        first = submit_and_watch(page, problems, screenshots)
    except Exception as error:
        shoot(page, screenshots, "failure")
        raise AssertionError(f"page problems: {problems.unexpected()}") from error
    body = {
        **SMALL_JOB,
        "name": "browser-clean",
        "method": "clean",
        "epochs": 2,
        "schedule": "cosine",
    }
    second = httpx.post(f"{live_server.url}/api/v1/jobs", json=body, headers=live_server.headers)
    assert second.status_code == 201, second.text
    check_results(page, screenshots, tmp_path)
    assert wait_final(live_server, second.json()["id"])["status"] == "succeeded"
    check_compare(page, live_server, [first, second.json()["id"]], screenshots)
    check_jobs_list(page, live_server, open_page, screenshots)
    assert problems.unexpected() == []


def test_form_errors_and_cancel_of_a_queued_job(live_server, open_page, screenshots):
    """No worker: a bad lr is shown next to its field; the queued job can be canceled."""
    page, problems = open_page()
    token = live_server.headers["Authorization"].removeprefix("Bearer ")
    page.add_init_script(f"localStorage.setItem('dyart.token', {token!r})")
    page.goto(f"{live_server.url}/#/new")
    page.locator("#job-form").wait_for()
    fill_job_form(page, epochs="3")
    page.fill("#field-lr", "100")
    problems.allow(422, "/api/v1/jobs")
    page.click("#job-form button[type=submit]")
    page.locator("#err-lr").filter(has_text="lr").wait_for()
    assert page.locator("#err-epochs").inner_text() == ""
    page.fill("#field-lr", "0.05")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-zA-Z-]+$"))
    page.locator("#summary .badge-queued").wait_for()
    page.click("#cancel")
    page.locator("#summary .badge-canceled").wait_for()
    assert page.locator("#resume").is_enabled()
    shoot(page, screenshots, "job-canceled")
    assert problems.unexpected() == []
