"""Evaluations asked for after training (``worker.run_evaluation``): their lease.

The same pattern as a job's (:mod:`db.jobs`): one conditional UPDATE takes the
lease, the holder renews it with heartbeats, and the sweep requeues an
evaluation whose worker went silent, or fails it once out of attempts. (A job's
own evaluate stage runs under the job's lease; its row has no lease owner.)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.jobs import explained_by_outage, queued_again, stamp_queued_to_resend
from db.models import Evaluation, utcnow


def claim_evaluation(
    session: Session,
    evaluation_id: str,
    worker_id: str,
    lease_seconds: float,
    max_attempts: int,
    now: datetime | None = None,
) -> bool:
    """The evaluation's lease, taken like :func:`claim_job`; True if this worker got it."""
    now = now or utcnow()
    claimable = or_(
        Evaluation.status == "queued",
        (Evaluation.status == "running") & (Evaluation.lease_expires_at < now),
    )
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, claimable, Evaluation.attempts < max_attempts)
        .where(Evaluation.cancel_requested.is_(False))
        .values(
            status="running",
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            attempts=Evaluation.attempts + 1,
            started_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def renew_evaluation_lease(
    session: Session, evaluation_id: str, worker_id: str, lease_seconds: float
) -> bool:
    """Heartbeat of a running evaluation; False if this worker lost it."""
    now = utcnow()
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.lease_owner == worker_id)
        .where(Evaluation.status == "running")
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def finish_evaluation(
    session: Session,
    evaluation_id: str,
    worker_id: str | None,
    status: str,
    commit: bool = True,
    **values: Any,
) -> bool:
    """End a running evaluation (succeeded with ``results``, failed with ``error``, or
    canceled)."""
    query = update(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.status == "running")
    if worker_id is not None:
        query = query.where(Evaluation.lease_owner == worker_id)
    result = session.execute(
        query.values(
            status=status, finished_at=utcnow(), lease_owner=None, lease_expires_at=None, **values
        ).execution_options(synchronize_session=False)
    )
    if commit:
        session.commit()
    return result.rowcount == 1


def requeue_stale_evaluations(
    session: Session,
    now: datetime,
    stale_after: float,
    max_attempts: int,
    outage_began: datetime | None = None,
) -> list[str]:
    """Stale running evaluations back to queued (or failed when out of attempts).

    As for jobs (``db.jobs.requeue_stale_jobs``), one whose heartbeat went stale
    during a database outage the sweep saw gets its attempt back.
    """
    cutoff = now - timedelta(seconds=stale_after)
    stale = or_(Evaluation.heartbeat_at < cutoff, Evaluation.heartbeat_at.is_(None))
    rows = session.execute(
        select(
            Evaluation.id, Evaluation.attempts, Evaluation.heartbeat_at,
            Evaluation.cancel_requested,
        ).where(Evaluation.status == "running", Evaluation.lease_owner.is_not(None), stale)
    ).all()  # fmt: skip
    requeued = []
    for evaluation_id, attempts, heartbeat_at, cancel in rows:
        outage = explained_by_outage(heartbeat_at, stale_after, outage_began)
        failed = attempts >= max_attempts and not outage
        values: dict[str, Any]
        if cancel:  # asked while it ran: its worker is gone, so it ends here
            values = {"status": "canceled", "finished_at": now,
                      "error": "canceled while running (its worker stopped)"}  # fmt: skip
        elif failed:
            values = {"status": "failed", "finished_at": now,
                      "error": f"gave up after {attempts} attempts: worker lost"}  # fmt: skip
        else:
            values = queued_again(now, give_back=attempts if outage else None)
        result = session.execute(
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == "running", stale)
            .values(lease_owner=None, lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1 and values["status"] == "queued":
            requeued.append(evaluation_id)
    session.commit()
    return requeued


def queued_evaluations_to_resend(session: Session, now: datetime, resend_after: float) -> list[str]:
    """Queued evaluations due to be sent again (``stamp_queued_to_resend``), stamped now.

    An evaluation whose task the broker never got (it was down when the API sent
    it, or lost it) would otherwise wait forever.
    """
    return stamp_queued_to_resend(session, Evaluation, now, resend_after)


def request_cancel(session: Session, evaluation_id: str, now: datetime | None = None) -> str:
    """Cancel: a queued evaluation ends canceled at once; a running one gets
    ``cancel_requested`` and its worker stops it before the next attack. The caller
    commits. Returns what was done: ``canceled``, ``requested`` or ``none`` (it had
    ended meanwhile)."""
    now = now or utcnow()
    ended = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status == "queued")
        .values(
            status="canceled",
            finished_at=now,
            cancel_requested=True,
            error="canceled before it started",
        )  # fmt: skip
        .execution_options(synchronize_session=False)
    )
    if ended.rowcount == 1:
        return "canceled"
    asked = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    return "requested" if asked.rowcount == 1 else "none"


def is_cancel_requested(session: Session, evaluation_id: str) -> bool:
    return bool(
        session.scalar(select(Evaluation.cancel_requested).where(Evaluation.id == evaluation_id))
    )


def release_evaluation(session: Session, evaluation_id: str, worker_id: str) -> str | None:
    """A shutting-down worker gives a running evaluation back: queued again with its
    attempt not counted (finished attacks are kept on disk), or canceled if a cancel
    was asked. Commits; None if this worker no longer held it."""
    held = (
        (Evaluation.id == evaluation_id)
        & (Evaluation.lease_owner == worker_id)
        & (Evaluation.status == "running")
    )
    now = utcnow()
    for _ in range(2):  # a cancel may land between the two conditional updates
        canceled = session.execute(
            update(Evaluation)
            .where(held, Evaluation.cancel_requested.is_(True))
            .values(
                status="canceled",
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                error="canceled while running",
            )  # fmt: skip
            .execution_options(synchronize_session=False)
        )
        if canceled.rowcount == 1:
            session.commit()
            return "canceled"
        attempts = session.scalar(select(Evaluation.attempts).where(held))
        if attempts is None:
            session.commit()
            return None
        queued = session.execute(
            update(Evaluation)
            .where(held, Evaluation.cancel_requested.is_(False))
            .values(
                lease_owner=None, lease_expires_at=None, **queued_again(now, give_back=attempts)
            )  # fmt: skip
            .execution_options(synchronize_session=False)
        )
        if queued.rowcount == 1:
            session.commit()
            return "queued"
    session.commit()
    return None
