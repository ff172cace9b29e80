"""Evaluations: listing with the leaderboard flag, and new evaluations of a checkpoint."""

import threading

import pytest

from db import evaluations
from db.models import Checkpoint, Evaluation, Job


def _add_evaluation(app, job_id, preset, n, status="succeeded"):
    with app.state.session_factory() as session:
        row = Evaluation(
            job_id=job_id,
            status=status,
            preset=preset,
            n=n,
            norm="linf",
            eps=[0.1],
            results=[
                {"eps": 0.1, "clean_acc": 0.9, "robust_acc": 0.6, "per_attack": {"square": 0.6}}
            ],
        )
        session.add(row)
        session.commit()


@pytest.mark.parametrize(
    ("preset", "n", "grade"),
    [
        ("standard", 360, True),
        ("standard", 100, False),
        ("fast", 360, False),
        ("custom", 360, False),
    ],
)
def test_only_standard_on_the_full_test_set_is_leaderboard_grade(
    client, make_job, app, preset, n, grade
):
    job = make_job(client, status="succeeded")  # digits: 360 test images
    _add_evaluation(app, job["id"], preset, n)
    [evaluation] = client().get(f"/api/v1/jobs/{job['id']}/evaluations").json()["items"]
    assert evaluation["leaderboard_grade"] is grade
    assert evaluation["results"][0]["per_attack"] == {"square": 0.6}


def test_create_evaluation_needs_a_checkpoint(client, make_job):
    job = make_job(client, status="running")
    response = client().post(f"/api/v1/jobs/{job['id']}/evaluations", json={"eps": [0.1]})
    assert response.status_code == 409
    assert "has no best or final checkpoint yet" in response.json()["detail"]

    ended = make_job(client, status="failed")  # training is over: no "wait" advice
    response = client().post(f"/api/v1/jobs/{ended['id']}/evaluations", json={"eps": [0.1]})
    assert response.status_code == 409
    assert response.json()["detail"].endswith(
        "ended failed without a best or final checkpoint; nothing to evaluate"
    )


def _checkpoint(app, job_id, kind, epoch=3, sha256="ab" * 32):
    with app.state.session_factory() as session:
        row = Checkpoint(
            job_id=job_id, kind=kind, stage="train", epoch=epoch, path=f"{kind}.safetensors",
            size=1, sha256=sha256,
        )  # fmt: skip
        session.add(row)
        session.commit()
        return row.id


def test_an_evaluation_is_pinned_to_the_weights_of_the_best_checkpoint(client, make_job, app):
    job = make_job(client, status="succeeded")  # digits: 360 test images
    _checkpoint(app, job["id"], "final", epoch=8, sha256="f" * 64)
    best = _checkpoint(app, job["id"], "best", epoch=5, sha256="b" * 64)
    url = f"/api/v1/jobs/{job['id']}/evaluations"
    created = client().post(url, json={"eps": [0.1], "n": 5000}).json()
    assert (created["checkpoint_id"], created["checkpoint_kind"]) == (best, "best")
    assert (created["checkpoint_epoch"], created["checkpoint_sha256"]) == (5, "b" * 64)
    assert created["n"] == 360  # the whole test set, not a number it cannot reach

    again = client().post(url, json={"eps": [0.1], "n": 360})  # the same request: the same one
    assert again.status_code == 202 and again.json()["id"] == created["id"]
    other = client().post(url, json={"eps": [0.1], "n": 360, "checkpoint": "final"}).json()
    assert other["id"] != created["id"] and other["checkpoint_epoch"] == 8
    assert len(client().get(url).json()["items"]) == 2


def test_the_same_eps_twice_is_refused(client, make_job):
    job = make_job(client, status="succeeded")
    url = f"/api/v1/jobs/{job['id']}/evaluations"
    response = client().post(url, json={"eps": [0.1, 0.2, 0.1000000001]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "eps" and "0.1 is given twice" in error["message"]


def test_an_eps_of_zero_is_refused_as_a_jobs_eval_eps_is(client, make_job):
    job = make_job(client, status="succeeded")
    response = client().post(f"/api/v1/jobs/{job['id']}/evaluations", json={"eps": [0.0, 0.1]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "eps.0" and "greater than 0" in error["message"], error


def test_a_synthetic_dataset_is_never_leaderboard_grade(client, make_job, app):
    job = make_job(client, status="succeeded")
    with app.state.session_factory() as session:
        row = session.get(Job, job["id"])
        row.config = {**row.config, "dataset": "synthetic"}  # 128 test images, no leaderboard
        row = Evaluation(job_id=job["id"], status="succeeded", preset="standard", n=128,
                         norm="linf", eps=[0.1], results=[], leaderboard_grade=True)  # fmt: skip
        session.add(row)
        session.commit()
    [evaluation] = client().get(f"/api/v1/jobs/{job['id']}/evaluations").json()["items"]
    assert evaluation["leaderboard_grade"] is False


def test_cancel_a_queued_evaluation_and_not_a_finished_one(client, make_job, app):
    job = make_job(client, status="succeeded")
    _checkpoint(app, job["id"], "best")
    url = f"/api/v1/jobs/{job['id']}/evaluations"
    created = client().post(url, json={"eps": [0.1]}).json()

    canceled = client().post(f"{url}/{created['id']}/cancel")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
    again = client().post(f"{url}/{created['id']}/cancel")
    assert again.status_code == 409 and "already canceled" in again.json()["detail"]
    assert client().post(f"{url}/{'0' * 32}/cancel").status_code == 404
    assert client().post(f"{url}/nonsense/cancel").status_code == 404
    # a canceled request does not capture the next identical one
    assert client().post(url, json={"eps": [0.1]}).json()["id"] != created["id"]


def test_another_users_evaluation_cannot_be_canceled(client, make_job, app, bob):
    job = make_job(client, status="succeeded")
    _checkpoint(app, job["id"], "best")
    url = f"/api/v1/jobs/{job['id']}/evaluations"
    created = client().post(url, json={"eps": [0.1]}).json()
    assert client(user=bob).post(f"{url}/{created['id']}/cancel").status_code == 404
    assert client().get(url).json()["items"][0]["status"] == "queued"


def test_create_evaluation_queues_a_row_for_the_final_checkpoint(client, make_job, app):
    job = make_job(client, status="succeeded")
    with app.state.session_factory() as session:
        row = Checkpoint(job_id=job["id"], kind="final", path="x.safetensors", size=1, sha256="0")
        session.add(row)
        session.commit()
        checkpoint_id = row.id
    body = {"eps": [0.05, 0.2], "preset": "custom", "n": 200}
    response = client().post(f"/api/v1/jobs/{job['id']}/evaluations", json=body)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["status"] == "queued" and created["checkpoint_id"] == checkpoint_id
    assert created["eps"] == [0.05, 0.2] and created["preset"] == "custom" and created["n"] == 200
    listed = client().get(f"/api/v1/jobs/{job['id']}/evaluations").json()["items"]
    assert [e["id"] for e in listed] == [created["id"]]


def test_create_evaluation_rejects_unknown_preset_and_fields(client, make_job):
    job = make_job(client, status="succeeded")
    url = f"/api/v1/jobs/{job['id']}/evaluations"
    response = client().post(url, json={"eps": [0.1], "preset": "quick", "extra": 1})
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["detail"]} == {"preset", "extra"}


def test_identical_requests_sent_at_once_make_one_evaluation(client, make_job, app):
    job = make_job(client, status="succeeded")
    _checkpoint(app, job["id"], "best")
    url = f"/api/v1/jobs/{job['id']}/evaluations"
    ids, barrier = [], threading.Barrier(8)

    def post() -> None:
        c = client()
        barrier.wait()
        ids.append(c.post(url, json={"eps": [0.1]}).json()["id"])

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8 and len(set(ids)) == 1


def test_best_and_final_with_the_same_bytes_are_still_two_evaluations(client, make_job, app):
    job = make_job(client, status="succeeded")  # the last epoch was the best one
    _checkpoint(app, job["id"], "best", epoch=5, sha256="c" * 64)
    _checkpoint(app, job["id"], "final", epoch=5, sha256="c" * 64)
    url = f"/api/v1/jobs/{job['id']}/evaluations"
    best = client().post(url, json={"eps": [0.1]}).json()
    final = client().post(url, json={"eps": [0.1], "checkpoint": "final"}).json()
    assert final["id"] != best["id"] and final["checkpoint_kind"] == "final"


def test_a_cancel_that_arrives_after_the_end_is_a_409(client, make_job, app, monkeypatch):
    job = make_job(client, status="succeeded")
    _checkpoint(app, job["id"], "best")
    url = f"/api/v1/jobs/{job['id']}/evaluations"
    created = client().post(url, json={"eps": [0.1]}).json()
    with app.state.session_factory() as session:
        assert evaluations.claim_evaluation(session, created["id"], "w", 10, 3)
    real = evaluations.request_cancel

    def ended_just_before(session, evaluation_id, now=None):
        with app.state.session_factory() as other:  # its worker writes the result first
            evaluations.finish_evaluation(other, evaluation_id, "w", "succeeded", results=[])
        return real(session, evaluation_id, now)

    monkeypatch.setattr(evaluations, "request_cancel", ended_just_before)
    response = client().post(f"{url}/{created['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["detail"].endswith("is already succeeded; nothing to cancel")


def test_log_after_beyond_any_line_id_is_a_422_not_a_500(client, make_job):
    job = make_job(client, status="succeeded")
    response = client().get(f"/api/v1/jobs/{job['id']}/log?after={2**40}")
    assert response.status_code == 422 and "after" in response.text
