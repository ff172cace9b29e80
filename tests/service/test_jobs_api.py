"""Jobs over HTTP: create, list (filters, paging), get, cancel, resume, ownership."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.jobs import add_log, record_metric
from db.models import Checkpoint, Evaluation, Job, JobLog, JobMetric


def test_create_job_is_queued_with_resolved_config(client, alice):
    body = {"name": "tiny", "dataset": "digits", "architecture": "mlp", "method": "dyart"}
    response = client().post("/api/v1/jobs", json={**body, "epochs": 3, "hparams": {"r0": 0.3}})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["owner"] == "alice" and job["name"] == "tiny"
    assert job["config"]["epochs"] == 3 and job["config"]["hparams"]["r0"] == 0.3
    assert job["config"]["hparams"]["iterations"] == 20  # the catalog default, filled in
    assert job["total_epochs"] == 3 + job["config"]["burn_in_epochs"]
    assert job["progress"] == 0.0 and job["latest_metrics"] == {} and job["best"] is None
    assert client().get(f"/api/v1/jobs/{job['id']}").json()["id"] == job["id"]


def test_create_job_commits_the_row_when_the_broker_is_down(settings, make_user):
    from api.main import create_app
    from tests.service.conftest import BASE, TestClient

    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "auth": "required"})
    app = create_app(down)
    _, token = make_user("carol")
    with TestClient(app, base_url=BASE) as c:
        c.headers["Authorization"] = f"Bearer {token}"
        body = {"dataset": "digits", "architecture": "mlp", "method": "clean"}
        response = c.post("/api/v1/jobs", json=body)
        assert response.status_code == 201
        assert c.get(f"/api/v1/jobs/{response.json()['id']}").json()["status"] == "queued"
        health = c.get("/api/v1/health").json()
        assert (health["status"], health["broker"], health["database"]) == (
            "degraded",
            "unreachable",
            "ok",
        )
        # ready to accept jobs (they are kept and sent later), unless the broker is required
        assert c.get("/api/v1/health/ready").status_code == 200
        strict = c.get("/api/v1/health/ready?require_broker=true")
        assert strict.status_code == 503 and strict.json()["broker"] == "unreachable"
    app.state.engine.dispose()


def test_list_jobs_filters_and_pages_newest_first(client, make_job):
    made = [
        make_job(client, name=f"run-{i}", method=m) for i, m in enumerate(["clean", "dyart"] * 3)
    ]
    make_job(client, name="done", status="succeeded")
    page = client().get("/api/v1/jobs?limit=4&offset=0").json()
    assert page["total"] == 7 and page["limit"] == 4 and page["offset"] == 0
    assert [j["name"] for j in page["items"]] == ["done", "run-5", "run-4", "run-3"]
    rest = client().get("/api/v1/jobs?limit=4&offset=4").json()
    assert [j["name"] for j in rest["items"]] == ["run-2", "run-1", "run-0"]
    dyart = client().get("/api/v1/jobs?method=dyart").json()
    assert dyart["total"] == 3 and {j["config"]["method"] for j in dyart["items"]} == {"dyart"}
    assert client().get("/api/v1/jobs?status=succeeded").json()["total"] == 1
    assert client().get("/api/v1/jobs?status=queued&dataset=digits").json()["total"] == 6
    assert client().get("/api/v1/jobs?dataset=cifar10").json()["total"] == 0
    assert [j["name"] for j in client().get("/api/v1/jobs?q=run-3").json()["items"]] == ["run-3"]
    prefix = made[0]["id"][:8]
    assert made[0]["id"] in [
        j["id"] for j in client().get(f"/api/v1/jobs?q={prefix}").json()["items"]
    ]


@pytest.mark.parametrize("q", ["%", "_", "%%", "_" * 8])
def test_list_jobs_q_wildcards_match_only_themselves(client, make_job, q):
    for i in range(3):
        make_job(client, name=f"run-{i}")
    page = client().get("/api/v1/jobs", params={"q": q}).json()
    assert page["total"] == 0 and page["items"] == []


def test_list_jobs_rejects_bad_paging(client):
    response = client().get("/api/v1/jobs?limit=0")
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "limit"


def test_other_users_job_is_404_like_a_missing_one(client, make_job, bob):
    job = make_job(client)
    missing = client(bob).get("/api/v1/jobs/00000000000000000000000000000000")
    for path in ("", "/metrics", "/log", "/events", "/checkpoints", "/evaluations"):
        response = client(bob).get(f"/api/v1/jobs/{job['id']}{path}")
        assert response.status_code == 404, path
        assert response.json() == {"detail": f"job {job['id']} not found"}
    assert missing.json() == {"detail": "job 00000000000000000000000000000000 not found"}
    for action in ("cancel", "resume"):
        assert client(bob).post(f"/api/v1/jobs/{job['id']}/{action}").status_code == 404
    assert client(bob).get("/api/v1/jobs").json()["total"] == 0


def test_admin_sees_every_users_jobs(client, make_job, bob, root):
    mine = make_job(client)
    theirs = make_job(client, user=bob)
    listed = {j["id"] for j in client(root).get("/api/v1/jobs").json()["items"]}
    assert {mine["id"], theirs["id"]} <= listed
    assert client(root).get(f"/api/v1/jobs/{theirs['id']}").json()["owner"] == "bob"


def test_cancel_queued_job_is_canceled_at_once(client, make_job):
    job = make_job(client)
    response = client().post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "canceled"


def test_cancel_running_job_requests_a_stop(client, make_job):
    job = make_job(client, status="running", stage="train", epoch=1)
    response = client().post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True


@pytest.mark.parametrize("status", ["succeeded", "failed", "canceled"])
def test_cancel_finished_job_is_409(client, make_job, status):
    job = make_job(client, status=status)
    response = client().post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert response.json() == {"detail": f"job {job['id']} is already {status}; nothing to cancel"}


@pytest.mark.parametrize("status", ["canceled", "failed"])
def test_resume_canceled_or_failed_job_requeues_it(client, make_job, app, status):
    job = make_job(client, status=status, error="boom" if status == "failed" else None)
    response = client().post(f"/api/v1/jobs/{job['id']}/resume")
    assert response.status_code == 202
    assert response.json()["status"] == "queued" and response.json()["error"] is None
    with app.state.session_factory() as session:
        assert session.get(Job, job["id"]).status == "queued"


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_resume_other_states_is_409(client, make_job, status):
    job = make_job(client, status=status)
    response = client().post(f"/api/v1/jobs/{job['id']}/resume")
    assert response.status_code == 409
    assert "only a canceled or failed job can be resumed" in response.json()["detail"]


def test_metrics_log_and_progress_come_from_the_rows(client, make_job, app):
    job = make_job(client, status="running", stage="train", epoch=1)
    with app.state.session_factory() as session:
        for stage, epoch, acc in (("burn_in", 1, 0.1), ("burn_in", 2, 0.2), ("train", 1, 0.4)):
            record_metric(session, job["id"], stage, epoch, {"val_pgd_acc": acc})
        for i in range(5):
            add_log(session, job["id"], f"line {i}")
        session.commit()
    metrics = client().get(f"/api/v1/jobs/{job['id']}/metrics").json()["items"]
    assert [(m["stage"], m["epoch"], m["val_pgd_acc"]) for m in metrics] == [
        ("burn_in", 1, 0.1),
        ("burn_in", 2, 0.2),
        ("train", 1, 0.4),
    ]
    log = client().get(f"/api/v1/jobs/{job['id']}/log?tail=2").json()["lines"]
    assert [line["message"] for line in log] == ["line 3", "line 4"]
    everything = client().get(f"/api/v1/jobs/{job['id']}/log").json()["lines"]
    assert [line["id"] for line in everything] == [1, 2, 3, 4, 5]  # numbered in the job
    after = client().get(f"/api/v1/jobs/{job['id']}/log?after=1&tail=2").json()["lines"]
    assert [line["message"] for line in after] == ["line 1", "line 2"]
    assert client().get(f"/api/v1/jobs/{job['id']}/log?after=5").json()["lines"] == []
    bad = client().get(f"/api/v1/jobs/{job['id']}/log?after=-1")
    assert bad.status_code == 422 and "after" in bad.text
    got = client().get(f"/api/v1/jobs/{job['id']}").json()
    assert got["latest_metrics"]["stage"] == "train" and got["best"] == {
        "val_pgd_acc": 0.4,
        "epoch": 1,
    }
    assert got["progress"] == pytest.approx(3 / 4)  # 2 burn-in + 1 of 2 train epochs


def test_latest_metrics_are_the_newest_write_even_when_an_earlier_epoch_re_ran(
    client, make_job, app
):
    """A resume from epoch 1's checkpoint re-runs epoch 2 while epoch 3's row from
    before the crash is still there: the list shows the fresh epoch 2 values."""
    job = make_job(client, status="running", stage="train", epoch=2)
    other = make_job(client, status="running", stage="train", epoch=1)
    with app.state.session_factory() as session:
        for epoch in (1, 2, 3):
            record_metric(session, job["id"], "train", epoch, {"val_pgd_acc": epoch / 10})
        record_metric(session, other["id"], "train", 1, {"val_pgd_acc": 0.9})
        record_metric(session, job["id"], "train", 2, {"val_pgd_acc": 0.25})  # the re-run
        session.commit()
    got = client().get(f"/api/v1/jobs/{job['id']}").json()["latest_metrics"]
    assert (got["epoch"], got["val_pgd_acc"]) == (2, 0.25)
    listed = {j["id"]: j for j in client().get("/api/v1/jobs").json()["items"]}
    assert listed[job["id"]]["latest_metrics"]["val_pgd_acc"] == 0.25
    assert listed[other["id"]]["latest_metrics"]["val_pgd_acc"] == 0.9


def test_a_running_job_has_a_time_left_while_it_trains_and_none_during_autoattack(
    client, make_job, app
):
    """AutoAttack's length is not known from the epochs: no "0 s left" while it runs."""
    started = datetime.now(UTC) - timedelta(seconds=60)
    training = make_job(client, status="running", stage="train", epoch=1, started_at=started)
    with app.state.session_factory() as session:
        record_metric(session, training["id"], "train", 1, {"train_loss": 1.0})
        session.commit()
    training = client().get(f"/api/v1/jobs/{training['id']}").json()
    assert training["progress"] == pytest.approx(3 / 4)  # 2 burn-in + 1 of 2 train epochs
    assert training["elapsed_seconds"] >= 60 and training["eta_seconds"] > 0
    evaluating = make_job(client, status="running", stage="evaluate", started_at=started)
    assert evaluating["progress"] == 1.0 and evaluating["elapsed_seconds"] >= 60
    assert evaluating["eta_seconds"] is None


def test_a_finished_job_is_deleted_with_its_rows_and_files(client, make_job, app, settings, bob):
    job = make_job(client, status="succeeded")
    reuser = make_job(client, status="succeeded")
    folder = Path(settings.artifacts_dir) / "jobs" / job["id"]
    folder.mkdir(parents=True)
    (folder / "model-final.safetensors").write_bytes(b"weights")
    with app.state.session_factory() as session:
        record_metric(session, job["id"], "train", 1, {"train_loss": 1.0})
        add_log(session, job["id"], "done")
        weights = f"jobs/{job['id']}/model-final.safetensors"
        row = Checkpoint(job_id=job["id"], kind="final", stage="train", epoch=1,
                         path=weights, size=7, sha256="f" * 64)  # fmt: skip
        session.add(row)
        session.flush()
        session.add(Evaluation(job_id=job["id"], checkpoint_id=row.id, status="succeeded",
                               preset="fast", n=10, eps=[0.1], results=[]))  # fmt: skip
        session.get(Job, reuser["id"]).burn_in_source_job_id = job["id"]
        session.commit()
    assert client(bob).delete(f"/api/v1/jobs/{job['id']}").status_code == 404  # not bob's
    deleted = client().delete(f"/api/v1/jobs/{job['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert client().get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert not folder.exists() and list(folder.parent.iterdir()) == []  # nothing set aside
    with app.state.session_factory() as session:
        for table in (JobMetric, JobLog, Checkpoint, Evaluation):
            assert session.scalar(select(func.count()).select_from(table)) == 0, table
        assert session.get(Job, reuser["id"]).burn_in_source_job_id is None
    assert client().get(f"/api/v1/jobs/{reuser['id']}").status_code == 200
    assert client().delete(f"/api/v1/jobs/{job['id']}").status_code == 404


def test_a_job_still_at_work_is_not_deleted(client, make_job, app):
    for state in ("queued", "running"):
        job = make_job(client, status=state)
        refused = client().delete(f"/api/v1/jobs/{job['id']}")
        assert refused.status_code == 409
        assert refused.json()["detail"] == (
            f"job {job['id']} is {state}; cancel it first, then delete it once it ends"
        )
    done = make_job(client, status="succeeded")
    with app.state.session_factory() as session:
        session.add(Evaluation(job_id=done["id"], status="queued", preset="fast", n=10,
                               eps=[0.1], results=[]))  # fmt: skip
        session.commit()
    refused = client().delete(f"/api/v1/jobs/{done['id']}")
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"job {done['id']} has 1 evaluation(s) queued or running; cancel them first"
    )
    assert client().get(f"/api/v1/jobs/{done['id']}").status_code == 200
