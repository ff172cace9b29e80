"""Hostile-input fixtures: the API fixtures of tests/service, and a stored checkpoint
with files inside the artifact store and a secret file outside it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from db.models import Checkpoint
from tests.service import conftest as service

# The API fixtures of tests/service, shared here (pytest finds fixtures by name).
alice, app, bob, client, make_job, root = (
    service.alice, service.app, service.bob, service.client, service.make_job, service.root
)  # fmt: skip

SECRET = b"secret outside the artifact store\n"


@pytest.fixture
def secret(settings) -> Path:
    """A file beside the artifact folder (in DYART_HOME, next to the database)."""
    path = Path(settings.home) / "secret.txt"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def stored_checkpoint(app, client, make_job, settings, secret):
    """A succeeded job of alice's with a final checkpoint: row + files under jobs/<id>/."""
    job = make_job(client, status="succeeded")
    folder = Path(settings.artifacts_dir) / "jobs" / job["id"]
    folder.mkdir(parents=True)
    data = os.urandom(4096)
    (folder / "model-final.safetensors").write_bytes(data)
    (folder / "model-final.json").write_text('{"architecture": "mlp"}')
    with app.state.session_factory() as session:
        row = Checkpoint(
            job_id=job["id"],
            kind="final",
            stage="train",
            epoch=2,
            path=f"jobs/{job['id']}/model-final.safetensors",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        session.add(row)
        session.commit()
        return {"id": row.id, "job": job, "folder": folder, "data": data}
