"""Real Celery workers running real (tiny) jobs: success, duplicate delivery, kill -9,
cancel and resume. Each worker is a `python -m celery -A worker.app worker` process."""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from db import jobs
from db.models import Checkpoint, Evaluation, Job, JobMetric, utcnow
from tests.conftest import WorkerFleet
from tests.worker.conftest import job_row, log_lines, metric_keys, wait_final, wait_for
from worker import runner
from worker.artifacts import ArtifactStore, file_sha256

FAULT_WORKER = Path(__file__).resolve().parents[2] / "bench" / "faults" / "step_fault_worker.py"
# Long enough that a test can act between the first training epoch and the end.
LONG = {"epochs": 4, "hparams": {"iterations": 5}}
DONE = re.compile(r"^(burn_in|train) epoch (\d+) done:")


def epochs_done(session_factory, job_id) -> Counter:
    """How many times each (stage, epoch) finished, from the job's log."""
    found = (DONE.match(line) for line in log_lines(session_factory, job_id))
    return Counter((m.group(1), int(m.group(2))) for m in found if m)


def expected_epochs(burn_in: int, train: int) -> set[tuple[str, int]]:
    return {("burn_in", e) for e in range(1, burn_in + 1)} | {
        ("train", e) for e in range(1, train + 1)
    }


def assert_each_epoch_once(session_factory, job_id, burn_in, train):
    done = epochs_done(session_factory, job_id)
    assert set(done) == expected_epochs(burn_in, train), done
    assert set(done.values()) == {1}, f"an epoch trained twice: {done}"
    keys = metric_keys(session_factory, job_id)
    assert sorted(keys) == sorted(expected_epochs(burn_in, train)), keys


def first_train_checkpoint(session_factory, job_id):
    """Epoch of the first ``latest`` checkpoint of the train stage, once there is one."""
    with session_factory() as session:
        return session.scalar(
            select(Checkpoint.epoch).where(
                Checkpoint.job_id == job_id,
                Checkpoint.kind == "latest",
                Checkpoint.stage == "train",
                Checkpoint.epoch >= 1,
            )
        )


def test_job_trains_to_success_and_a_second_job_reuses_its_burn_in(
    worker_process, submit, session_factory, settings, sender
):
    first = submit(send=False)  # as if the broker lost the API's message
    with session_factory() as session:
        old = utcnow() - timedelta(hours=1)
        session.execute(update(Job).where(Job.id == first).values(sent_at=old))
        session.commit()
    broken = submit(dataset="svhn")  # its files are not in the data folder
    job = wait_final(session_factory, first)
    assert job.status == "succeeded", (job.error, log_lines(session_factory, first))
    assert job.attempts == 1 and job.heartbeat_at is not None and job.error is None
    assert_each_epoch_once(session_factory, first, burn_in=1, train=3)

    store = ArtifactStore(settings.artifacts_dir)
    with session_factory() as session:
        checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.job_id == first)).all()
        [evaluation] = session.scalars(select(Evaluation).where(Evaluation.job_id == first))
        assert {c.kind for c in checkpoints} == {"burn_in", "latest", "best", "final"}
        for c in checkpoints:
            path = store.resolve(c.path)
            assert c.sha256 == file_sha256(path) and c.size == path.stat().st_size
            assert store.resolve(c.card_path).is_file()
        assert evaluation.status == "succeeded" and evaluation.preset == "fast"
        assert [r["eps"] for r in evaluation.results] == [0.1]
        assert evaluation.checkpoint_id in {c.id for c in checkpoints}

    second = submit(
        method="clean", epochs=1, schedule="cosine", hparams={}
    )  # same burn-in, another method
    job = wait_final(session_factory, second)
    assert job.status == "succeeded" and job.burn_in_source_job_id == first
    assert metric_keys(session_factory, second) == [("train", 1)]  # no burn-in trained
    assert any("reusing the burn-in of job" in m for m in log_lines(session_factory, second))

    failed = wait_final(session_factory, broken)
    assert failed.status == "failed" and "svhn" in failed.error, failed.error

    later = evaluate_later(session_factory, sender, first, eps=[0.05, 0.2])
    assert later.status == "succeeded" and later.attempts == 1, later.error
    assert [r["eps"] for r in later.results] == [0.05, 0.2] and later.n == 30
    assert later.leaderboard_grade is False and later.lease_owner is None


def evaluate_later(session_factory, sender, job_id, eps):
    """An evaluation of the job's final checkpoint asked for after training (like the API)."""
    with session_factory() as session:
        final = session.scalar(
            select(Checkpoint.id).where(Checkpoint.job_id == job_id, Checkpoint.kind == "final")
        )
        row = Evaluation(job_id=job_id, checkpoint_id=final, preset="fast", n=30, eps=eps)
        session.add(row)
        session.commit()
        evaluation_id = row.id
    sender.send_task("worker.run_evaluation", args=[evaluation_id])

    def finished():
        with session_factory(expire_on_commit=False) as session:
            row = session.get(Evaluation, evaluation_id)
            return row if row.status in ("succeeded", "failed") else None

    return wait_for(finished, f"evaluation {evaluation_id}", timeout=120)


def test_task_delivered_twice_never_runs_the_job_twice(
    worker_process, submit, session_factory, sender
):
    worker_process()  # a second, idle worker to receive the duplicate
    job_id = submit(**LONG)
    wait_for(lambda: job_row(session_factory, job_id).status == "running", "the job to start")
    sender.send_task("worker.run_job", args=[job_id])  # the broker re-delivers it
    wait_for(
        lambda: any("duplicate delivery ignored" in m for m in log_lines(session_factory, job_id)),
        "the duplicate to be refused",
        timeout=60,
    )
    job = wait_final(session_factory, job_id)
    assert job.status == "succeeded" and job.attempts == 1
    lines = log_lines(session_factory, job_id)
    assert sum(m.startswith("attempt ") for m in lines) == 1, lines
    assert_each_epoch_once(session_factory, job_id, burn_in=1, train=LONG["epochs"])


def test_worker_killed_mid_training_resumes_from_its_last_checkpoint(
    worker_process, submit, session_factory
):
    job_id = submit(**LONG)
    killed_after = wait_for(
        lambda: first_train_checkpoint(session_factory, job_id), "a train checkpoint", every=0.05
    )
    worker_process.kill9()
    assert job_row(session_factory, job_id).status == "running"  # nobody told the database
    worker_process()  # another worker: its sweep finds the stale job and requeues it
    job = wait_final(session_factory, job_id)
    lines = log_lines(session_factory, job_id)
    assert job.status == "succeeded" and job.attempts == 2, (job.error, lines)
    [lost] = [m for m in lines if m.startswith("worker lost (heartbeat stale); requeued after")]
    assert re.fullmatch(r".* attempt 1 \(no heartbeat for \d+ s from worker \S+\)", lost), lost
    resumed = [int(m.rsplit(" ", 1)[1]) for m in lines if m.startswith("resumed train from")]
    assert len(resumed) == 1 and resumed[0] >= killed_after, lines
    assert_each_epoch_once(session_factory, job_id, burn_in=1, train=LONG["epochs"])


def test_cancel_during_training_ends_canceled_and_resume_finishes(
    worker_process, submit, session_factory, sender
):
    # 10 epochs: the cancel must land while epochs remain, even on a busy machine
    spec = {**LONG, "epochs": 10}
    job_id = submit(**spec)
    wait_for(lambda: ("train", 1) in metric_keys(session_factory, job_id), "a train epoch")
    with session_factory() as session:
        jobs.request_cancel(session, session.get(Job, job_id))
        session.commit()
    job = wait_final(session_factory, job_id, timeout=60)
    assert job.status == "canceled", (job.error, log_lines(session_factory, job_id))
    assert any(m.startswith("canceled: stopped") for m in log_lines(session_factory, job_id))
    with session_factory() as session:
        kinds = set(session.scalars(select(Checkpoint.kind).where(Checkpoint.job_id == job_id)))
        assert "latest" in kinds
        trained = session.scalar(
            select(JobMetric.epoch)
            .where(JobMetric.job_id == job_id, JobMetric.stage == "train")
            .order_by(JobMetric.epoch.desc())
        )
        assert trained < spec["epochs"]  # it stopped early
        jobs.resume_job(session, session.get(Job, job_id))
        session.commit()
    sender.send_task("worker.run_job", args=[job_id])
    job = wait_final(session_factory, job_id)
    lines = log_lines(session_factory, job_id)
    assert job.status == "succeeded" and job.attempts == 1, (job.error, lines)
    assert any(m.startswith("resumed train from the checkpoint at epoch") for m in lines), lines
    assert_each_epoch_once(session_factory, job_id, burn_in=1, train=spec["epochs"])


def test_worker_stopped_gracefully_hands_its_job_over(worker_process, submit, session_factory):
    job_id = submit(**LONG)
    wait_for(lambda: first_train_checkpoint(session_factory, job_id), "a train checkpoint")
    worker_process.stop()  # SIGTERM: warm shutdown
    assert not worker_process.first.alive()
    handed = job_row(session_factory, job_id)
    assert handed.status == "queued" and handed.attempts == 0, log_lines(session_factory, job_id)
    worker_process()
    job = wait_final(session_factory, job_id)
    lines = log_lines(session_factory, job_id)
    assert job.status == "succeeded" and job.attempts == 1, (job.error, lines)
    assert "worker shutting down: state saved, job queued again" in lines
    assert_each_epoch_once(session_factory, job_id, burn_in=1, train=LONG["epochs"])


def test_a_hung_step_ends_its_worker_and_the_job_resumes_on_the_next(
    service_env, tmp_path, submit, session_factory
):
    """A step that never returns (in epoch 2): past DYART_STALL_SECONDS the worker says
    so in the job's log and exits; the next worker resumes the job."""
    fleet = WorkerFleet(service_env, tmp_path)
    try:
        hung = fleet(
            script=str(FAULT_WORKER), DYART_FAULT_HANG_AT_STEP="25", DYART_STALL_SECONDS="3"
        )
        job_id = submit(method="clean", burn_in_epochs=0, epochs=3, hparams={})
        wait_for(lambda: not hung.alive(), "the stalled worker to exit", timeout=180)
        assert hung.proc.returncode == runner.STALLED_EXIT, hung.output()
        stalled = [line for line in log_lines(session_factory, job_id) if "stalled" in line]
        assert len(stalled) == 1 and stalled[0].startswith("stalled: no training step for ")
        assert " in train epoch 2 (DYART_STALL_SECONDS=3)" in stalled[0], stalled
        fleet()  # a healthy worker: its sweep requeues the job once the lease runs out
        job = wait_final(session_factory, job_id)
        lines = log_lines(session_factory, job_id)
        assert job.status == "succeeded" and job.attempts == 2, (job.error, lines)
        assert "resumed train from the checkpoint at epoch 1" in lines, lines
        assert_each_epoch_once(session_factory, job_id, burn_in=0, train=3)
    finally:
        for worker in fleet.workers:
            worker.kill9()


def test_a_failing_step_says_where_and_that_resume_continues(
    service_env, tmp_path, submit, session_factory, sender
):
    """A worker whose 25th training step raises (in epoch 2); then the user resumes."""
    fleet = WorkerFleet(service_env, tmp_path)
    try:
        fleet(script=str(FAULT_WORKER), DYART_FAULT_RAISE_AT_STEP="25")
        job_id = submit(method="clean", burn_in_epochs=0, epochs=3, hparams={})
        job = wait_final(session_factory, job_id)
        assert job.status == "failed", (job.error, log_lines(session_factory, job_id))
        assert job.error.startswith(
            "internal error in train epoch 2: RuntimeError: CUDA error: an illegal memory access"
        ), job.error
        assert job.error.endswith(
            "its latest checkpoint is kept: resume the job to continue from it"
        ), job.error
        with session_factory() as session:
            jobs.resume_job(session, session.get(Job, job_id))
            session.commit()
        sender.send_task("worker.run_job", args=[job_id])
        job = wait_final(session_factory, job_id)
        lines = log_lines(session_factory, job_id)
        assert job.status == "succeeded", (job.error, lines)
        assert "resumed train from the checkpoint at epoch 1" in lines, lines
        assert_each_epoch_once(session_factory, job_id, burn_in=0, train=3)
    finally:
        for worker in fleet.workers:
            worker.kill9()
