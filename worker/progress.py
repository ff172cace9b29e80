"""The trainer's callbacks that write a job's progress to the database.

Each hook opens a short session and commits, so the API (and its event
stream) sees progress as it happens. A checkpoint row is written only in
``on_checkpoint``, which the trainer calls after the file's atomic rename: the
size and sha256 are of the complete file; a file a killed worker never recorded
is recorded when the job resumes (its card says its epoch and sha256).
``should_stop`` is called after every step, so it reads the cancel flag at most
once per ``poll_seconds``.

The job's own AutoAttack evaluation (its ``evaluate`` stage) is an evaluation
row with no lease owner (the job's lease covers it); evaluations asked for later
have their own lease (``worker.run_evaluation``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import jobs
from db.models import CHECKPOINT_KINDS, Checkpoint, Evaluation, JobMetric, utcnow
from dyart.callbacks import Callback
from worker.artifacts import ArtifactStore, file_sha256

log = logging.getLogger("worker")
POLL_SECONDS = 1.0


class LeaseLostError(Exception):
    """Another worker owns the job now: stop at once, save and write nothing."""


class DbCallback(Callback):
    """dyart callback protocol (dyart.callbacks.Callback) writing to the job's rows."""

    def __init__(
        self,
        job_id: str,
        factory: sessionmaker[Session],
        store: ArtifactStore,
        lease_lost: threading.Event,
        config: dict[str, Any],
        poll_seconds: float = POLL_SECONDS,
        shutdown: threading.Event | None = None,
        owner: str | None = None,
        lease_seconds: float = 0.0,
    ):
        self.job_id, self.factory, self.store = job_id, factory, store
        self.lease_lost, self.config, self.poll_seconds = lease_lost, config, poll_seconds
        self._cancel, self._polled = False, 0.0
        self.shutdown = shutdown or threading.Event()
        self.handing_over = False
        self._recovered = False
        self.owner, self.lease_seconds = owner, lease_seconds
        self.position: tuple[str, int] | None = None  # (stage, epoch) being run, for errors
        self._epochs = 0
        # when the trainer last asked should_stop (every step) or ended an epoch; None
        # until its first step (loading a dataset may take long and is not watched); and
        # the longest gap between two such moments (None until one was measured)
        self.alive_at: float | None = None
        self.longest_gap: float | None = None

    @contextmanager
    def _held(self) -> Iterator[Session]:
        """A session whose writes land only while this worker holds the job's lease.

        With an ``owner``, the transaction begins by renewing the lease (a conditional
        UPDATE that keeps the row locked until commit); if another worker holds the
        job now, nothing is written and LeaseLostError stops the trainer.
        """
        if self.lease_lost.is_set():
            raise LeaseLostError(f"job {self.job_id}: lease lost")
        with self.factory() as session:
            if self.owner is not None and not jobs.hold_lease(
                session, self.job_id, self.owner, self.lease_seconds
            ):
                session.rollback()
                self.lease_lost.set()
                raise LeaseLostError(f"job {self.job_id}: lease lost")
            yield session

    def _log(self, session: Session, message: str, level: str = "INFO") -> None:
        jobs.add_log(session, self.job_id, message, level)

    def on_stage_start(self, stage: str, info: dict[str, Any]) -> None:
        start = int(info.get("start_epoch") or 0)
        self.position, self._epochs = (stage, start + 1), int(info.get("epochs") or 0)
        if self.alive_at is not None:
            self.alive_at = time.monotonic()  # a new stage loads its start: not a gap
        recover, self._recovered = not self._recovered, True  # once per attempt
        if recover:
            self._recover_checkpoints()
        with self._held() as session:
            if recover:  # before the attempt's first row
                self._recover_rows(session)
            if info.get("fallback"):
                self._log(session, str(info["fallback"]), "WARNING")
            jobs.set_progress(
                session, self.job_id, stage, start + 1 if stage != "evaluate" else 0, 0
            )
            if stage == "evaluate":
                self._start_evaluation(session, info)
                self._log(session, f"evaluate: AutoAttack {info.get('preset')} on "
                          f"{info.get('n')} test images at eps {info.get('eps')}")  # fmt: skip
            elif info.get("resumed"):
                self._log(session, f"resumed {stage} from the checkpoint at epoch {start}")
                threads, began = info.get("threads"), info.get("threads_began")
                if threads and began and threads != began:
                    warning = (
                        f"training on {threads} torch threads, the run began on {began}: this "
                        "worker has fewer cores, so the result will not be bit-identical to "
                        "an uninterrupted run"
                    )
                    self._log(session, warning, "WARNING")
            else:
                self._log(session, f"{stage}: {info.get('epochs')} epochs of "
                          f"{info.get('steps_per_epoch')} steps")  # fmt: skip
            session.commit()

    def _recover_rows(self, session: Session) -> None:
        """Epoch rows the trainer wrote to metrics.jsonl but the database never got.

        The trainer saves its state before calling ``on_epoch_end``; a worker
        killed in between leaves an epoch that will not run again. Its row is
        in the trainer's own metrics file: copy it over.
        """
        path = self.store.job_dir(self.job_id) / "metrics.jsonl"
        if not path.is_file():
            return
        query = select(JobMetric.stage, JobMetric.epoch).where(JobMetric.job_id == self.job_id)
        have = {(stage, epoch) for stage, epoch in session.execute(query)}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                key = (str(row["stage"]), int(row["epoch"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by the kill
            if key not in have:
                have.add(key)
                metric = jobs.record_metric(session, self.job_id, *key, row)
                self._log(session, _epoch_line(metric, row) + " [recovered from metrics.jsonl]")

    def _recover_checkpoints(self) -> None:
        """Checkpoint rows a killed worker never brought up to date with their files.

        The trainer writes a model file and then calls ``on_checkpoint``; a worker
        killed in between leaves the file newer than its row (another epoch, another
        sha256), so downloads would send a checksum the bytes do not have. The card
        beside each file says its stage, epoch and sha256: where the row differs,
        write it again from the file.
        """
        with self.factory() as session:
            query = select(Checkpoint.kind, Checkpoint.sha256)
            have = dict(session.execute(query.where(Checkpoint.job_id == self.job_id)).all())
        for path in sorted(self.store.job_dir(self.job_id).glob("model-*.safetensors")):
            kind = path.stem.removeprefix("model-")
            try:
                card = json.loads(path.with_suffix(".json").read_text())
                stage, epoch, sha256 = str(card["stage"]), int(card["epoch"]), card["sha256"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # no whole card: the trainer writes this file again
            if kind in CHECKPOINT_KINDS and have.get(kind) != sha256:
                self._write_checkpoint(kind, path, stage, epoch, "recovered")

    def on_checkpoint(self, kind: str, path: Path, stage: str, epoch: int) -> None:
        self._write_checkpoint(kind, path, stage, epoch, "saved")

    def on_step(self, stage: str, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.position = (stage, epoch)
        with self._held() as session:
            jobs.set_progress(session, self.job_id, stage, epoch, step)
            session.commit()

    def on_epoch_end(self, stage: str, epoch: int, row: dict[str, Any]) -> None:
        self._alive()
        self.position = (stage, min(epoch + 1, self._epochs or epoch + 1))
        with self._held() as session:
            metric = jobs.record_metric(session, self.job_id, stage, epoch, row)
            jobs.set_progress(session, self.job_id, stage, epoch, None)
            self._log(session, _epoch_line(metric, row))
            session.commit()

    def _write_checkpoint(self, kind: str, path: Path, stage: str, epoch: int, verb: str) -> None:
        path = Path(path)
        robustbench = path.with_name(f"{path.stem}-robustbench.pt")
        values = {
            "stage": stage,
            "epoch": epoch,
            "path": self.store.relative(path),
            "card_path": self.store.relative(path.with_suffix(".json")),
            "robustbench_path": self.store.relative(robustbench) if robustbench.is_file() else None,
            "size": path.stat().st_size,
            "sha256": file_sha256(path),
            "created_at": utcnow(),
        }
        with self._held() as session:
            row = session.scalars(
                select(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.kind == kind)
            ).first()
            if row is None:
                session.add(Checkpoint(job_id=self.job_id, kind=kind, **values))
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            where = f"{stage} epoch {epoch}, {values['size']} bytes"
            if verb == "saved":
                self._log(session, f"checkpoint {kind} saved ({where})")
            else:
                self._log(session, f"checkpoint {kind}: row brought up to date with its file "
                          f"({where}); a worker had stopped before recording it")  # fmt: skip
            session.commit()

    def _start_evaluation(self, session: Session, info: dict[str, Any]) -> None:
        if _own_evaluation(session, self.job_id) is not None:
            return  # resumed: the row of the interrupted evaluation carries on
        session.add(
            Evaluation(
                job_id=self.job_id,
                status="running",
                preset=str(info.get("preset") or self.config.get("eval_preset")),
                n=int(info.get("n") or 0),
                norm=(self.config.get("hparams") or {}).get("norm", "linf"),
                eps=list(info.get("eps") or []),
                results=[],
                started_at=utcnow(),
            )
        )

    def on_evaluation(self, result: dict[str, Any]) -> None:
        with self._held() as session:
            evaluation = _own_evaluation(session, self.job_id)
            if evaluation is None:
                return
            checkpoint = session.scalars(
                select(Checkpoint).where(
                    Checkpoint.job_id == self.job_id, Checkpoint.kind == result.get("checkpoint")
                )
            ).first()
            if checkpoint is not None:  # the weights it attacked, pinned like a requested one's
                evaluation.checkpoint_id = checkpoint.id
                evaluation.checkpoint_kind = checkpoint.kind
                evaluation.checkpoint_epoch = checkpoint.epoch
                evaluation.checkpoint_sha256 = checkpoint.sha256
            evaluation.results = list(result.get("results") or [])
            evaluation.n = int(result.get("n") or evaluation.n)
            evaluation.leaderboard_grade = bool(result.get("leaderboard_grade"))
            evaluation.warnings = list(result.get("warnings") or [])
            evaluation.status, evaluation.finished_at = "succeeded", utcnow()
            self._log(session, f"evaluation done: {evaluation.results}")
            session.commit()

    def _alive(self) -> float:
        """Stamp the trainer as alive now; returns now."""
        now = time.monotonic()
        if self.alive_at is not None:
            self.longest_gap = max(self.longest_gap or 0.0, now - self.alive_at)
        self.alive_at = now
        return now

    def should_stop(self) -> bool:
        now = self._alive()
        if self.lease_lost.is_set():
            raise LeaseLostError(f"job {self.job_id}: lease lost")
        if self.shutdown.is_set():
            self.handing_over = True  # the trainer saves its state, then stops
            return True
        if not self._cancel and now - self._polled >= self.poll_seconds:
            self._polled = now
            with self.factory() as session:
                self._cancel = jobs.is_cancel_requested(session, self.job_id)
        return self._cancel


def _epoch_line(metric: JobMetric, row: dict[str, Any]) -> str:
    """``train epoch 3 done: train_loss=... val_pgd_acc=... (4.2 s)``"""
    shown = ("train_loss", "train_clean_acc", "val_clean_acc", "val_pgd_acc")
    numbers = " ".join(
        f"{k}={getattr(metric, k):.4f}" for k in shown if getattr(metric, k) is not None
    )
    seconds = float(row.get("seconds") or 0)
    return f"{metric.stage} epoch {metric.epoch} done: {numbers} ({seconds:.1f} s)"


def _own_evaluation(session: Session, job_id: str) -> Evaluation | None:
    """The job's own running evaluation (no lease owner of its own), if any."""
    return session.scalars(
        select(Evaluation)
        .where(Evaluation.job_id == job_id, Evaluation.status == "running")
        .where(Evaluation.lease_owner.is_(None))
        .order_by(Evaluation.created_at.desc())
    ).first()
