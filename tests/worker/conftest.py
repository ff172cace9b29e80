"""Worker-test helpers: tiny jobs, a Celery client that sends by name, waiting on rows."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select

from db import jobs
from db.models import Evaluation, Job, JobLog, JobMetric

# A job small enough for a test: digits + an MLP, 1 burn-in epoch, a few DyART epochs.
TINY_JOB = {
    "dataset": "digits",
    "architecture": "mlp",
    "method": "dyart",
    "burn_in_epochs": 1,
    "epochs": 3,
    "batch_size": 64,
    "val_size": 128,
    "val_pgd_steps": 3,
    "eval_preset": "fast",
    "eval_eps": [0.1],
    "eval_n": 50,
    "hparams": {"iterations": 3},
}


def resolved(spec: dict[str, Any]) -> dict[str, Any]:
    from dyart import catalog

    config, errors = catalog.validate_job(spec)
    assert not errors, errors
    return config


@pytest.fixture
def job_id(session_factory, make_user) -> str:
    """A queued tiny job of a user "owner" (no task sent), with two attempts; its id."""
    owner, _ = make_user("owner")
    with session_factory() as session:
        job = jobs.create_job(session, owner, resolved(TINY_JOB), name="t", max_attempts=2)
        session.commit()
        return job.id


@pytest.fixture
def trained(settings, session_factory, make_user) -> tuple[str, str]:
    """A job with a burn-in model and its ``best`` checkpoint row: (job id, checkpoint id)."""
    from db.models import Checkpoint
    from dyart.config import TrainConfig
    from dyart.train import Trainer
    from worker.artifacts import ArtifactStore, file_sha256

    owner, _ = make_user("owner")
    config = resolved({**TINY_JOB, "eval_eps": []})
    store = ArtifactStore(settings.artifacts_dir)
    with session_factory() as session:
        job = jobs.create_job(session, owner, config)
        session.commit()
        job_id = job.id
    Trainer(TrainConfig.from_dict(config, settings.data_dir), store.job_dir(job_id),
            device="cpu").run(("burn_in",))  # fmt: skip
    weights = store.job_dir(job_id) / "model-burn_in.safetensors"
    with session_factory() as session:
        row = Checkpoint(job_id=job_id, kind="best", epoch=1, path=store.relative(weights),
                         size=weights.stat().st_size, sha256=file_sha256(weights))  # fmt: skip
        session.add(row)
        session.commit()
        return job_id, row.id


@pytest.fixture
def sender(settings):
    """A Celery client that sends tasks by name, like the API's."""
    app = Celery("test-sender", broker=settings.broker_url, set_as_current=False)
    if settings.broker_url.startswith("sqla+sqlite"):
        app.conf.broker_transport_options = {"connect_args": {"timeout": 30}}
    yield app
    app.close()


@pytest.fixture
def submit(session_factory, make_user, sender) -> Callable[..., str]:
    """``submit(send=True, **overrides)``: a queued tiny job (its task sent); its id."""
    owner, _ = make_user("owner")

    def make(send: bool = True, **overrides: Any) -> str:
        spec = {**TINY_JOB, **overrides}
        with session_factory() as session:
            job = jobs.create_job(session, owner, resolved(spec), name="test")
            job_id = job.id
            session.commit()
        if send:
            sender.send_task("worker.run_job", args=[job_id])
        return job_id

    return make


def wait_for(check: Callable[[], Any], what: str, timeout: float = 180.0, every=0.2) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_row(session_factory, job_id: str) -> Job:
    with session_factory(expire_on_commit=False) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def wait_final(session_factory, job_id: str, timeout: float = 240.0) -> Job:
    def final():
        job = job_row(session_factory, job_id)
        return job if job.status in ("succeeded", "failed", "canceled") else None

    return wait_for(final, f"job {job_id} to end", timeout)


def log_lines(session_factory, job_id: str) -> list[str]:
    with session_factory() as session:
        query = select(JobLog.message).where(JobLog.job_id == job_id).order_by(JobLog.id)
        return list(session.scalars(query))


def add_own_evaluation(session_factory, job_id: str) -> str:
    """A running evaluation of the job's evaluate stage (no lease owner of its own); its id."""
    with session_factory() as session:
        row = Evaluation(job_id=job_id, status="running", preset="fast", n=10, eps=[0.1])
        session.add(row)
        session.commit()
        return row.id


def metric_keys(session_factory, job_id: str) -> list[tuple[str, int]]:
    with session_factory() as session:
        query = select(JobMetric.stage, JobMetric.epoch).where(JobMetric.job_id == job_id)
        return [tuple(r) for r in session.execute(query.order_by(JobMetric.id))]
