"""Runs a job: job row -> TrainConfig -> dyart Trainer, reporting to the database.

The only place where the service meets the algorithm library. While a job
runs, a :class:`LeaseKeeper` thread renews its lease and heartbeat every
``heartbeat_seconds``; the trainer's callbacks (:class:`worker.progress.DbCallback`)
write progress, per-epoch metrics, log lines, checkpoint rows and the
evaluation, and answer ``should_stop`` from the job's cancel flag (read at most
once a second). Outcomes:

* the trainer returns                -> succeeded
* ``StopRequested`` (a cancel)       -> canceled, its checkpoint kept (resumable)
* ``DyartError`` (NaN loss, bad data) -> failed with the library's message
* anything else                      -> failed "internal error in <stage> epoch <n>:
                                        <type>: <msg>; <how to resume>", the traceback
                                        in the job's log
* the lease lost (another worker took the job after this one went silent)
                                      -> stop at once, write nothing more, save nothing.
* the database unreachable (a restart) -> wait for it (up to ``lease_seconds``), then
                                        queue the job again, its attempt given back; it
                                        resumes from its latest checkpoint
* a warm shutdown (SIGTERM)          -> the same hand-over, once its state is saved

A hand-over of a job whose cancel was asked ends it canceled instead: queued
with its flag set, no worker would take it.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import shutil
import socket
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import evaluations, jobs
from db.burn_in import find_reusable_burn_in
from db.models import Checkpoint, Evaluation, Job, utcnow
from db.session import make_engine, make_session_factory
from db.settings import WORKER_RESTART_EXIT, Settings, get_settings
from worker.artifacts import ArtifactStore, file_sha256
from worker.progress import DbCallback, LeaseLostError

log = logging.getLogger("worker")
SHUTDOWN = threading.Event()  # set by a warm shutdown of this worker (worker.app)
DATABASE_DOWN = (OperationalError, InterfaceError)  # SQLAlchemy's "cannot reach it" errors
KEPT = "its latest checkpoint is kept: resume the job to continue from it"


@lru_cache(maxsize=4)
def _factory_for(pid: int) -> sessionmaker[Session]:
    return make_session_factory(make_engine(get_settings()))


def session_factory() -> sessionmaker[Session]:
    """This process's session factory (a forked pool child makes its own engine)."""
    return _factory_for(os.getpid())


def new_worker_id() -> str:
    """A lease owner name: host, process and a random suffix per task run."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def software_versions() -> dict[str, str]:
    """What ran the job (recorded on the job: results depend on these)."""
    import torch

    import dyart

    return {
        "dyart": dyart.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": str(torch.version.cuda),
    }


class LeaseKeeper(threading.Thread):
    """Calls ``renew()`` every ``interval`` seconds; sets ``lost`` once it returns False.

    ``lease``: how long a renewal lasts. A renewal that lands more than half of it
    after the previous one logs ``heartbeat late``, with the gap and how long the
    renewal itself took: a worker starved of CPU (or kept waiting by the database)
    shows it in its log before the sweep takes its job away.
    """

    def __init__(
        self,
        renew: Callable[[], bool],
        interval: float,
        lease: float,
        watch: Callable[[], None] | None = None,
    ):
        super().__init__(name="lease-keeper", daemon=True)
        self.renew, self.interval, self.lease = renew, interval, lease
        self.watch = watch  # called before each renewal (the stall watchdog)
        self.lost, self._done = threading.Event(), threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self._done.wait(self.interval):
            if self.watch is not None:
                self.watch()
            began = time.monotonic()
            try:
                renewed = self.renew()
            except Exception as exc:  # a database blip: the lease has slack, try again
                log_retry("heartbeat", exc, self.interval)
                continue
            if not renewed:
                log.warning("lease lost: another worker owns this task now")
                self.lost.set()
                return
            now = time.monotonic()
            if now - last > self.lease / 2:
                log.warning(
                    "heartbeat late: %.1f s since the last renewal (this one took %.1f s to "
                    "write), the lease lasts %g s: is the machine overloaded?",
                    now - last, now - began, self.lease,
                )  # fmt: skip
            last = now

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=self.interval + 5)


def _renewer(factory: sessionmaker[Session], renew: Callable[..., bool], *args: Any) -> Callable:
    def call() -> bool:
        with factory() as session:
            return renew(session, *args)

    return call


def run_job(job_id: str) -> dict[str, Any]:
    """Claim the job's lease and train it; a duplicate delivery returns ``skipped``."""
    settings, factory, me = get_settings(), session_factory(), new_worker_id()
    if SHUTDOWN.is_set():  # a message fetched during a warm shutdown: leave it to others
        from worker.app import app

        app.send_task("worker.run_job", args=[job_id])
        return {"skipped": "this worker is shutting down; task sent again", "job_id": job_id}
    try:
        with factory() as session:
            if not jobs.claim_job(session, job_id, me, settings.lease_seconds):
                return _skipped(session, job_id)
            job = session.get(Job, job_id)
            config, attempts = dict(job.config), job.attempts
            job.versions = software_versions()
            jobs.add_log(session, job_id, f"attempt {attempts} started on worker {me}")
            session.commit()
    except DATABASE_DOWN as exc:
        return _claim_failed(factory, job_id, exc, settings)
    renew = _renewer(factory, jobs.renew_lease, job_id, me, settings.lease_seconds)
    watchdog = StallWatchdog(job_id, factory, settings.stall_seconds)
    keeper = LeaseKeeper(renew, settings.heartbeat_seconds, settings.lease_seconds, watchdog)
    keeper.start()
    try:
        return _train(job_id, config, settings, factory, keeper, me, watchdog)
    finally:
        keeper.stop()


STALLED_EXIT = WORKER_RESTART_EXIT  # the worker process's exit status after a stalled job


class StallWatchdog:
    """Ends this worker process when the job's training stops moving.

    A step that never returns (a GPU or NCCL hang, a deadlocked data loader) leaves
    the lease keeper renewing the lease of a job that makes no progress, forever:
    no error is raised, and the thread that hangs cannot be stopped from outside.
    Past ``limit`` seconds without a step (or 4 times the longest gap between two
    steps so far, for a model whose steps are slow on this device; the watch starts
    once one gap was measured), the job's log says so and the process
    exits (status 75): its supervisor (Docker's restart policy, Celery's pool)
    starts it again, the sweep requeues the job once its lease runs out (an attempt
    counted, so a job that hangs every time ends failed), and the job resumes from
    its latest checkpoint. The evaluate stage is not watched: one AutoAttack attack
    on many images reports nothing for hours.
    """

    def __init__(self, job_id: str, factory: sessionmaker[Session], limit: float):
        self.job_id, self.factory, self.limit = job_id, factory, limit
        self.callback: DbCallback | None = None  # set once the trainer's callback exists

    def __call__(self) -> None:
        reason = self.stalled()
        if reason is None:
            return
        log.error("job %s: %s", self.job_id, reason)
        try:
            with self.factory() as session:
                if session.get_bind().dialect.name == "postgresql":
                    # a writer hung while holding the job's log lock must not hold the exit
                    session.execute(text("SET LOCAL lock_timeout = '5s'"))
                jobs.add_log(session, self.job_id, reason, "ERROR")
                session.commit()
        except Exception:  # the exit matters more than the line
            log.exception("job %s: could not write the stall to its log", self.job_id)
        logging.shutdown()
        os._exit(STALLED_EXIT)

    def stalled(self) -> str | None:
        """Why the job counts as stalled now, or None."""
        callback = self.callback
        if not self.limit or callback is None:
            return None
        if callback.alive_at is None or callback.longest_gap is None:
            return None
        stage, epoch = callback.position or ("train", 0)
        idle = time.monotonic() - callback.alive_at
        slow = 4 * callback.longest_gap
        if stage == "evaluate" or idle < max(self.limit, slow):
            return None
        why = (
            f"DYART_STALL_SECONDS={self.limit:g}"
            if self.limit >= slow
            else f"4 times the longest gap between steps so far, {callback.longest_gap:.0f} s"
        )
        return (
            f"stalled: no training step for {idle:.0f} s in {stage} epoch {epoch} ({why}), "
            "a hung step (GPU or data loader?); this worker exits to be restarted, and the "
            "job is requeued once its lease runs out and resumes from its latest checkpoint"
        )


def _first_line(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]


def log_retry(what: str, exc: BaseException, seconds: float) -> None:
    """A periodic task failed and will run again: one line while the database is away
    (an outage repeats it every period), the traceback for anything else."""
    if isinstance(exc, DATABASE_DOWN):
        log.warning(
            "%s failed: database unreachable (%s: %s); retrying in %ss",
            what, type(exc).__name__, _first_line(exc), seconds,
        )  # fmt: skip
    else:
        log.exception("%s failed; retrying in %ss", what, seconds)


def _wait_for_database(factory: sessionmaker[Session], timeout: float) -> tuple[bool, bool]:
    """Poll the database once a second for up to ``timeout`` seconds.

    Returns ``(answers, was_down)``: whether it answers now, and whether it failed
    to answer at least once (an outage, not an error of one statement).
    """
    deadline, was_down = time.monotonic() + timeout, False
    while True:
        try:
            with factory() as session:
                session.execute(text("SELECT 1"))
            return True, was_down
        except DATABASE_DOWN:
            was_down = True
            if time.monotonic() >= deadline:
                return False, was_down
            time.sleep(1.0)


def _outage(exc: BaseException, was_down: bool) -> bool:
    """The database went away (not a statement that fails every time, like a timeout)."""
    return was_down or bool(getattr(exc, "connection_invalidated", False))


def write_through_outage(
    factory: sessionmaker[Session], timeout: float, what: str, write: Callable[[], Any]
) -> Any:
    """``write()``; if the database does not answer, wait for it (up to ``timeout``
    seconds) and write once more. For the writes that end a job or an evaluation:
    without this a short outage left a finished job running until the sweep, which
    counted an attempt (and on the last one failed it). The writes are conditional
    UPDATEs, so the second try cannot apply twice. Returns what ``write()`` returns,
    None if the database stayed away: the sweep takes the row over once it is back.
    """
    try:
        return write()
    except DATABASE_DOWN as exc:
        log.warning("%s: database unreachable (%s); waiting for it", what, _first_line(exc))
    answers, _ = _wait_for_database(factory, timeout)
    if not answers:
        log.warning("%s: database still unreachable; the sweep takes over once it is back", what)
        return None
    log.info("%s: database answers again; writing it now", what)
    return write()


def _claim_failed(
    factory: sessionmaker[Session], job_id: str, exc: BaseException, settings: Settings
) -> dict[str, Any]:
    """The database did not answer the claim: send the task again once it is back.

    Without this the message would be consumed and the job would wait for the
    sweep's ``resend_after_seconds``.
    """
    log.warning("job %s: database error at claim (%s); checking it", job_id, _first_line(exc))
    answers, was_down = _wait_for_database(factory, settings.lease_seconds)
    if not answers:
        reason = "database unreachable; the sweep sends the job again once it is back"
        return {"skipped": reason, "job_id": job_id}
    if not _outage(exc, was_down):
        raise exc
    from worker.app import app

    app.send_task("worker.run_job", args=[job_id])
    return {"skipped": "database was unreachable at claim; task sent again", "job_id": job_id}


def _database_lost(
    factory: sessionmaker[Session], job_id: str, me: str, exc: BaseException, settings: Settings
) -> dict[str, Any] | None:
    """Training stopped because the database went away: requeue the job once it is back.

    The job's files are intact (its state is saved at every epoch end); nothing
    was wrong with the job, so it goes back to the queue with its attempt given
    back and resumes from its latest checkpoint. If the database stays away past
    the lease, the sweep requeues the job when it returns (an attempt counted).
    None if the database answers at once and its connection was not lost: the
    error was of one statement, and the job fails like any other error.
    """
    reason = _first_line(exc)
    log.warning("job %s: database error during training (%s); checking it", job_id, reason)
    answers, was_down = _wait_for_database(factory, settings.lease_seconds)
    if not answers:
        log.warning("job %s: database still unreachable; the sweep will requeue the job", job_id)
        return {"job_id": job_id, "status": "database_unreachable"}
    if not _outage(exc, was_down):
        return None  # the database answers: an error like any other
    lost = f"database connection lost during training ({type(exc).__name__})"
    message = f"{lost}; job queued again, it resumes from its latest checkpoint"
    canceled = f"canceled: {lost}, with a cancel pending; {KEPT}"
    try:
        return _hand_over(factory, job_id, me, message, "WARNING", canceled, settings.lease_seconds)
    except DATABASE_DOWN:  # gone again: the sweep takes over
        return {"job_id": job_id, "status": "database_unreachable"}


def _skipped(session: Session, job_id: str) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None:
        return {"skipped": f"job {job_id} does not exist", "job_id": job_id}
    if job.status == "running":
        reason = f"job is running on {job.lease_owner} (lease held)"
        jobs.add_log(session, job_id, f"duplicate delivery ignored: {reason}", "DEBUG")
        session.commit()
    else:
        reason = f"job is {job.status}"
    log.info("skipped job %s: %s", job_id, reason)
    return {"skipped": reason, "job_id": job_id}


def _train(
    job_id: str,
    config_dict: dict[str, Any],
    settings: Settings,
    factory: sessionmaker[Session],
    keeper: LeaseKeeper,
    me: str,
    watchdog: StallWatchdog | None = None,
) -> dict[str, Any]:
    from dyart.errors import DyartError, StopRequested

    store, lease = ArtifactStore(settings.artifacts_dir), settings.lease_seconds
    callback = DbCallback(
        job_id, factory, store, keeper.lost, config_dict, shutdown=SHUTDOWN,
        owner=me, lease_seconds=lease,
    )  # fmt: skip
    if watchdog is not None:
        watchdog.callback = callback
    try:
        trainer = _make_trainer(job_id, config_dict, settings, factory, store, callback)
        with _warnings_to_log(factory, job_id, "evaluate"):
            trainer.run()
    except LeaseLostError:
        log.warning("job %s: lease lost; leaving it to its new worker", job_id)
        return {"job_id": job_id, "status": "lease_lost"}
    except StopRequested as exc:
        if callback.handing_over:
            return _hand_over(factory, job_id, me, canceled=f"canceled: {exc}", wait=lease)
        return _end(factory, job_id, me, "canceled", f"canceled: {exc}", lease=lease)
    except DyartError as exc:
        return _end(factory, job_id, me, "failed", str(exc), lease=lease)
    except Exception as exc:
        if isinstance(exc, DATABASE_DOWN):
            lost = _database_lost(factory, job_id, me, exc, settings)
            if lost is not None:
                return lost
        job_dir = store.job_dir(job_id)
        if _disk_full(exc, store.root, job_dir):
            error = (
                f"artifact disk full: no space left in {store.root} to write the job's files "
                f"({type(exc).__name__}: {exc}); free some space, then resume the job"
            )
        else:
            error = _internal_error(exc, callback.position, job_dir)
        return _end(factory, job_id, me, "failed", error, traceback.format_exc(), lease=lease)
    return _end(factory, job_id, me, "succeeded", "succeeded", lease=lease)


def _internal_error(exc: BaseException, position: tuple[str, int] | None, job_dir: Path) -> str:
    """What failed, where, and what the user can do: the checkpoint is kept, resume works."""
    where = ""
    if position:
        stage, epoch = position
        where = f" in {stage}" if stage == "evaluate" else f" in {stage} epoch {epoch}"
    if (job_dir / "state" / "latest.pt").is_file():
        advice = "its latest checkpoint is kept: resume the job to continue from it"
    else:
        advice = "no checkpoint was written yet: resume the job to start it again"
    return f"internal error{where}: {type(exc).__name__}: {exc}; {advice}"


def _disk_full(exc: BaseException, root: Path, job_dir: Path) -> bool:
    """Did ``exc`` come from a full artifact disk?

    An ``OSError`` ENOSPC/EDQUOT anywhere in the chain says so; torch's checkpoint
    writer reports a short write only as "unexpected pos", so a disk with less
    room left than the job's largest file (at least 1 MiB) counts as full too.
    """
    seen: BaseException | None = exc
    for _ in range(20):  # a chain, not a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        free = shutil.disk_usage(root).free
        sizes = [p.stat().st_size for p in job_dir.rglob("*") if p.is_file()]
    except OSError:
        return False
    return free < max([1 << 20, *sizes])


def _make_trainer(
    job_id: str,
    config_dict: dict[str, Any],
    settings: Settings,
    factory: sessionmaker[Session],
    store: ArtifactStore,
    callback: DbCallback,
) -> Any:
    from dyart.config import TrainConfig
    from dyart.train import Trainer

    config = TrainConfig.from_dict(config_dict, settings.data_dir, stored=True)
    out_dir = store.job_dir(job_id)
    state = out_dir / "state" / "latest.pt"
    init_from = None
    with factory() as session:
        if state.is_file():
            jobs.add_log(session, job_id, f"resuming from the checkpoint {store.relative(state)}")
        else:
            init_from = _reuse_burn_in(session, job_id, config, store)
        session.commit()
    return Trainer(
        config,
        out_dir,
        device=settings.device,
        data_dir=settings.data_dir,
        callbacks=[callback],
        init_from=init_from,
    )


def _reuse_burn_in(session: Session, job_id: str, config: Any, store: ArtifactStore) -> Any:
    """The burn_in.pt of an earlier job with an equal burn-in config, recorded on the job."""
    from dyart.train import burn_in_mismatch

    found = find_reusable_burn_in(session, job_id, config.burn_in_key(), store.resolve)
    if found is None:
        return None
    source_id, path = found
    reason = burn_in_mismatch(path, config)  # e.g. made on an earlier split of the dataset
    if reason:
        reason = reason.replace(str(path), store.relative(path))  # no server paths in a log
        jobs.add_log(session, job_id, f"not reusing the burn-in of job {source_id}: {reason}")
        return None
    session.get(Job, job_id).burn_in_source_job_id = source_id
    jobs.add_log(session, job_id, f"reusing the burn-in of job {source_id} (equal burn-in config)")
    return path


def _end(
    factory: sessionmaker[Session],
    job_id: str,
    me: str,
    status: str,
    message: str,
    details: str | None = None,
    *,
    lease: float,
) -> dict[str, Any]:
    """Write the job's final ``status``, through a database outage of up to ``lease`` s."""

    def write() -> bool:
        with factory() as session:
            if status == "succeeded":
                changed = jobs.mark_succeeded(session, job_id, me, commit=False)
            elif status == "canceled":
                changed = jobs.mark_canceled(session, job_id, me, commit=False)
            else:
                changed = jobs.mark_failed(session, job_id, message, me, commit=False)
            if changed:
                if status != "succeeded":  # a success has recorded its evaluation
                    jobs.close_own_evaluations(session, job_id, status, message)
                jobs.add_log(session, job_id, message, "INFO" if status != "failed" else "ERROR")
                if details:
                    jobs.add_log(session, job_id, details, "ERROR")
            session.commit()
            return changed

    changed = write_through_outage(factory, lease, f"job {job_id}: ending {status}", write)
    if changed is None:
        return {"job_id": job_id, "status": "database_unreachable"}
    log.info("job %s %s", job_id, status if changed else f"{status} (lease already lost)")
    return {"job_id": job_id, "status": status if changed else "lease_lost"}


def run_evaluation(evaluation_id: str) -> dict[str, Any]:
    """AutoAttack on an existing checkpoint (POST .../evaluations), under its own lease.

    Stops before its next attack when its lease is lost, when the user cancels it,
    or at a warm shutdown (it is then queued again, its attempt not counted; the
    attacks it finished are kept and reused)."""
    settings, factory, me = get_settings(), session_factory(), new_worker_id()
    store = ArtifactStore(settings.artifacts_dir)
    if SHUTDOWN.is_set():  # a message fetched during a warm shutdown: leave it to others
        from worker.app import app

        app.send_task("worker.run_evaluation", args=[evaluation_id])
        return {"skipped": "this worker is shutting down; task sent again"}
    with factory() as session:
        claimed = evaluations.claim_evaluation(
            session, evaluation_id, me, settings.lease_seconds, settings.max_attempts
        )
        if not claimed:
            evaluation = session.get(Evaluation, evaluation_id)
            status = evaluation.status if evaluation is not None else "missing"
            return {"skipped": f"evaluation is {status}", "evaluation_id": evaluation_id}
        spec = _evaluation_spec(session, evaluation_id, store)
        jobs.add_log(session, spec["job_id"], f"{spec['name']}: started on worker {me}")
        session.commit()
    renew = _renewer(
        factory, evaluations.renew_evaluation_lease, evaluation_id, me, settings.lease_seconds
    )
    keeper = LeaseKeeper(renew, settings.heartbeat_seconds, settings.lease_seconds)
    canceled = _CancelPoll(factory, evaluation_id, settings.heartbeat_seconds)
    from dyart.errors import StopRequested

    def should_stop() -> bool:
        return keeper.lost.is_set() or SHUTDOWN.is_set() or canceled()

    keeper.start()
    try:
        with _warnings_to_log(factory, spec["job_id"], spec["name"]):
            values = {"status": "succeeded", **_autoattack(spec, settings, should_stop)}
    except StopRequested:
        if keeper.lost.is_set():  # the lease went to another worker: it writes the result
            log.warning("evaluation %s: lease lost, stopped before the next attack", evaluation_id)
            return {"evaluation_id": evaluation_id, "status": "lease_lost"}
        if SHUTDOWN.is_set() and not canceled():
            return _hand_over_evaluation(factory, evaluation_id, me, spec, settings.lease_seconds)
        values = {"status": "canceled", "error": "canceled while running"}
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".replace(f"{store.root}/", "")
        values = {"status": "failed", "error": error}
        log.exception("evaluation %s failed", evaluation_id)
    else:
        _add_to_card(spec, evaluation_id, values)
    finally:
        keeper.stop()
    return _end_evaluation(factory, evaluation_id, me, values, settings.lease_seconds, spec)


def _add_to_card(spec: dict[str, Any], evaluation_id: str, values: dict[str, Any]) -> None:
    """Add the result to the model card beside the weights it measured, so a user who
    downloads the model has it; not when the file holds other weights by now. A card
    that cannot be written leaves the result in the database only."""
    from dyart.checkpoint import read_card, write_card

    card_path = spec["weights"].with_suffix(".json")
    try:
        card = read_card(card_path)
        if card["sha256"] != spec["sha256"]:
            return  # the file holds newer weights by now
        entry = {
            "id": evaluation_id, "preset": spec["preset"], "n": values["n"],
            "norm": spec["norm"], "leaderboard_grade": values["leaderboard_grade"],
            "results": values["results"], "warnings": values.get("warnings", []),
            "finished_at": utcnow().isoformat(),
        }  # fmt: skip
        kept = [e for e in card.get("evaluations", []) if e.get("id") != evaluation_id]
        # written from the card whose sha256 was checked (once, if it ran twice)
        write_card(card_path, {**card, "evaluations": [*kept, entry]})
    except Exception as exc:
        log.warning("evaluation %s: could not add it to %s: %s", evaluation_id, card_path, exc)


class _CancelPoll:
    """Whether the user canceled the evaluation, asked of the database at most every
    ``interval`` seconds (the attacks ask before each one)."""

    def __init__(self, factory: sessionmaker[Session], evaluation_id: str, interval: float):
        self.factory, self.evaluation_id, self.interval = factory, evaluation_id, interval
        self.asked, self.canceled = -float("inf"), False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.canceled and now - self.asked >= self.interval:
            self.asked = now
            try:
                with self.factory() as session:
                    self.canceled = evaluations.is_cancel_requested(session, self.evaluation_id)
            except DATABASE_DOWN:
                pass  # asked again next time; the lease keeper minds the outage
        return self.canceled


class _warnings_to_log:
    """The evaluation's warnings (``EvaluationWarning``: a model in train mode, outputs
    that look like probabilities, signs of gradient masking) go to the job's log as
    well as the worker's, where the user sees them. Other warnings are left alone."""

    def __init__(self, factory: sessionmaker[Session], job_id: str, prefix: str):
        self.factory, self.job_id, self.prefix = factory, job_id, prefix
        self._catcher = warnings.catch_warnings()

    def __enter__(self) -> None:
        from dyart.evaluate import EvaluationWarning

        self._catcher.__enter__()
        warnings.simplefilter("always", EvaluationWarning)
        shown = warnings.showwarning

        def show(message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
            shown(message, category, filename, lineno, *rest)
            if not issubclass(category, EvaluationWarning):
                return
            try:
                with self.factory() as session:
                    jobs.add_log(
                        session, self.job_id, f"{self.prefix}: warning: {message}", "WARNING"
                    )
                    session.commit()
            except Exception as exc:  # the warning is in the worker's log anyway
                log.warning("could not add a warning to job %s's log: %s", self.job_id, exc)

        warnings.showwarning = show

    def __exit__(self, *exc: Any) -> None:
        self._catcher.__exit__(*exc)


def _hand_over_evaluation(
    factory: sessionmaker[Session],
    evaluation_id: str,
    me: str,
    spec: dict[str, Any],
    wait: float = 0.0,
) -> dict[str, Any]:
    """Warm shutdown: the evaluation goes back to the queue for another worker (its
    attempt not counted), or ends canceled if a cancel was asked meanwhile; through a
    database outage of up to ``wait`` seconds, as for a job (:func:`_hand_over`)."""

    def write() -> tuple[str | None]:
        with factory() as session:
            status = evaluations.release_evaluation(session, evaluation_id, me)
            if status is not None:
                message = (
                    "worker shutting down: queued again, finished attacks kept"
                    if status == "queued"
                    else "canceled while running"
                )
                jobs.add_log(session, spec["job_id"], f"{spec['name']}: {status}: {message}")
                session.commit()
            return (status,)

    what = f"evaluation {evaluation_id}: handing over"
    written = write_through_outage(factory, wait, what, write)
    if written is None:
        return {"evaluation_id": evaluation_id, "status": "database_unreachable"}
    (status,) = written
    if status is None:
        return {"evaluation_id": evaluation_id, "status": "lease_lost"}
    if status == "queued":
        from worker.app import app

        app.send_task("worker.run_evaluation", args=[evaluation_id])
        return {"evaluation_id": evaluation_id, "status": "handed_over"}
    return {"evaluation_id": evaluation_id, "status": status}


def _end_evaluation(
    factory: sessionmaker[Session],
    evaluation_id: str,
    me: str,
    values: dict[str, Any],
    lease: float,
    spec: dict[str, Any],
) -> dict[str, Any]:
    """Write the evaluation's result, through a database outage of up to ``lease`` s."""

    def write() -> bool:
        with factory() as session:
            ended = evaluations.finish_evaluation(
                session, evaluation_id, me, commit=False, **values
            )
            if ended:
                said = values.get("error") or _results_line(values.get("results") or [])
                level = "ERROR" if values["status"] == "failed" else "INFO"
                jobs.add_log(session, spec["job_id"], f"{spec['name']}: {values['status']}: {said}",
                             level)  # fmt: skip
            session.commit()
            return ended

    what = f"evaluation {evaluation_id}: ending {values['status']}"
    if write_through_outage(factory, lease, what, write) is None:
        return {"evaluation_id": evaluation_id, "status": "database_unreachable"}
    return {"evaluation_id": evaluation_id, "status": values["status"]}


def _results_line(results: list[dict[str, Any]]) -> str:
    """``eps 0.1: clean 0.912, robust 0.634; ...``"""

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    return "; ".join(
        f"eps {r.get('eps'):g}: clean {number(r.get('clean_acc'))}, "
        f"robust {number(r.get('robust_acc'))}"
        for r in results
    )


def _evaluation_spec(session: Session, evaluation_id: str, store: ArtifactStore) -> dict:
    evaluation = session.get(Evaluation, evaluation_id)
    job = session.get(Job, evaluation.job_id)
    checkpoint = session.get(Checkpoint, evaluation.checkpoint_id)
    pinned = (
        f"{evaluation.checkpoint_kind} checkpoint, epoch {evaluation.checkpoint_epoch}"
        if evaluation.checkpoint_kind
        else "checkpoint"
    )
    return {
        "job_id": job.id,
        "name": f"evaluation {evaluation.id[:8]} ({evaluation.preset}, n={evaluation.n}, {pinned})",
        "sha256": evaluation.checkpoint_sha256,
        "pinned": pinned,
        "config": dict(job.config),
        "weights": store.resolve(checkpoint.path) if checkpoint is not None else None,
        "state_dir": store.job_dir(job.id) / "state" / "evaluations" / evaluation_id,
        "eps": list(evaluation.eps),
        "preset": evaluation.preset,
        "n": evaluation.n,
        "norm": evaluation.norm,
    }


def _autoattack(
    spec: dict[str, Any], settings: Settings, lost: Callable[[], bool]
) -> dict[str, Any]:
    """Load the checkpoint and the test set, run AutoAttack; the row's new values.

    ``lost`` is asked before each attack: once the lease is lost the evaluation stops
    (StopRequested), so two workers never write the same progress files for long."""
    from dyart.catalog import leaderboard_grade
    from dyart.checkpoint import load_model
    from dyart.config import TrainConfig
    from dyart.data import load_dataset
    from dyart.errors import CheckpointError
    from dyart.evaluate import autoattack_eval, pixels
    from dyart.train import resolve_device

    if spec["weights"] is None:
        raise CheckpointError("checkpoint: the evaluation's checkpoint no longer exists")
    if (
        spec["sha256"]
        and spec["weights"].is_file()
        and file_sha256(spec["weights"]) != spec["sha256"]
    ):
        raise CheckpointError(
            f"checkpoint: the {spec['pinned']} was replaced by newer weights after this "
            "evaluation was asked for; ask again to evaluate the checkpoint as it is now"
        )
    config = TrainConfig.from_dict(spec["config"], settings.data_dir, stored=True)
    device = resolve_device(settings.device)
    data = load_dataset(
        config.dataset, settings.data_dir, val_size=config.val_size, seed=config.seed, device=device
    )
    n = min(spec["n"], len(data.test_x))
    model = load_model(spec["weights"], device=device)
    result = autoattack_eval(
        model, pixels(data.test_x[:n], device), data.test_y[:n].to(device),
        eps_list=spec["eps"], preset=spec["preset"], norm=spec["norm"],
        state_dir=spec["state_dir"], seed=config.seed, should_stop=lost,
    )  # fmt: skip
    return {
        "results": result["results"],
        "n": n,
        "leaderboard_grade": leaderboard_grade(config.dataset, spec["preset"], n),
        "warnings": list(result.get("warnings") or []),
    }


def _hand_over(
    factory: sessionmaker[Session],
    job_id: str,
    me: str,
    message: str = "worker shutting down: state saved, job queued again",
    level: str = "INFO",
    canceled: str = f"canceled: worker shutting down, with a cancel pending; {KEPT}",
    wait: float = 0.0,
) -> dict[str, Any]:
    """Queue the saved job again for another worker (its attempt not counted); a job
    whose cancel was asked meanwhile ends canceled instead, logging ``canceled``.

    A database that does not answer is waited for up to ``wait`` seconds (the lease:
    within a warm shutdown's grace period); past that the sweep requeues the job once
    it is back, and its attempt is given back for the outage it saw."""

    def write() -> tuple[str | None]:
        with factory() as session:
            status = jobs.release_job(session, job_id, me, commit=False)
            if status is None:
                return (None,)
            if status == "canceled":
                jobs.add_log(session, job_id, canceled)
            else:
                jobs.add_log(session, job_id, message, level)
            session.commit()
            return (status,)

    written = write_through_outage(factory, wait, f"job {job_id}: handing over", write)
    if written is None:
        return {"job_id": job_id, "status": "database_unreachable"}
    (status,) = written
    if status is None:
        return {"job_id": job_id, "status": "lease_lost"}
    if status == "canceled":
        log.info("job %s canceled (cancel pending at hand-over)", job_id)
        return {"job_id": job_id, "status": "canceled"}
    from worker.app import app

    app.send_task("worker.run_job", args=[job_id])
    return {"job_id": job_id, "status": "handed_over"}
