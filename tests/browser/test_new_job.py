"""The new-job form (#/new) in headless Chromium against a live API: what the user
typed survives a change of method, and a number the browser cannot read is an error
on its field, not a silent default. No worker runs."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.browser.test_dashboard import shoot

pytestmark = pytest.mark.browser


def test_edited_values_survive_a_change_of_method(live_server, signed_in, screenshots):
    page, problems = signed_in()
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(f"{live_server.url}/#/new")
    page.locator("#job-form").wait_for()
    page.select_option("#field-dataset", "digits")
    page.select_option("#field-architecture", "mlp")
    page.select_option("#field-method", "trades")
    page.fill("#field-hparams-beta", "3")
    page.fill("#field-hparams-steps", "7")
    page.fill("#field-epochs", "4")
    page.fill("#field-eval_n", "100")
    page.select_option("#field-eval_preset", "fast")

    page.select_option("#field-method", "mart")  # beta and steps exist here too
    assert page.locator("#hparams legend").inner_text().startswith("MART")
    assert page.locator("#field-hparams-beta").input_value() == "3"
    assert page.locator("#field-hparams-steps").input_value() == "7"
    assert page.locator("#field-hparams-eps").input_value() == "0.1"  # untouched: digits' default
    page.select_option("#field-method", "dyart")  # no beta here; back on trades it is still 3
    assert page.locator("#field-hparams-beta").count() == 0
    page.select_option("#field-method", "trades")
    assert page.locator("#field-hparams-beta").input_value() == "3"
    assert page.locator("#field-epochs").input_value() == "4"
    assert page.locator("#field-eval_preset").input_value() == "fast"

    page.locator("#field-hparams-beta").fill("")
    page.locator("#field-hparams-beta").press_sequentially("0,3")  # typed as a person would
    page.locator("#field-lr").fill("")
    page.locator("#field-lr").press_sequentially("1e")
    page.click("#job-form button[type=submit]")
    page.locator("#err-lr").filter(has_text='"1e" is not a number').wait_for()
    assert "not a comma" in page.locator("#err-hparams-beta").inner_text()
    for field in ("#field-lr", "#field-hparams-beta"):
        assert page.locator(field).get_attribute("aria-invalid") == "true"
    shoot(page, screenshots, "new-job-not-a-number")
    assert posts == []  # nothing was sent, neither with defaults nor with beta 3

    page.fill("#field-hparams-beta", "3")
    page.fill("#field-lr", "0.05")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-zA-Z-]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    job = httpx.get(f"{live_server.url}/api/v1/jobs/{job_id}", headers=live_server.headers).json()
    config = job["config"]
    assert config["method"] == "trades" and config["epochs"] == 4 and config["lr"] == 0.05
    assert config["hparams"]["beta"] == 3 and config["hparams"]["steps"] == 7
    assert problems.unexpected() == []


def test_blank_eval_eps_means_no_evaluation(live_server, signed_in):
    """eval_eps's help says empty = no evaluation: a cleared field sends [] (not the
    dataset's default radii), and the job is made without an AutoAttack stage."""
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/new")
    page.locator("#job-form").wait_for()
    assert "empty = no evaluation" in page.locator("#help-eval_eps").inner_text()
    page.select_option("#field-dataset", "digits")
    page.select_option("#field-architecture", "mlp")
    page.fill("#field-eval_eps", "")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-zA-Z-]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    job = httpx.get(f"{live_server.url}/api/v1/jobs/{job_id}", headers=live_server.headers).json()
    assert job["config"]["eval_eps"] == []
    assert problems.unexpected() == []


def test_new_job_page_fits_a_phone(live_server, signed_in):
    """At 375 px the form does not scroll sideways."""
    page, problems = signed_in(375, 812)
    page.goto(f"{live_server.url}/#/new")
    page.locator("#job-form fieldset#train-params .field").first.wait_for()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    assert problems.unexpected() == []


def test_a_new_job_starts_from_another_jobs_settings(
    live_server, signed_in, submit_job, screenshots
):
    """ "New job from this…" on a job's page opens the form with that job's dataset,
    architecture, method, hyperparameters and training settings; changing one and
    starting makes a job whose config differs from the first only there."""
    first = submit_job(
        name="base", method="trades", lr=0.03, epochs=4, eval_eps=[0.05, 0.1],
        hparams={"beta": 3.0, "steps": 7, "eps": 0.2}, precision="bf16",
    )  # fmt: skip
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{first['id']}")
    page.click("#again")
    page.locator("#form-source").filter(has_text="Settings from job base").wait_for()
    assert page.locator("#field-name").input_value() == "base (again)"
    picked = {f: page.locator(f"#field-{f}").input_value() for f in ("dataset", "architecture")}
    picked["method"] = page.locator("#field-method").input_value()
    assert picked == {"dataset": "digits", "architecture": "mlp", "method": "trades"}
    assert page.locator("#field-hparams-beta").input_value() == "3"
    assert page.locator("#field-hparams-steps").input_value() == "7"
    assert page.locator("#field-lr").input_value() == "0.03"
    assert page.locator("#field-epochs").input_value() == "4"
    assert page.locator("#field-eval_eps").input_value() == "0.05, 0.1"
    assert page.locator("#field-precision").input_value() == "bf16"
    shoot(page, screenshots, "new-job-from-another")
    # another dataset: the copied eps-like values give way to its defaults, the rest stay
    catalog = httpx.get(f"{live_server.url}/api/v1/catalog", headers=live_server.headers).json()
    mnist = next(d for d in catalog["datasets"] if d["name"] == "mnist10k")
    page.select_option("#field-dataset", "mnist10k")
    assert float(page.locator("#field-hparams-eps").input_value()) == mnist["eps"]
    shown = page.locator("#field-eval_eps").input_value()
    assert [float(e) for e in shown.split(", ")] == mnist["eval_eps"]
    assert page.locator("#field-hparams-beta").input_value() == "3"
    assert page.locator("#field-lr").input_value() == "0.03"
    page.select_option("#field-dataset", "digits")  # back: the copied job's values again
    assert page.locator("#field-hparams-eps").input_value() == "0.2"
    assert page.locator("#field-eval_eps").input_value() == "0.05, 0.1"

    page.fill("#field-lr", "0.04")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-zA-Z-]+$"))
    second_id = page.url.rsplit("/", 1)[1]
    assert second_id != first["id"]
    second = httpx.get(
        f"{live_server.url}/api/v1/jobs/{second_id}", headers=live_server.headers
    ).json()
    assert second["name"] == "base (again)" and second["config"]["lr"] == 0.04
    assert {**second["config"], "lr": 0.03} == first["config"]

    problems.allow(404, "/jobs/nosuchjob")
    page.goto(f"{live_server.url}/#/new?from=nosuchjob")  # deleted, mistyped or not yours
    note = page.locator("#form-source")
    note.wait_for()
    assert note.inner_text() == (
        "Job nosuchjob was not found (deleted, mistyped, or not yours): "
        "the form shows the defaults."
    )
    assert page.locator("#field-name").input_value() == ""
    assert problems.unexpected() == []
