"""An evaluation whose lease is lost stops before its next attack (run in-process)."""

from __future__ import annotations

import json

import pytest

from db.models import Evaluation
from dyart.errors import StopRequested
from worker import runner
from worker.artifacts import ArtifactStore


def test_an_evaluation_stops_before_its_next_attack_once_its_lease_is_lost(
    settings, session_factory, trained
):
    job_id, checkpoint_id = trained
    store = ArtifactStore(settings.artifacts_dir)
    with session_factory() as session:
        evaluation = Evaluation(
            job_id=job_id, checkpoint_id=checkpoint_id, preset="custom", n=20, eps=[0.1]
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
