"""The trainer callbacks that write to the database, driven directly (no training)."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from sqlalchemy import select, update

from db import jobs
from db.models import Checkpoint, Job, JobLog, JobMetric
from tests.worker.conftest import TINY_JOB, log_lines, resolved
from worker.artifacts import ArtifactStore, file_sha256
from worker.progress import DbCallback, LeaseLostError


@pytest.fixture
def callback(settings, session_factory, make_user):
    owner, _ = make_user("owner")
    with session_factory() as session:
        job = jobs.create_job(session, owner, resolved(TINY_JOB))
        session.commit()
        job_id = job.id
    store = ArtifactStore(settings.artifacts_dir)
    store.job_dir(job_id).mkdir(parents=True)
    return DbCallback(job_id, session_factory, store, threading.Event(), resolved(TINY_JOB))


def test_rows_lost_by_a_kill_are_recovered_from_the_trainers_file(callback, session_factory):
    rows = [{"stage": "train", "epoch": e, "train_loss": 1.0 / e, "seconds": 1.0} for e in (1, 2)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "tr'  # cut short
    (callback.store.job_dir(callback.job_id) / "metrics.jsonl").write_text(text)
    callback.on_epoch_end("train", 1, rows[0])  # the database saw epoch 1 only
    callback.on_stage_start("train", {"start_epoch": 2, "resumed": True})
    with session_factory() as session:
        got = session.execute(
            select(JobMetric.epoch, JobMetric.train_loss).order_by(JobMetric.epoch)
        )
        assert [tuple(r) for r in got] == [(1, 1.0), (2, 0.5)]
    lines = log_lines(session_factory, callback.job_id)
    assert (
        lines[-2].startswith("train epoch 2 done: train_loss=0.5000") and "[recovered" in lines[-2]
    )
    assert lines[-1] == "resumed train from the checkpoint at epoch 2"


def test_resume_on_fewer_threads_than_the_run_began_on_is_a_warning(callback, session_factory):
    callback.on_stage_start(
        "train", {"start_epoch": 1, "resumed": True, "threads": 2, "threads_began": 16}
    )
    callback.on_stage_start(
        "train", {"start_epoch": 2, "resumed": True, "threads": 4, "threads_began": 4}
    )
    with session_factory() as session:
        query = select(JobLog.level, JobLog.message).where(JobLog.job_id == callback.job_id)
        rows = [tuple(r) for r in session.execute(query.order_by(JobLog.id))]
    assert rows[0] == ("INFO", "resumed train from the checkpoint at epoch 1")
    assert rows[1][0] == "WARNING"
    assert "2 torch threads, the run began on 16" in rows[1][1]
    assert "not be bit-identical" in rows[1][1]
    assert rows[2:] == [("INFO", "resumed train from the checkpoint at epoch 2")]


def test_a_resume_from_the_state_before_the_latest_is_a_warning(callback, session_factory):
    note = "checkpoint: latest.pt is not a readable training state (...); resumed from ..."
    callback.on_stage_start("train", {"start_epoch": 0, "epochs": 2, "fallback": note})
    with session_factory() as session:
        query = select(JobLog.level, JobLog.message).where(JobLog.job_id == callback.job_id)
        rows = [tuple(r) for r in session.execute(query.order_by(JobLog.id))]
    assert rows[0] == ("WARNING", note)


def test_checkpoint_row_is_replaced_by_a_newer_file_of_its_kind(callback, session_factory):
    folder = callback.store.job_dir(callback.job_id)
    weights = folder / "model-latest.safetensors"
    for epoch, data in ((1, b"one"), (2, b"second")):
        weights.write_bytes(data)
        weights.with_suffix(".json").write_text("{}")
        callback.on_checkpoint("latest", weights, "train", epoch)
    with session_factory() as session:
        [row] = session.scalars(select(Checkpoint))
        assert (row.epoch, row.size, row.sha256) == (2, 6, file_sha256(weights))
        assert row.path == f"jobs/{callback.job_id}/model-latest.safetensors"
        assert row.card_path.endswith(".json") and row.robustbench_path is None


def test_a_file_newer_than_its_row_brings_the_row_up_to_date_on_resume(callback, session_factory):
    """A worker killed between writing model-best and recording it left the row behind."""
    folder = callback.store.job_dir(callback.job_id)

    def write(kind, epoch, data):
        path = folder / f"model-{kind}.safetensors"
        path.write_bytes(data)
        card = {"stage": "train", "epoch": epoch, "sha256": hashlib.sha256(data).hexdigest()}
        path.with_suffix(".json").write_text(json.dumps(card))
        return path

    callback.on_checkpoint("best", write("best", 1, b"epoch one"), "train", 1)
    callback.on_checkpoint("latest", write("latest", 3, b"epoch three"), "train", 3)
    best = write("best", 3, b"epoch three, best")  # the kill: no on_checkpoint
    (folder / "model-stray.safetensors").write_bytes(b"not a kind")
    callback.on_stage_start("train", {"start_epoch": 3, "resumed": True})
    with session_factory() as session:
        rows = {r.kind: (r.epoch, r.size, r.sha256) for r in session.scalars(select(Checkpoint))}
    assert rows == {
        "best": (3, best.stat().st_size, file_sha256(best)),
        "latest": (3, 11, file_sha256(folder / "model-latest.safetensors")),
    }
    lines = log_lines(session_factory, callback.job_id)
    assert lines[2] == (
        f"checkpoint best: row brought up to date with its file (train epoch 3, "
        f"{best.stat().st_size} bytes); a worker had stopped before recording it"
    )
    assert lines[3:] == ["resumed train from the checkpoint at epoch 3"]


def test_writes_land_only_while_the_worker_holds_the_lease(callback, session_factory):
    """A worker whose job went to another writes no row: its write begins by holding the lease."""
    with session_factory() as session:
        assert jobs.claim_job(session, callback.job_id, "w1", 60)
        session.commit()
    callback.owner, callback.lease_seconds = "w1", 60
    row = {"stage": "train", "epoch": 1, "train_loss": 0.5, "seconds": 1.0}
    callback.on_epoch_end("train", 1, row)  # w1 holds the lease: written
    with session_factory() as session:  # the sweep gave the job to w2
        session.execute(update(Job).where(Job.id == callback.job_id).values(lease_owner="w2"))
        session.commit()
    with pytest.raises(LeaseLostError, match="lease lost"):
        callback.on_epoch_end("train", 2, {**row, "epoch": 2})
    assert callback.lease_lost.is_set()
    with session_factory() as session:
        epochs = session.scalars(select(JobMetric.epoch).where(JobMetric.job_id == callback.job_id))
        assert list(epochs) == [1]
        assert session.get(Job, callback.job_id).lease_owner == "w2"


def test_should_stop_follows_cancel_and_lost_lease(callback, session_factory):
    callback.poll_seconds = 0.0
    assert callback.should_stop() is False
    with session_factory() as session:
        job = session.get(Job, callback.job_id)
        job.status = "running"
        jobs.request_cancel(session, job)
        session.commit()
    assert callback.should_stop() is True
    callback.lease_lost.set()
    with pytest.raises(LeaseLostError):
        callback.should_stop()
