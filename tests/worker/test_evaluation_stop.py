"""An evaluation whose lease is lost stops before its next attack (run in-process)."""

from __future__ import annotations

import json

import pytest

from db import jobs
from db.models import Checkpoint, Evaluation
from dyart.config import TrainConfig
from dyart.errors import StopRequested
from dyart.train import Trainer
from tests.worker.conftest import TINY_JOB, resolved
from worker import runner
from worker.artifacts import ArtifactStore


def test_an_evaluation_stops_before_its_next_attack_once_its_lease_is_lost(
    settings, session_factory, make_user
):
    owner, _ = make_user("owner")
    config = resolved({**TINY_JOB, "eval_eps": []})
    store = ArtifactStore(settings.artifacts_dir)
    with session_factory() as session:
        job = jobs.create_job(session, owner, config)
        session.commit()
        job_id = job.id
    trained = TrainConfig.from_dict(config, settings.data_dir)
    Trainer(trained, store.job_dir(job_id), device="cpu").run(("burn_in",))
    weights = store.job_dir(job_id) / "model-burn_in.safetensors"
    with session_factory() as session:
        checkpoint = Checkpoint(
            job_id=job_id, kind="burn_in", path=store.relative(weights), size=1, sha256="0"
        )
        session.add(checkpoint)
        session.flush()
        evaluation = Evaluation(
            job_id=job_id, checkpoint_id=checkpoint.id, preset="custom", n=20, eps=[0.1]
        )
        session.add(evaluation)
        session.commit()
        spec = runner._evaluation_spec(session, evaluation.id, store)

    asked = []

    def lost() -> bool:  # the heartbeat finds the lease gone during the first attack
        asked.append(True)
        return len(asked) > 1

    with pytest.raises(StopRequested, match="before apgd-t"):
        runner._autoattack(spec, settings, lost)
    progress = json.loads((spec["state_dir"] / "eps_0.1" / "progress.json").read_text())
    assert list(progress["per_attack"]) == ["apgd-ce"]
