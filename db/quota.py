"""How much work a user has waiting or running: what ``max_active_per_user`` limits.

A user's active work is their queued and running jobs plus the evaluations they
asked for that are queued or running (a job's own evaluate stage is part of its
job: its row has no lease owner of its own while it runs).
"""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from db.locks import hold_row
from db.models import PENDING_STATUSES, Evaluation, Job, User


def active_work(session: Session, user_id: str) -> int:
    """The user's queued and running jobs and requested evaluations.

    Holds the user's row first (:func:`db.locks.hold_row`) until the caller's commit,
    so two requests of one user at once are counted one after the other, and the
    limit holds exactly.
    """
    hold_row(session, User, user_id)
    jobs = session.scalar(
        select(func.count()).where(Job.owner_id == user_id, Job.status.in_(PENDING_STATUSES))
    )
    evaluations = session.scalar(
        select(func.count())
        .select_from(Evaluation)
        .join(Job, Job.id == Evaluation.job_id)
        .where(
            Job.owner_id == user_id,
            or_(
                Evaluation.status == "queued",
                and_(Evaluation.status == "running", Evaluation.lease_owner.is_not(None)),
            ),
        )
    )
    return int(jobs or 0) + int(evaluations or 0)
