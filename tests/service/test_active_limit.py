"""DYART_MAX_ACTIVE_PER_USER: one user's queued and running jobs and requested
evaluations stop at the limit (429), without holding anyone else back."""

from __future__ import annotations

import threading

import pytest

from api.main import create_app
from db.models import Checkpoint, Job
from tests.service.conftest import BASE, SMALL_JOB, TestClient

LIMIT = 2
FULL = (
    "you have 2 jobs and evaluations queued or running, the most this server allows one "
    "user (DYART_MAX_ACTIVE_PER_USER=2); {what} can wait until one of them ends: cancel "
    "one, or try again later"
)


@pytest.fixture
def limited(settings):
    app = create_app(settings.model_copy(update={"auth": "required", "max_active_per_user": LIMIT}))
    yield app
    app.state.engine.dispose()


@pytest.fixture
def as_user(limited):
    made: list[TestClient] = []

    def make(user) -> TestClient:
        c = TestClient(limited, base_url=BASE, raise_server_exceptions=False)
        c.headers["Authorization"] = f"Bearer {user[1]}"
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _set(app, job_id, **fields):
    with app.state.session_factory() as session:
        job = session.get(Job, job_id)
        for key, value in fields.items():
            setattr(job, key, value)
        session.commit()


def test_a_user_at_the_limit_waits_and_others_do_not(limited, as_user, alice, bob, root):
    a = as_user(alice)
    first, second = (a.post("/api/v1/jobs", json=SMALL_JOB) for _ in range(2))
    assert first.status_code == second.status_code == 201
    refused = a.post("/api/v1/jobs", json=SMALL_JOB, headers={"Idempotency-Key": "third"})
    assert refused.status_code == 429
    assert refused.json() == {"detail": FULL.format(what="this job")}
    assert a.get("/api/v1/jobs").json()["total"] == 2  # nothing was created
    # the limit is per user, and an admin has none
    assert as_user(bob).post("/api/v1/jobs", json=SMALL_JOB).status_code == 201
    for _ in range(3):
        assert as_user(root).post("/api/v1/jobs", json=SMALL_JOB).status_code == 201
    # a retry of a job already made is no new work: it is answered even at the limit
    keyed = first.json()["id"]
    _set(limited, keyed, status="canceled")
    made = a.post("/api/v1/jobs", json=SMALL_JOB, headers={"Idempotency-Key": "k"})
    assert made.status_code == 201
    again = a.post("/api/v1/jobs", json=SMALL_JOB, headers={"Idempotency-Key": "k"})
    assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
    # a canceled job resumed is work again
    resumed = a.post(f"/api/v1/jobs/{keyed}/resume")
    assert resumed.status_code == 429
    assert resumed.json()["detail"] == FULL.format(what="resuming this job")
    _set(limited, second.json()["id"], status="succeeded")  # one ends: room for one
    assert a.post(f"/api/v1/jobs/{keyed}/resume").status_code == 202


def test_requested_evaluations_count_and_a_repeated_one_is_answered(limited, as_user, alice):
    a = as_user(alice)
    job = a.post("/api/v1/jobs", json=SMALL_JOB).json()["id"]
    _set(limited, job, status="succeeded")
    with limited.state.session_factory() as session:
        session.add(Checkpoint(job_id=job, kind="best", stage="train", epoch=1,
                               path="best.safetensors", size=1, sha256="b" * 64))  # fmt: skip
        session.commit()
    url = f"/api/v1/jobs/{job}/evaluations"
    assert a.post(url, json={"eps": [0.1]}).status_code == 202
    running = a.post("/api/v1/jobs", json=SMALL_JOB)
    assert running.status_code == 201
    refused = a.post(url, json={"eps": [0.2]})
    assert refused.status_code == 429
    assert refused.json()["detail"] == FULL.format(what="this evaluation")
    assert a.post(url, json={"eps": [0.1]}).status_code == 202  # the pending one, again
    assert len(a.get(url).json()["items"]) == 1
    assert a.post(f"/api/v1/jobs/{running.json()['id']}/cancel").status_code == 202
    assert a.post(url, json={"eps": [0.2]}).status_code == 202


def test_submissions_at_once_stop_exactly_at_the_limit(limited, as_user, alice):
    """Eight submissions of one user at once: the count and the insert are one step."""
    start = threading.Barrier(8)
    answers: list[int] = []

    def submit():
        c = as_user(alice)
        start.wait(10)
        answers.append(c.post("/api/v1/jobs", json=SMALL_JOB).status_code)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(answers) == [201] * LIMIT + [429] * (8 - LIMIT), answers
    assert as_user(alice).get("/api/v1/jobs").json()["total"] == LIMIT
