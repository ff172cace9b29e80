"""Evaluations: listing with the leaderboard flag, and new evaluations of a checkpoint."""

import pytest

from db.models import Checkpoint, Evaluation


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
    assert "has no final or best checkpoint yet" in response.json()["detail"]


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
