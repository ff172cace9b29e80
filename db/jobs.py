"""A job's life in the database: transitions, the lease, heartbeats, the stale sweep.

The database is the lock (DESIGN.md §4). A worker runs a job only while it
holds the job's *lease*, taken by one conditional UPDATE (:func:`claim_job`), so
a task the broker delivers twice (Redis re-delivers unacknowledged tasks after
its visibility timeout) finds the lease held and exits. The holder renews the
lease with every heartbeat; a job whose heartbeat goes stale (its worker died)
is put back in the queue by :func:`requeue_stale_jobs`, or failed once it has
used its attempts.

Attempts: each claim counts one. A stale requeue keeps the count (the next
claim makes it 2, ...); a user's resume of a canceled or failed job starts a
fresh budget (attempts back to 0), since the user chose to try again.

Lease operations (claim, renew, finish) commit at once: a lease that is not
visible to other workers is no lease. The other functions leave the commit to
the caller, who may group them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, literal, or_, select, text, update
from sqlalchemy.orm import Session

from db.locks import hold_row
from db.models import (
    FINAL_STATUSES,
    METRIC_COLUMNS,
    Evaluation,
    Job,
    JobLog,
    JobMetric,
    User,
    new_id,
    utcnow,
)

TRANSITIONS = {
    "queued": {"running", "canceled", "failed"},
    "running": {"queued", "succeeded", "failed", "canceled"},
    "failed": {"queued"},
    "canceled": {"queued"},
    "succeeded": set(),
}


class JobStateError(Exception):
    """Base of the job-state errors."""


class InvalidTransitionError(JobStateError):
    """A job cannot go from its status to the one asked (the API answers 409)."""

    def __init__(self, job_id: str, current: str, wanted: str):
        super().__init__(f"job {job_id} is {current}; it cannot become {wanted}")
        self.job_id, self.current, self.wanted = job_id, current, wanted


def check_transition(job: Job, wanted: str) -> None:
    """Raise InvalidTransitionError unless ``job.status -> wanted`` is allowed."""
    if wanted not in TRANSITIONS.get(job.status, set()):
        raise InvalidTransitionError(job.id, job.status, wanted)


def create_job(
    session: Session,
    owner: User,
    config: dict[str, Any],
    name: str | None = None,
    max_attempts: int = 3,
    idempotency_key: str | None = None,
) -> Job:
    """A queued job for a resolved TrainConfig dict (flushed; commit, then send the task)."""
    job = Job(
        idempotency_key=idempotency_key,
        id=new_id(),
        owner_id=owner.id,
        name=name,
        method=config["method"],
        dataset=config["dataset"],
        config=config,
        status="queued",
        total_epochs=int(config.get("burn_in_epochs") or 0) + int(config.get("epochs") or 0),
        max_attempts=max_attempts,
        sent_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def job_by_idempotency_key(session: Session, owner: User, key: str) -> Job | None:
    """The owner's job submitted with ``key``, if any."""
    return session.scalars(
        select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == key)
    ).first()


def claim_job(
    session: Session, job_id: str, worker_id: str, lease_seconds: float, now: datetime | None = None
) -> bool:
    """Take the job's lease in ONE conditional UPDATE; True if this worker got it.

    Claimable: queued, or running with an expired lease (its worker died), in
    both cases with attempts left and no cancel pending. Counts one attempt. A
    queued job with a cancel pending is ended canceled instead (``end_pending_cancels``).
    """
    now = now or utcnow()
    claimable = or_(
        Job.status == "queued",
        (Job.status == "running") & (Job.lease_expires_at < now),
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.attempts < Job.max_attempts)
        .where(Job.cancel_requested.is_(False))
        .values(
            status="running",
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            error=None,
            finished_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        end_pending_cancels(session, now, job_id)
        return False
    session.execute(
        update(Job).where(Job.id == job_id, Job.started_at.is_(None)).values(started_at=now)
    )
    session.commit()
    return True


def renew_lease(
    session: Session, job_id: str, worker_id: str, lease_seconds: float, now: datetime | None = None
) -> bool:
    """Heartbeat: extend this worker's lease; False if it is no longer the holder."""
    held = hold_lease(session, job_id, worker_id, lease_seconds, now)
    session.commit()
    return held


def hold_lease(
    session: Session, job_id: str, worker_id: str, lease_seconds: float, now: datetime | None = None
) -> bool:
    """Extend this worker's lease inside the caller's transaction; False if it is not
    the holder. Until the caller commits, the job's row is locked (Postgres) or the
    database is (SQLite), so the writes that follow land only while the lease is held:
    the sweep cannot requeue the job in between."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id, Job.status == "running")
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


heartbeat = renew_lease


def _finish(
    session: Session, job_id: str, worker_id: str | None, commit: bool = True, **values: Any
) -> bool:
    """Move a running job to a final or queued state, if ``worker_id`` still holds it.

    ``commit=False`` lets the caller add log lines in the same transaction.
    """
    query = update(Job).where(Job.id == job_id, Job.status == "running")
    if worker_id is not None:
        query = query.where(Job.lease_owner == worker_id)
    result = session.execute(
        query.values(lease_owner=None, lease_expires_at=None, **values).execution_options(
            synchronize_session=False
        )
    )
    if commit:
        session.commit()
    return result.rowcount == 1


def mark_succeeded(
    session: Session, job_id: str, worker_id: str | None = None, commit: bool = True
) -> bool:
    """The job finished every stage."""
    return _finish(session, job_id, worker_id, commit, status="succeeded", finished_at=utcnow())


def mark_failed(
    session: Session, job_id: str, error: str, worker_id: str | None = None, commit: bool = True
) -> bool:
    """The job failed with ``error`` (shown to the user); its checkpoints are kept."""
    return _finish(
        session, job_id, worker_id, commit, status="failed", error=error, finished_at=utcnow()
    )


def mark_canceled(
    session: Session, job_id: str, worker_id: str | None = None, commit: bool = True
) -> bool:
    """The trainer stopped on a cancel request, after saving a checkpoint."""
    return _finish(session, job_id, worker_id, commit, status="canceled", finished_at=utcnow())


def release_job(session: Session, job_id: str, worker_id: str, commit: bool = True) -> str | None:
    """Give a running job back to the queue (its worker is shutting down after saving).

    The attempt is given back too: the job was not lost, so it does not count.
    A job whose cancel was asked meanwhile ends canceled instead: queued, no
    worker would take it. One conditional UPDATE decides on the flag as it is,
    so a cancel landing during the hand-over cannot be lost. Returns the new
    status ("queued" or "canceled"), None if ``worker_id`` no longer holds the job.
    """
    now = utcnow()
    canceling = Job.cancel_requested.is_(True)
    status = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == worker_id)
        .values(
            status=case((canceling, "canceled"), else_="queued"),
            finished_at=case((canceling, literal(now, Job.finished_at.type)), else_=None),
            attempts=Job.attempts - 1,
            sent_at=now,
            resends=0,
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(Job.status)
        .execution_options(synchronize_session=False)
    )
    if status == "canceled":
        close_own_evaluations(session, job_id, "canceled", "canceled with its job", now)
    if commit:
        session.commit()
    return status


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel: a queued job ends at once; a running one is asked to stop at its next step.

    Judged by conditional UPDATEs, not by the status ``job`` was read with: a
    worker may claim the job, or the sweep queue it again, in between. Raises
    InvalidTransitionError if the job has ended. ``job`` is refreshed; the caller
    commits.
    """
    for _ in range(3):  # the job may move between queued and running meanwhile
        if _cancel_queued(session, job.id) or _ask_running_to_stop(session, job.id):
            session.refresh(job)
            return job
        session.refresh(job)
        if job.status not in ("queued", "running"):
            break
    raise InvalidTransitionError(job.id, job.status, "canceled")


def _cancel_queued(session: Session, job_id: str) -> bool:
    """queued -> canceled, only if the job is queued now (its own evaluation ends too)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="canceled", finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    close_own_evaluations(session, job_id, "canceled", "canceled with its job", now)
    return True


def _ask_running_to_stop(session: Session, job_id: str) -> bool:
    """Set the cancel flag, only if the job is running now; its worker reads it."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def end_pending_cancels(session: Session, now: datetime, job_id: str | None = None) -> list[str]:
    """End canceled the queued jobs (or the one ``job_id``) whose cancel was asked while
    they ran: no worker claims such a job, so queued it would wait forever. Commits."""
    query = update(Job).where(Job.status == "queued", Job.cancel_requested.is_(True))
    if job_id is not None:
        query = query.where(Job.id == job_id)
    ended = list(
        session.scalars(
            query.values(status="canceled", finished_at=now)
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
    )
    for ended_id in ended:
        close_own_evaluations(session, ended_id, "canceled", "canceled with its job", now)
        add_log(
            session,
            ended_id,
            "canceled: the cancel was asked before the job went back to the queue; "
            "its latest checkpoint is kept: resume the job to continue from it",
        )
    session.commit()
    return ended


def close_own_evaluations(
    session: Session, job_id: str, status: str, error: str, now: datetime | None = None
) -> int:
    """End the job's own running evaluation (its evaluate stage: no lease owner of its
    own, so the evaluation sweep never looks at it) with the job's final ``status``.
    Returns how many rows it ended."""
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.job_id == job_id, Evaluation.status == "running")
        .where(Evaluation.lease_owner.is_(None))
        .values(status=status, finished_at=now or utcnow(), error=error)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)


def resume_job(session: Session, job: Job) -> Job:
    """Queue a canceled or failed job again; it resumes from its latest checkpoint.

    The attempt budget starts afresh (attempts = 0): the user asked to try again.
    """
    if job.status not in ("canceled", "failed"):
        raise InvalidTransitionError(job.id, job.status, "queued")
    job.status, job.error, job.cancel_requested = "queued", None, False
    job.attempts, job.finished_at, job.sent_at, job.resends = 0, None, utcnow(), 0
    job.lease_owner = job.lease_expires_at = None
    session.flush()
    return job


requeue = resume_job


def is_cancel_requested(session: Session, job_id: str) -> bool:
    """One cheap read of the job's cancel flag."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def set_progress(
    session: Session, job_id: str, stage: str | None, epoch: int | None, step: int | None
) -> None:
    """Record where the job is (stage, 1-based epoch, step within the stage)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(stage=stage, epoch=epoch, step=step)
        .execution_options(synchronize_session=False)
    )


def record_metric(
    session: Session, job_id: str, stage: str, epoch: int, row: dict[str, Any]
) -> JobMetric:
    """Insert the epoch's row, or update it if that epoch already has one (a re-run).

    Either way the row takes the job's next ``seq``, so a stream that has sent the
    old values sends the new ones.
    """
    values = {k: _number(row.get(k)) for k in METRIC_COLUMNS}
    seq = _next_seq(session, JobMetric, job_id)
    metric = session.scalars(
        select(JobMetric).where(
            JobMetric.job_id == job_id, JobMetric.stage == stage, JobMetric.epoch == epoch
        )
    ).first()
    if metric is None:
        metric = JobMetric(job_id=job_id, stage=stage, epoch=epoch, seq=seq, **values)
        session.add(metric)
    else:
        for key, value in values.items():
            setattr(metric, key, value)
        metric.seq = seq
        metric.created_at = utcnow()
    session.flush()
    return metric


def _number(value: Any) -> float | None:
    """A finite float or None (NaN and inf are not valid JSON; the row keeps None)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def add_log(session: Session, job_id: str, message: str, level: str = "INFO") -> JobLog:
    """Append a line to the job's log; it takes the job's next ``seq``."""
    seq = _next_seq(session, JobLog, job_id)
    line = JobLog(job_id=job_id, seq=seq, level=level, message=message)
    session.add(line)
    session.flush()
    return line


def _next_seq(session: Session, model: type[JobLog] | type[JobMetric], job_id: str) -> int:
    """The next number of the job's log lines or metric rows, counted per job.

    A reader follows a job by these numbers (``GET /jobs/{id}/log?after=``, the event
    stream's cursor), so they must become visible in order: a reader that saw 8 before
    7 was committed would pass over 7 for good. So the rows of one job are numbered and
    written one transaction at a time: on Postgres under a transaction-scoped advisory
    lock on the job and the table; on SQLite under the database's write lock, taken
    before the read (the driver starts a transaction only at the first write, so two
    sessions could otherwise read the same last number). The unique key (job_id, seq)
    turns any other race into an error, never into two rows with one number.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = f"{model.__tablename__}:{job_id}"
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
    else:
        hold_row(session, Job, job_id)
    last = session.scalar(select(func.max(model.seq)).where(model.job_id == job_id))
    return (last or 0) + 1


def requeue_stale_jobs(
    session: Session, now: datetime, stale_after: float, outage_began: datetime | None = None
) -> list[str]:
    """Requeue running jobs whose heartbeat is older than ``stale_after`` seconds.

    A job out of attempts fails ("gave up after N attempts: worker lost"); a job
    with a pending cancel ends canceled; either way its own running evaluation ends
    with it. ``outage_began``: when the sweeping process last reached the database
    before an outage it saw (``OutageClock``). A job whose heartbeat was still fresh
    then went stale because its worker could not write either: it is requeued with
    its attempt given back, not blamed on the worker.
    Each change is a conditional UPDATE, so two sweeps at once cannot both take a
    job. Returns the ids to send again.
    """
    cutoff = now - timedelta(seconds=stale_after)
    stale_heartbeat = or_(Job.heartbeat_at < cutoff, Job.heartbeat_at.is_(None))
    stale = session.execute(
        select(
            Job.id,
            Job.attempts,
            Job.max_attempts,
            Job.cancel_requested,
            Job.heartbeat_at,
            Job.lease_owner,
        ).where(Job.status == "running", stale_heartbeat)
    ).all()
    requeued = []
    for job_id, attempts, max_attempts, cancel, heartbeat_at, owner in stale:
        if explained_by_outage(heartbeat_at, stale_after, outage_began) and not cancel:
            values, message = _outage_outcome(attempts, heartbeat_at, now)
        else:
            values, message = _stale_outcome(
                attempts, max_attempts, cancel, now, heartbeat_at, owner
            )
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", stale_heartbeat)
            .where(Job.cancel_requested.is_(cancel))  # a cancel asked since: next sweep
            .values(lease_owner=None, lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            add_log(session, job_id, message, "WARNING")
            if values["status"] == "queued":
                requeued.append(job_id)
            else:
                close_own_evaluations(session, job_id, values["status"], message, now)
    session.commit()
    return requeued


def queued_again(now: datetime, give_back: int | None = None) -> dict[str, Any]:
    """The values of a row put back in the queue with its task sent ``now``: the wait
    before a re-send starts afresh; ``give_back``: the attempts to give one back from."""
    values: dict[str, Any] = {"status": "queued", "sent_at": now, "resends": 0}
    if give_back is not None:
        values["attempts"] = max(give_back - 1, 0)
    return values


def explained_by_outage(
    heartbeat_at: datetime | None, stale_after: float, outage_began: datetime | None
) -> bool:
    """Whether a heartbeat went stale during a database outage rather than before it:
    it was less than ``stale_after`` old when the outage began."""
    if heartbeat_at is None or outage_began is None:
        return False
    return heartbeat_at + timedelta(seconds=stale_after) > outage_began


def _outage_outcome(
    attempts: int, heartbeat_at: datetime, now: datetime
) -> tuple[dict[str, Any], str]:
    silent = (now - heartbeat_at).total_seconds()
    message = (
        f"database unreachable for longer than the lease (no heartbeat for {silent:.0f} s); "
        f"requeued with attempt {attempts} given back, it resumes from its latest checkpoint"
    )
    return queued_again(now, give_back=attempts), message


def _stale_outcome(
    attempts: int,
    max_attempts: int,
    cancel: bool,
    now: datetime,
    heartbeat_at: datetime | None,
    owner: str | None,
) -> tuple[dict[str, Any], str]:
    if cancel:
        return {"status": "canceled", "finished_at": now}, "worker lost while canceling: canceled"
    if attempts >= max_attempts:
        error = f"gave up after {attempts} attempts: worker lost"
        return {"status": "failed", "error": error, "finished_at": now}, error
    silent = (
        "no heartbeat ever"
        if heartbeat_at is None
        else f"no heartbeat for {(now - heartbeat_at).total_seconds():.0f} s"
    )
    message = (
        f"worker lost (heartbeat stale); requeued after attempt {attempts} "
        f"({silent} from worker {owner})"
    )
    return queued_again(now), message


# Each time the sweep sends a queued task again, it waits twice as long before the next
# time, up to this many times ``resend_after``: a task lost by the broker is still sent
# again after ``resend_after``, while a job merely waiting in a long queue gains a few
# messages instead of one every ``resend_after``.
RESEND_BACKOFF_MAX = 8


def resend_interval(resend_after: float, resends: int) -> float:
    """Seconds to wait after a task went out before sending it again, having re-sent
    it ``resends`` times since it was last queued."""
    return resend_after * min(2 ** min(resends, 30), RESEND_BACKOFF_MAX)


def stamp_queued_to_resend(
    session: Session, model: type[Any], now: datetime, resend_after: float
) -> list[str]:
    """Ids of queued ``model`` rows (jobs or evaluations) due to be sent again, stamped
    ``sent_at = now`` and one more ``resends``.

    A row is due ``resend_interval(resend_after, resends)`` seconds after its task went
    out. Rows are stamped by one conditional UPDATE ... RETURNING per ``resends`` value
    (a handful), on ``status``, ``resends`` and ``sent_at``: of several workers
    sweeping at once, only the one whose update stamps a row sends it again, and a row
    queued afresh meanwhile (``sent_at`` now) is left alone.
    """
    cutoff = now - timedelta(seconds=resend_after)
    counts = session.scalars(
        select(model.resends)
        .where(model.status == "queued", or_(model.sent_at < cutoff, model.sent_at.is_(None)))
        .distinct()
    ).all()
    ids: list[str] = []
    for resends in sorted(counts):
        due_cutoff = now - timedelta(seconds=resend_interval(resend_after, resends))
        ids += session.scalars(
            update(model)
            .where(
                model.status == "queued",
                model.resends == resends,
                or_(model.sent_at < due_cutoff, model.sent_at.is_(None)),
            )
            .values(sent_at=now, resends=resends + 1)
            .returning(model.id)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return ids


def queued_jobs_to_resend(session: Session, now: datetime, resend_after: float) -> list[str]:
    """Queued jobs due to be sent again (``stamp_queued_to_resend``), stamped now."""
    return stamp_queued_to_resend(session, Job, now, resend_after)


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES
