"""POST /jobs with an Idempotency-Key: a retried submission finds its job, never a twin."""

import threading

import httpx
from sqlalchemy import func, select

from db.models import Job

BODY = {"name": "retry me", "dataset": "digits", "architecture": "mlp", "method": "clean"}


def _count(session_factory) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_a_retry_with_the_same_key_returns_the_first_job(client, session_factory):
    first = client().post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "k-1"})
    again = client().post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert _count(session_factory) == 1
    other = client().post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "k-2"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    plain = client().post("/api/v1/jobs", json=BODY)  # no key: every request is a new job
    assert plain.status_code == 201 and _count(session_factory) == 3


def test_the_same_key_with_a_different_request_is_a_conflict(client, session_factory):
    first = client().post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "k-1"})
    changed = client().post(
        "/api/v1/jobs", json={**BODY, "epochs": 7}, headers={"Idempotency-Key": "k-1"}
    )
    assert changed.status_code == 409
    assert changed.json()["detail"] == (
        f"Idempotency-Key 'k-1' was used for a different job request (job {first.json()['id']}); "
        "use a new key for a new job"
    )
    assert _count(session_factory) == 1


def test_keys_belong_to_their_user(client, bob, session_factory):
    mine = client().post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "shared"})
    theirs = client(bob).post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "shared"})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"] and theirs.json()["owner"] == "bob"


def test_a_malformed_key_is_422_naming_the_header(client, session_factory):
    for key in ["x" * 201, "with space", "tab\there"]:
        response = client().post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": key})
        assert response.status_code == 422, key
        assert response.json()["detail"] == [
            {
                "field": "Idempotency-Key",
                "message": "Idempotency-Key: expected 1-200 printable ASCII characters",
            }
        ]
    assert _count(session_factory) == 0


def test_concurrent_retries_create_one_job(live_server, session_factory):
    """Eight clients racing with one key: one 201, seven 200s, all the same job."""
    answers: list[httpx.Response] = []
    start = threading.Barrier(8)

    def submit() -> None:
        with httpx.Client(base_url=live_server.url, headers=live_server.headers) as c:
            start.wait()
            answers.append(c.post("/api/v1/jobs", json=BODY, headers={"Idempotency-Key": "race"}))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert _count(session_factory) == 1
