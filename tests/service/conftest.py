"""API fixtures on top of the shared ones (tests/conftest.py): an app per test on
the test's own migrated database, users with real tokens, and HTTP clients."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from api.main import create_app
from db.models import Checkpoint, Job

with warnings.catch_warnings():
    # starlette warns that it prefers httpx2; the client works the same with httpx.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

BASE = "http://testserver"


def add_final_checkpoint(
    session_factory: Callable, artifacts_dir: str, job_id: str, data: bytes
) -> str:
    """Write ``data`` as the job's final safetensors file (and a card) and its row; the id."""
    folder = Path(artifacts_dir) / job_id
    folder.mkdir(parents=True)
    (folder / "model-final.safetensors").write_bytes(data)
    (folder / "model-final.json").write_text('{"architecture": "mlp"}')
    with session_factory() as session:
        row = Checkpoint(
            job_id=job_id,
            kind="final",
            stage="train",
            epoch=2,
            path=f"{job_id}/model-final.safetensors",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        session.add(row)
        session.commit()
        return row.id


@pytest.fixture
def app(settings):
    """The API with auth required (tokens on every request), polling events fast."""
    app = create_app(settings.model_copy(update={"auth": "required"}))
    app.state.events_poll_seconds = 0.05
    yield app
    app.state.engine.dispose()


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def root(make_user):
    return make_user("root", is_admin=True)


@pytest.fixture
def client(app, alice) -> Iterator[Callable[..., TestClient]]:
    """``client(user=alice)``: a TestClient sending that user's bearer token."""
    made: list[TestClient] = []

    def make(user: Any = alice, headers: dict[str, str] | None = None) -> TestClient:
        _, token = user
        c = TestClient(app, base_url=BASE, raise_server_exceptions=False)
        c.headers.update(headers if headers is not None else {"Authorization": f"Bearer {token}"})
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# the smallest job request the catalog accepts on a bundled dataset
SMALL_JOB = {"dataset": "digits", "architecture": "mlp", "method": "clean", "epochs": 2,
             "schedule": "cosine"}  # fmt: skip


@pytest.fixture
def make_job(app, alice):
    """``make_job(client, status=..., **fields)``: POST a small job, then set its row."""

    def make(client: Callable[..., TestClient], user: Any = alice, **fields: Any) -> dict:
        body = dict(SMALL_JOB)
        body.update({k: fields.pop(k) for k in list(fields) if k in ("name", "method", "epochs")})
        response = client(user).post("/api/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        if fields:
            with app.state.session_factory() as session:
                job = session.get(Job, job_id)
                for key, value in fields.items():
                    setattr(job, key, value)
                session.commit()
        return client(user).get(f"/api/v1/jobs/{job_id}").json()

    return make
