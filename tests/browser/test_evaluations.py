"""AutoAttack evaluations on the job page and the compare page, in headless Chromium
against a live API: which numbers the compare table takes, what each evaluation is
called (leaderboard-grade, quick, pending, failed, canceled), telling evaluations apart
on the robust-vs-eps chart, and an evaluation asked for after the job's stream ended.

No worker runs: evaluations are asked for through the API (and stay queued) or are
written as rows, in the states a worker would leave them."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from db.jobs import record_metric
from db.models import Checkpoint, Evaluation, utcnow
from tests.browser.test_dashboard import shoot
from tests.browser.test_job_page import cancel

pytestmark = pytest.mark.browser

# digits' full test set (DatasetCard.test_size): the standard preset at this n is leaderboard-grade
FULL_DIGITS = 360


def result(eps: float, robust: float, clean: float = 0.9) -> dict:
    return {"eps": eps, "clean_acc": clean, "robust_acc": robust, "per_attack": {"apgd-ce": robust}}


def add_evaluation(session_factory, job_id: str, minutes_ago: float, **fields) -> str:
    """An evaluation row of ``job_id`` asked for ``minutes_ago``; succeeded unless told."""
    fields.setdefault("status", "succeeded")
    fields.setdefault("preset", "fast")
    fields.setdefault("n", 100)
    fields.setdefault("results", [])
    fields.setdefault("eps", [r["eps"] for r in fields["results"]] or [0.1])
    with session_factory() as session:
        row = Evaluation(
            job_id=job_id, created_at=utcnow() - timedelta(minutes=minutes_ago), **fields
        )
        session.add(row)
        session.commit()
        return row.id


def set_evaluation(session_factory, evaluation_id: str, **fields) -> None:
    with session_factory() as session:
        row = session.get(Evaluation, evaluation_id)
        for key, value in fields.items():
            setattr(row, key, value)
        session.commit()


def add_checkpoint(session_factory, job_id: str, kind: str, epoch: int) -> str:
    with session_factory() as session:
        row = Checkpoint(
            job_id=job_id,
            kind=kind,
            stage="train",
            epoch=epoch,
            path=f"{job_id}/{kind}.safetensors",
            size=1,
            sha256=f"{epoch:02d}" * 32,
        )
        session.add(row)
        session.commit()
        return row.id


def ask_evaluation(server, job_id: str, **body) -> dict:
    body = {"eps": [0.1], "preset": "fast", "n": 100, **body}
    answer = httpx.post(
        f"{server.url}/api/v1/jobs/{job_id}/evaluations", json=body, headers=server.headers
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


def texts(locator) -> list[str]:
    return [t.strip() for t in locator.all_inner_texts()]


def test_compare_takes_each_eps_from_the_best_grade_evaluation(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    """A quick fast n=100 run newer than the job's full standard run does not replace
    its numbers; eps only an older evaluation has keep their column; each number says
    which evaluation it came from, and quick ones are never shown as leaderboard ones."""
    job = submit_job(name="graded")
    other = submit_job(name="no-results")
    custom = add_evaluation(
        session_factory, job["id"], 40, preset="custom", n=200, results=[result(0.3, 0.30)]
    )
    standard = add_evaluation(
        session_factory,
        job["id"],
        30,
        preset="standard",
        n=FULL_DIGITS,
        results=[result(0.1, 0.61, clean=0.95)],
    )
    fast = add_evaluation(
        session_factory, job["id"], 10, results=[result(0.1, 0.70), result(0.2, 0.50)]
    )
    add_evaluation(session_factory, job["id"], 5, status="queued", preset="standard", n=360)
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/compare?ids={job['id']},{other['id']}")
    row = page.locator(f"table.compare-table tbody tr[data-job-id='{job['id']}']")
    row.wait_for()
    heads = texts(page.locator("table.compare-table thead th"))
    assert heads == [
        "job",
        "dataset",
        "method",
        "clean",
        "robust @ 0.1",
        "robust @ 0.2",
        "robust @ 0.3",
        "from evaluations",
    ]
    cells = row.locator("td")
    # clean and robust @ 0.1 from the leaderboard-grade standard run, not the newer fast one
    assert cells.nth(2).get_attribute("data-evaluation-id") == standard
    assert cells.nth(2).inner_text().startswith("95.0%")
    assert cells.nth(3).get_attribute("data-evaluation-id") == standard
    assert cells.nth(3).inner_text().startswith("61.0%")
    assert "not-leaderboard" not in (cells.nth(3).get_attribute("class") or "")
    assert cells.nth(4).get_attribute("data-evaluation-id") == fast
    assert cells.nth(4).inner_text().startswith("50.0%")
    assert "not-leaderboard" in (cells.nth(4).get_attribute("class") or "")
    assert cells.nth(5).get_attribute("data-evaluation-id") == custom
    assert cells.nth(5).inner_text().startswith("30.0%")
    sources = row.locator("td.from li")
    assert [sources.nth(i).get_attribute("data-evaluation-id") for i in range(3)] == [
        standard,
        custom,
        fast,
    ]
    shown = texts(sources)
    assert "preset standard, n = 360" in shown[0] and "leaderboard-grade" in shown[0]
    assert "preset custom, n = 200" in shown[1] and "quick" in shown[1]
    assert "preset fast, n = 100" in shown[2] and "quick" in shown[2]
    assert "quick" not in shown[0]
    # each number is marked with the letter of the evaluation it came from
    assert [cells.nth(i).locator("sup").inner_text() for i in (2, 3, 4, 5)] == [
        "a",
        "a",
        "c",
        "b",
    ]
    other_row = page.locator(f"table.compare-table tbody tr[data-job-id='{other['id']}']")
    assert other_row.locator("td.from").inner_text().strip() == "no results yet"
    assert page.locator("#dataset-warning").count() == 0
    card = page.locator(f".side-by-side section[data-job-id='{job['id']}'] .eval-note")
    assert [card.nth(i).get_attribute("data-grade") for i in range(4)] == [
        "pending",
        "quick",
        "leaderboard",
        "quick",
    ]
    shoot(page, screenshots, "compare-grades")
    phone, phone_problems = signed_in(390, 844)
    phone.goto(page.url)
    phone.locator("table.compare-table tbody tr").nth(1).wait_for()
    shoot(phone, screenshots, "compare-grades-phone")
    assert problems.unexpected() == [] and phone_problems.unexpected() == []


def test_only_a_finished_evaluation_is_called_quick(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    """Queued and running evaluations are pending, a failed one failed, a canceled one
    canceled; "quick evaluation" is said of the succeeded fast run alone."""
    job = submit_job(name="states")
    cancel(live_server, job["id"])
    checkpoint = add_checkpoint(session_factory, job["id"], "best", 3)
    standard = {"preset": "standard", "n": FULL_DIGITS, "checkpoint_id": checkpoint}
    ids = {
        "queued": add_evaluation(session_factory, job["id"], 50, status="queued", **standard),
        "running": add_evaluation(
            session_factory, job["id"], 40, status="running", lease_owner="w1", **standard
        ),
        "failed": add_evaluation(
            session_factory, job["id"], 30, status="failed", error="out of memory", **standard
        ),
        "canceled": add_evaluation(session_factory, job["id"], 20, status="canceled", **standard),
        "succeeded": add_evaluation(session_factory, job["id"], 10, results=[result(0.1, 0.4)]),
    }
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    page.locator("#evaluations .evaluation").nth(4).wait_for()
    sections = {s: page.locator(f"#evaluations .evaluation[data-status='{s}']") for s in ids}
    notes = {s: section.locator("p").first.inner_text() for s, section in sections.items()}
    assert notes["queued"].startswith("pending — AutoAttack queued (preset standard, n = 360")
    assert notes["running"].startswith("pending — AutoAttack running (preset standard, n = 360")
    assert notes["failed"].startswith("failed — ")
    assert notes["canceled"].startswith("canceled — ")
    assert notes["succeeded"].startswith("quick evaluation — 100 images, preset fast")
    quick = [s for s, note in notes.items() if "quick evaluation" in note]
    assert quick == ["succeeded"]
    assert "not comparable" not in "".join(n for s, n in notes.items() if s != "succeeded")
    shown = {s: section.get_attribute("data-evaluation-id") for s, section in sections.items()}
    assert shown == ids
    buttons = {
        s: section.locator("button.cancel-evaluation").count() for s, section in sections.items()
    }
    assert buttons == {"queued": 1, "running": 1, "failed": 0, "canceled": 0, "succeeded": 0}
    # rows written without the weights they evaluate (an older server): no checkpoint named
    assert "checkpoint" not in page.locator("#evaluations").inner_text()
    shoot(page, screenshots, "evaluation-states")
    assert problems.unexpected() == []


MASKING = (
    "some inputs have a zero gradient of the logit margin: gradient-based attacks see nothing "
    "there and robustness looks higher than it is; check for gradient masking"
)


def test_an_evaluations_warnings_stand_beside_its_numbers(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    """A model that drew a warning before the attacks (here gradient masking) has it shown
    in its evaluation, on the job page and the compare page, not only in the log; an
    evaluation without one shows none."""
    job = submit_job(name="masked")
    cancel(live_server, job["id"])
    warned = add_evaluation(
        session_factory, job["id"], 20, results=[result(0.1, 0.8)], warnings=[MASKING]
    )
    clean = add_evaluation(session_factory, job["id"], 10, results=[result(0.1, 0.4)])
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    section = page.locator(f"#evaluations [data-evaluation-id='{warned}']")
    section.locator(".eval-warning").wait_for()
    assert texts(section.locator(".eval-warning")) == [f"Warning: {MASKING}"]
    assert section.locator(".eval-warning").get_attribute("role") == "note"
    other = page.locator(f"#evaluations [data-evaluation-id='{clean}']")
    assert other.locator("table.autoattack").count() == 1
    assert other.locator(".eval-warning").count() == 0
    shoot(page, screenshots, "evaluation-warning")

    page.goto(f"{live_server.url}/#/compare?ids={job['id']}")
    line = page.locator(f".eval-line[data-evaluation-id='{warned}']")
    line.locator(".eval-warning").wait_for()
    assert texts(line.locator(".eval-warning")) == [f"Warning: {MASKING}"]
    assert page.locator(f".eval-line[data-evaluation-id='{clean}'] .eval-warning").count() == 0
    assert problems.unexpected() == []


def add_metrics(session_factory, job_id: str, *rows: tuple[str, int, float]) -> None:
    """Metric rows (stage, epoch, training loss), as a worker writes them after each epoch."""
    with session_factory() as session:
        for stage, epoch, loss in rows:
            record_metric(session, job_id, stage, epoch, {"train_loss": loss})
        session.commit()


def test_compare_lines_up_training_epochs_with_and_without_a_burn_in(
    live_server, signed_in, submit_job, session_factory
):
    """A job with two burn-in epochs and one without: training epoch 1 of both is drawn
    at the same x (the burn-in's at -1 and 0), not shifted by the burn-in's length."""
    warm = submit_job(name="with-burn-in")
    cold = submit_job(name="from-scratch")
    for job in (warm, cold):
        cancel(live_server, job["id"])
    add_metrics(session_factory, warm["id"], ("burn_in", 1, 2.0), ("burn_in", 2, 1.5),
                ("train", 1, 1.2), ("train", 2, 1.0))  # fmt: skip
    add_metrics(session_factory, cold["id"], ("train", 1, 1.9), ("train", 2, 1.4))
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/compare?ids={warm['id']},{cold['id']}")
    caption = page.locator("figcaption", has_text="Training loss")
    loss = page.locator("figure.chart-box", has=caption)
    loss.wait_for()
    xs = [
        [float(x) for x in loss.locator(f"g.series[data-series='{i}'] .pt").evaluate_all(
            "dots => dots.map(d => d.dataset.x)")]
        for i in (0, 1)
    ]  # fmt: skip
    assert xs == [[-1, 0, 1, 2], [1, 2]]
    assert texts(loss.locator(".legend li")) == [
        "with-burn-in: train loss",
        "from-scratch: train loss",
    ]
    # the same on one job's own page
    page.goto(f"{live_server.url}/#/jobs/{warm['id']}")
    own = page.locator("#charts figure.chart-box").first
    own.wait_for()
    assert own.locator(".pt").evaluate_all("dots => dots.map(d => +d.dataset.x)") == [-1, 0, 1, 2]
    assert problems.unexpected() == []


def test_robust_chart_tells_many_evaluations_apart(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    """Nine fast n=100 evaluations: nine legend labels and nine looks (colour, dash,
    marker), none shared, each label naming its evaluation's short id."""
    job = submit_job(name="many-evals")
    cancel(live_server, job["id"])
    ids = [
        add_evaluation(
            session_factory,
            job["id"],
            60 - i,
            results=[result(0.1, 0.8 - i / 20), result(0.2, 0.6 - i / 20)],
        )
        for i in range(9)
    ]
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    figure = page.locator("#evaluations figure.chart-box")
    items = figure.locator(".legend li")
    items.nth(8).wait_for()
    labels = texts(items)
    looks = [items.nth(i).get_attribute("data-look") for i in range(items.count())]
    assert len(labels) == 9 and len(set(labels)) == 9, labels
    assert len(set(looks)) == 9, looks
    for evaluation_id, label in zip(ids, labels, strict=True):
        assert label == f"fast n=100 · #{evaluation_id[:8]}"
    assert figure.get_attribute("data-points") == "18"
    # the eighth series on has the colour of an earlier one but a dashed line
    assert figure.locator("g.series[data-series='7'] polyline").get_attribute("stroke-dasharray")
    assert (
        figure.locator("g.series[data-series='0'] polyline").get_attribute("stroke-dasharray")
        is None
    )
    shoot(page, screenshots, "robust-chart-many")
    assert problems.unexpected() == []


def test_evaluation_asked_for_after_the_stream_ended_shows_up(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    """The job is canceled and its page has been told so (the stream has ended); an
    evaluation asked for afterwards appears, and its results follow when it finishes."""
    job = submit_job(name="late-eval")
    cancel(live_server, job["id"])
    add_checkpoint(session_factory, job["id"], "best", 2)
    page, problems = signed_in()
    path = f"/api/v1/jobs/{job['id']}/evaluations"

    def lists_evaluations(response) -> bool:
        return response.request.method == "GET" and response.url.split("?")[0].endswith(path)

    lists = []
    page.on("response", lambda r: lists.append(r) if lists_evaluations(r) else None)
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    page.locator("#status").filter(has_text="Job canceled.").wait_for()
    if len(lists) < 2:  # the page reads its evaluations once more when the stream ends
        page.wait_for_event("response", predicate=lists_evaluations)
    assert page.locator("#evaluations").inner_text().strip() == "No evaluation yet."
    evaluation = ask_evaluation(live_server, job["id"])
    page.locator("#evaluations .evaluation[data-status='queued']").wait_for()
    section = page.locator(section_css(evaluation))
    assert section.locator(".eval-note").inner_text().startswith("pending — ")
    assert "best checkpoint, epoch 2" in section.locator(".eval-head").inner_text()
    set_evaluation(session_factory, evaluation["id"], status="running", lease_owner="w1")
    page.locator(f"{section_css(evaluation)}[data-status='running']").wait_for()
    set_evaluation(
        session_factory,
        evaluation["id"],
        status="succeeded",
        results=[result(0.1, 0.42)],
        finished_at=utcnow(),
    )
    page.locator(f"{section_css(evaluation)}[data-status='succeeded'] table tbody tr").wait_for()
    assert section.locator("tbody tr td").nth(1).inner_text() == "42.0%"
    weights = "of the best checkpoint, epoch 2"
    caption = f"AutoAttack (linf, preset fast, n = 100) {weights}, succeeded"
    assert section.locator("caption").inner_text() == caption
    legend = page.locator("#evaluations figure.chart-box .legend li").inner_text().strip()
    assert legend == f"fast n=100 · best ep 2 · #{evaluation['id'][:8]}"
    assert section.locator(".cancel-evaluation").count() == 0
    assert page.locator("#evaluations figure.chart-box").get_attribute("data-points") == "1"
    assert problems.unexpected() == []


def section_css(evaluation: dict) -> str:
    return f"#evaluations .evaluation[data-evaluation-id='{evaluation['id']}']"


def test_cancel_an_evaluation_from_the_job_page(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    """A queued evaluation ends canceled at once; a running one is asked to stop (its
    button says so) and ends canceled with the attacks it finished."""
    job = submit_job(name="cancel-evals")
    cancel(live_server, job["id"])
    add_checkpoint(session_factory, job["id"], "best", 2)
    add_checkpoint(session_factory, job["id"], "final", 3)
    queued = ask_evaluation(live_server, job["id"])
    running = ask_evaluation(live_server, job["id"], checkpoint="final", eps=[0.1, 0.2])
    set_evaluation(session_factory, running["id"], status="running", lease_owner="w1")
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    first, second = page.locator(section_css(queued)), page.locator(section_css(running))
    first.locator("button.cancel-evaluation").wait_for()
    assert "best checkpoint, epoch 2" in first.locator(".eval-head").inner_text()
    assert "final checkpoint, epoch 3" in second.locator(".eval-head").inner_text()
    shoot(page, screenshots, "evaluations-pending")
    phone, phone_problems = signed_in(390, 844)
    phone.goto(page.url)
    phone.locator(section_css(running)).locator("button.cancel-evaluation").wait_for()
    shoot(phone, screenshots, "evaluations-pending-phone")
    phone.close()
    assert phone_problems.unexpected() == []

    first.get_by_role("button", name="Cancel evaluation").click()
    page.locator(f"{section_css(queued)}[data-status='canceled']").wait_for()
    assert first.locator("button").count() == 0
    note = first.locator(".eval-note").inner_text()
    assert note.startswith("canceled — AutoAttack (preset fast, n = 100, best checkpoint, epoch 2)")
    assert page.locator("#status").inner_text() == (
        f"Evaluation #{queued['id'][:8]} cancel requested."
    )

    second.get_by_role("button", name="Cancel evaluation").click()
    asked = second.locator("button.cancel-evaluation")
    asked.filter(has_text="Cancel requested").wait_for()
    assert asked.is_disabled()
    assert "cancel requested" in second.locator(".eval-note").inner_text()
    # its worker stops it before its next attack, keeping the one it finished
    set_evaluation(
        session_factory,
        running["id"],
        status="canceled",
        results=[result(0.1, 0.5)],
        error="canceled while running",
        finished_at=utcnow(),
    )
    page.locator(f"{section_css(running)}[data-status='canceled'] tbody tr").wait_for()
    assert second.locator("button").count() == 0
    assert "numbers shown are the eps it finished" in second.locator(".eval-note").inner_text()
    assert "quick evaluation" not in page.locator("#evaluations").inner_text()
    shoot(page, screenshots, "evaluations-canceled")
    assert problems.unexpected() == []


def test_a_refused_cancel_says_why(live_server, signed_in, submit_job, session_factory):
    """A cancel the API refuses (the evaluation ended meanwhile) shows the API's reason,
    and the page then shows the evaluation as it is; the job's own running evaluation
    offers no cancel of its own."""
    job = submit_job(name="refused-cancel")
    cancel(live_server, job["id"])
    add_checkpoint(session_factory, job["id"], "best", 2)
    asked = ask_evaluation(live_server, job["id"])
    own = add_evaluation(session_factory, job["id"], 30, status="running", preset="fast")
    page, problems = signed_in()
    # the page's timers stand still from the start: it draws its evaluations when it
    # opens and after the click, never in between (no batched redraw, no poll)
    page.clock.install(time=utcnow())
    page.clock.pause_at(utcnow() + timedelta(hours=1))
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    button = page.locator(section_css(asked)).locator("button.cancel-evaluation")
    button.wait_for()
    own_head = page.locator(f"#evaluations .evaluation[data-evaluation-id='{own}'] .eval-head")
    assert own_head.locator("button").count() == 0
    assert "cancel the job to stop it" in own_head.inner_text()
    answer = httpx.post(
        f"{live_server.url}/api/v1/jobs/{job['id']}/evaluations/{asked['id']}/cancel",
        headers=live_server.headers,
    )
    assert answer.status_code == 202, answer.text
    problems.allow(409, f"/evaluations/{asked['id']}/cancel")
    button.click()
    status = page.locator("#status")
    status.filter(has_text="not canceled").wait_for()
    assert status.inner_text() == (
        f"Evaluation #{asked['id'][:8]} not canceled: 409: evaluation {asked['id']} "
        "is already canceled; nothing to cancel"
    )
    page.locator(f"{section_css(asked)}[data-status='canceled']").wait_for()
    assert problems.unexpected() == []


def test_request_an_evaluation_from_the_job_page(
    live_server, signed_in, submit_job, session_factory, screenshots
):
    """The job page's form asks for AutoAttack of a checkpoint: the server's 422
    messages are shown under their fields; a good request appears as pending."""
    job = submit_job(name="ask-eval")
    cancel(live_server, job["id"])
    add_checkpoint(session_factory, job["id"], "final", 3)
    page, problems = signed_in()
    page.goto(f"{live_server.url}/#/jobs/{job['id']}")
    page.locator("#status").filter(has_text="Job canceled.").wait_for()
    page.click("#eval-request summary")
    page.select_option("#ev-checkpoint", "final")
    page.select_option("#ev-preset", "fast")
    page.fill("#ev-eps", "0.1, 2")
    page.fill("#ev-n", "0")
    problems.allow(422, f"/api/v1/jobs/{job['id']}/evaluations")
    page.click("#eval-form button[type=submit]")
    page.locator("#ev-err-eps").filter(has_text="less than or equal to 1").wait_for()
    assert "greater than or equal to 1" in page.locator("#ev-err-n").inner_text()
    assert page.locator("#ev-eps").get_attribute("aria-invalid") == "true"
    assert page.locator("#evaluations .evaluation").count() == 0
    shoot(page, screenshots, "evaluation-request-errors")

    page.fill("#ev-eps", "0.1, 0.2")
    page.fill("#ev-n", "50")
    page.click("#eval-form button[type=submit]")
    section = page.locator("#evaluations .evaluation[data-status='queued']")
    section.wait_for()
    assert section.locator(".eval-note").inner_text().startswith("pending — ")
    assert "final checkpoint, epoch 3" in section.locator(".eval-head").inner_text()
    assert page.locator("#ev-err-eps").inner_text() == ""
    listed = httpx.get(
        f"{live_server.url}/api/v1/jobs/{job['id']}/evaluations", headers=live_server.headers
    ).json()["items"]
    assert [(e["eps"], e["n"], e["preset"]) for e in listed] == [([0.1, 0.2], 50, "fast")]
    assert problems.unexpected() == []
