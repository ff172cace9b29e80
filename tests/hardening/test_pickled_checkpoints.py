"""A pickle placed where a checkpoint is expected never runs.

The payload's ``__reduce__`` makes a folder when it is unpickled, so an unsafe
load leaves a visible mark. Training states are read with
``torch.load(weights_only=True)``, which refuses the payload; model files are
read as safetensors, which has no code path at all. The same holds through a
real worker: a job resuming from a pickled ``state/latest.pt`` fails with the
loader's message, and an evaluation of a pickled "safetensors" file fails too.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest

from tests.worker import conftest as worker_fixtures
from tests.worker.conftest import job_row, wait_final, wait_for

sender, submit = worker_fixtures.sender, worker_fixtures.submit  # the worker tests' fixtures

torch = pytest.importorskip("torch")


class Payload:
    """Makes ``marker`` (a folder) when unpickled: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def write_torch_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "dyart-train-state/1", "model": Payload(marker)}, path)
    return path


def write_plain_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def write_card(weights: Path) -> Path:
    """A model card whose sha256 matches ``weights`` (so only the format can refuse it)."""
    card = {
        "format": "dyart-model-card/1",
        "build_model": {"name": "mlp", "num_classes": 10, "in_channels": 1, "image_size": 8},
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    card_path = weights.with_suffix(".json")
    card_path.write_text(json.dumps(card))
    return card_path


@pytest.mark.parametrize("write", [write_torch_pickle, write_plain_pickle])
def test_training_state_loader_refuses_a_pickle(tmp_path, write):
    from dyart.checkpoint import load_training_state
    from dyart.errors import CheckpointError

    marker = tmp_path / "pwned"
    path = write(tmp_path / "state" / "latest.pt", marker)
    with pytest.raises(CheckpointError, match="is not a readable training state") as info:
        load_training_state(path)
    assert "Weights only load failed" in str(info.value) or "weights_only" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("write", [write_torch_pickle, write_plain_pickle])
def test_model_loader_refuses_a_pickle_even_with_a_matching_card(tmp_path, write):
    from dyart.checkpoint import load_model
    from dyart.errors import CheckpointError

    marker = tmp_path / "pwned"
    weights = write(tmp_path / "model-final.safetensors", marker)
    write_card(weights)
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        load_model(weights)
    assert not marker.exists()


def test_burn_in_state_loader_refuses_a_pickle(tmp_path):
    """A burn_in.pt is read by the same loader when the train stage starts from it."""
    from dyart.config import TrainConfig
    from dyart.errors import CheckpointError
    from dyart.train import Trainer

    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    write_torch_pickle(out / "burn_in.pt", marker)
    config = TrainConfig.from_dict({"dataset": "digits", "architecture": "mlp", "method": "clean"})
    trainer = Trainer(config, out, device="cpu")
    model = trainer._build_model()
    with pytest.raises(CheckpointError, match="is not a readable training state"):
        trainer._load_start_weights(model)
    assert not marker.exists()


def test_worker_refuses_pickled_state_and_pickled_model(
    worker_process,
    submit,
    sender,
    settings,
    session_factory,
    tmp_path,
):
    from db.models import Checkpoint, Evaluation, Job

    marker = tmp_path / "pwned"
    store = Path(settings.artifacts_dir)

    # 1. A job whose resume state is a pickle: it fails, naming the file; nothing runs.
    job_id = submit(send=False)
    write_torch_pickle(store / "jobs" / job_id / "state" / "latest.pt", marker)
    sender.send_task("worker.run_job", args=[job_id])
    job = wait_final(session_factory, job_id)
    assert job.status == "failed"
    assert job.error.startswith(f"checkpoint: {store.resolve()}/jobs/{job_id}/state/latest.pt")
    assert "is not a readable training state" in job.error
    assert job.attempts == 1

    # 2. An evaluation of a checkpoint row whose "safetensors" file is a pickle.
    other = submit(send=False)
    weights = write_torch_pickle(store / "jobs" / other / "model-final.safetensors", marker)
    write_card(weights)
    with session_factory() as session:
        session.get(Job, other).status = "succeeded"
        row = Checkpoint(
            job_id=other,
            kind="final",
            stage="train",
            epoch=2,
            path=f"jobs/{other}/model-final.safetensors",
            size=weights.stat().st_size,
            sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
        )
        session.add(row)
        session.flush()
        evaluation = Evaluation(
            job_id=other, checkpoint_id=row.id, preset="fast", n=20, eps=[0.1], results=[]
        )
        session.add(evaluation)
        session.commit()
        evaluation_id = evaluation.id
    sender.send_task("worker.run_evaluation", args=[evaluation_id])

    def finished():
        with session_factory() as session:
            found = session.get(Evaluation, evaluation_id)
            return found if found.status in ("succeeded", "failed") else None

    done = wait_for(finished, f"evaluation {evaluation_id} to end", timeout=240)
    assert done.status == "failed"
    assert done.error.startswith("CheckpointError: checkpoint: ")
    assert "is not a safetensors file" in done.error
    assert not marker.exists()
    assert job_row(session_factory, other).status == "succeeded"
