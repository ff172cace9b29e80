"""A requested evaluation: pinned to the weights it was asked for, canceled by its
user, handed over at a warm shutdown, and its warnings in the job's log. Real
database; real worker processes where a worker's behaviour is what is tested."""

from __future__ import annotations

import warnings
from datetime import timedelta

import pytest
import torch

from api.routes.evaluations import evaluation_public
from db import evaluations
from db.models import Checkpoint, Evaluation, Job, utcnow
from dyart.checkpoint import load_model, read_card, save_model
from dyart.errors import CheckpointError
from dyart.evaluate import EvaluationWarning
from tests.worker.conftest import log_lines, wait_for
from worker import runner
from worker.artifacts import ArtifactStore, file_sha256


def _ask(session_factory, trained, sha256=None, **fields) -> str:
    job_id, checkpoint_id = trained
    with session_factory() as session:
        checkpoint = session.get(Checkpoint, checkpoint_id)
        row = Evaluation(
            job_id=job_id, checkpoint_id=checkpoint_id, checkpoint_kind="best",
            checkpoint_epoch=1, checkpoint_sha256=sha256 or checkpoint.sha256,
            **{"preset": "custom", "n": 40, "eps": [0.1], **fields},
        )  # fmt: skip
        session.add(row)
        session.commit()
        return row.id


def _row(session_factory, evaluation_id) -> Evaluation:
    with session_factory() as session:
        row = session.get(Evaluation, evaluation_id)
        session.expunge(row)
        return row


def test_weights_replaced_after_the_request_are_not_evaluated(settings, session_factory, trained):
    evaluation_id = _ask(session_factory, trained, sha256="0" * 64)
    with session_factory() as session:
        spec = runner._evaluation_spec(
            session, evaluation_id, ArtifactStore(settings.artifacts_dir)
        )
    with pytest.raises(CheckpointError, match="the best checkpoint, epoch 1 was replaced"):
        runner._autoattack(spec, settings, lambda: False)


def test_an_evaluation_warning_reaches_the_job_log_and_others_do_not(session_factory, trained):
    job_id, _ = trained
    with (
        pytest.warns(UserWarning) as seen,
        runner._warnings_to_log(session_factory, job_id, "evaluation 1234"),
    ):
        warnings.warn("some inputs have a zero gradient", EvaluationWarning, stacklevel=1)
        warnings.warn("a library's own remark", UserWarning, stacklevel=1)
    assert len(seen) == 2  # both still go to the worker's log
    lines = log_lines(session_factory, job_id)
    assert "evaluation 1234: warning: some inputs have a zero gradient" in lines
    assert not any("a library's own remark" in line for line in lines)


LONG = {"preset": "standard", "n": 360, "eps": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]}


def test_a_running_evaluation_is_canceled_before_its_next_attack(
    worker_process, sender, session_factory, trained
):
    evaluation_id = _ask(session_factory, trained, **LONG)
    sender.send_task("worker.run_evaluation", args=[evaluation_id])
    wait_for(lambda: _row(session_factory, evaluation_id).status == "running", "it to run", 120)
    with session_factory() as session:
        assert evaluations.request_cancel(session, evaluation_id) == "requested"
        session.commit()
    row = wait_for(
        lambda: (r := _row(session_factory, evaluation_id)).status != "running" and r,
        "the evaluation to stop", 120,
    )  # fmt: skip
    assert (row.status, row.error) == ("canceled", "canceled while running")
    lines = log_lines(session_factory, trained[0])
    assert any(line.endswith("canceled: canceled while running") for line in lines)


def test_a_warm_shutdown_hands_a_running_evaluation_over(
    worker_process, sender, session_factory, trained, settings
):
    evaluation_id = _ask(session_factory, trained, **LONG)
    sender.send_task("worker.run_evaluation", args=[evaluation_id])
    wait_for(lambda: _row(session_factory, evaluation_id).status == "running", "it to run", 120)
    worker_process.stop()  # SIGTERM: stops before its next attack, queued again
    row = _row(session_factory, evaluation_id)
    assert (row.status, row.attempts, row.lease_owner) == ("queued", 0, None)
    assert any("queued: worker shutting down" in line for line in log_lines(
        session_factory, trained[0]))  # fmt: skip

    worker_process()  # another worker takes it from the queue and finishes it
    row = wait_for(
        lambda: (r := _row(session_factory, evaluation_id)).status == "succeeded" and r,
        "the evaluation to finish", 300,
    )  # fmt: skip
    assert row.attempts == 1 and [r["eps"] for r in row.results] == LONG["eps"]
    # the downloadable model card beside those weights now holds the result too
    with session_factory() as session:
        relative = session.get(Checkpoint, trained[1]).path
    card = read_card(ArtifactStore(settings.artifacts_dir).resolve(relative).with_suffix(".json"))
    [entry] = card["evaluations"]
    assert (entry["id"], entry["preset"], entry["n"]) == (evaluation_id, "standard", 360)
    assert entry["leaderboard_grade"] is True and entry["results"] == row.results
    assert row.warnings == [] and entry["warnings"] == []  # a sound model draws none


def test_a_masking_models_warning_is_kept_with_its_evaluation(
    worker_process, sender, session_factory, trained, settings
):
    """Weights set to zero: every input gradient is zero, the attacks see nothing. The
    warning is kept on the evaluation (what the API and the dashboard show) and in the
    model card's entry, beside the numbers, not only in the job's log."""
    job_id, checkpoint_id = trained
    store = ArtifactStore(settings.artifacts_dir)
    with session_factory() as session:
        checkpoint = session.get(Checkpoint, checkpoint_id)
        weights = store.resolve(checkpoint.path)
        model = load_model(weights)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
        save_model(weights, model, read_card(weights.with_suffix(".json")))
        checkpoint.sha256 = file_sha256(weights)
        session.commit()
        sha256 = checkpoint.sha256
    evaluation_id = _ask(session_factory, trained, sha256=sha256)
    sender.send_task("worker.run_evaluation", args=[evaluation_id])
    row = wait_for(
        lambda: (r := _row(session_factory, evaluation_id)).status == "succeeded" and r,
        "the evaluation to finish", 120,
    )  # fmt: skip
    [warning] = row.warnings
    assert "zero gradient of the logit margin" in warning and "gradient masking" in warning
    with session_factory() as session:
        shown = evaluation_public(session.get(Evaluation, evaluation_id), session.get(Job, job_id))
    assert shown.warnings == [warning]
    [entry] = read_card(weights.with_suffix(".json"))["evaluations"]
    assert entry["id"] == evaluation_id and entry["warnings"] == [warning]
    assert any(f"warning: {warning}" in line for line in log_lines(session_factory, job_id))


def test_a_failed_evaluation_names_its_file_without_the_servers_folders(
    worker_process, sender, session_factory, trained, settings
):
    job_id, checkpoint_id = trained
    store = ArtifactStore(settings.artifacts_dir)
    with session_factory() as session:
        relative = session.get(Checkpoint, checkpoint_id).path
    store.resolve(relative).unlink()  # the weights are gone
    evaluation_id = _ask(session_factory, trained)
    sender.send_task("worker.run_evaluation", args=[evaluation_id])
    row = wait_for(
        lambda: (r := _row(session_factory, evaluation_id)).status == "failed" and r,
        "the evaluation to fail", 120,
    )  # fmt: skip
    assert relative in row.error and str(store.root) not in row.error
    assert any(f"failed: {row.error}" in line for line in log_lines(session_factory, job_id))


def test_a_cancel_asked_before_its_worker_died_is_not_lost(session_factory, trained, settings):
    evaluation_id = _ask(session_factory, trained)
    with session_factory() as session:
        assert evaluations.claim_evaluation(session, evaluation_id, "w1", 30, 3)
        assert evaluations.request_cancel(session, evaluation_id) == "requested"
        session.commit()
        # w1 dies; the sweep finds the heartbeat stale: the row ends, it is not queued
        later = utcnow() + timedelta(seconds=60)
        assert evaluations.requeue_stale_evaluations(session, later, 4, 3) == []
        assert not evaluations.claim_evaluation(session, evaluation_id, "w2", 30, 3, now=later)
    row = _row(session_factory, evaluation_id)
    assert (row.status, row.error) == ("canceled", "canceled while running (its worker stopped)")


def test_a_hand_over_with_a_cancel_pending_ends_canceled(session_factory, trained):
    evaluation_id = _ask(session_factory, trained)
    spec = {"job_id": trained[0], "name": "evaluation x"}
    with session_factory() as session:
        assert evaluations.claim_evaluation(session, evaluation_id, "w1", 30, 3)
        evaluations.request_cancel(session, evaluation_id)
        session.commit()
    result = runner._hand_over_evaluation(session_factory, evaluation_id, "w1", spec)
    assert result == {"evaluation_id": evaluation_id, "status": "canceled"}
    assert _row(session_factory, evaluation_id).status == "canceled"
    lines = log_lines(session_factory, trained[0])
    assert "evaluation x: canceled: canceled while running" in lines
    assert not any("queued again" in line for line in lines)
