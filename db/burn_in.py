"""Burn-in reuse: find an earlier job whose burn-in this job may start from.

Two jobs share a burn-in when the settings that decide it are equal
(``dyart.config.TrainConfig.burn_in_key()``; the caller passes that dict, so
this module needs no torch). A candidate is another job of the same owner with a
completed burn-in: a ``burn_in`` checkpoint row, whose ``burn_in.pt`` is still on
disk. Only the owner's own jobs count: reusing another user's would start this job
from their weights and name their job in this one's record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Checkpoint, Job
from dyart import catalog

BURN_IN_STATE = "burn_in.pt"


def find_reusable_burn_in(
    session: Session,
    job_id: str,
    burn_in_key: dict[str, Any],
    resolve: Callable[[str], Path],
) -> tuple[str, Path] | None:
    """``(source_job_id, path to its burn_in.pt)`` of the owner's newest matching job,
    or None.

    Args:
        session: a database session.
        job_id: the job that wants a burn-in (never matched with itself).
        burn_in_key: ``TrainConfig.burn_in_key()`` of that job.
        resolve: maps a stored relative artifact path to an absolute one (and
            refuses paths outside the store).
    """
    if not burn_in_key.get("burn_in_epochs"):
        return None
    owner = select(Job.owner_id).where(Job.id == job_id).scalar_subquery()
    rows = session.execute(
        select(Job.id, Job.config, Checkpoint.path)
        .join(Checkpoint, Checkpoint.job_id == Job.id)
        .where(Checkpoint.kind == "burn_in", Job.id != job_id, Job.owner_id == owner)
        .where(Job.dataset == burn_in_key.get("dataset"))
        .order_by(Checkpoint.created_at.desc())
    )
    for source_id, config, weights in rows:
        stored = catalog.with_new_defaults(config or {})
        if {k: stored.get(k) for k in burn_in_key} != burn_in_key:
            continue
        try:
            state = resolve(weights).with_name(BURN_IN_STATE)
        except ValueError:
            continue
        if state.is_file():
            return source_id, state
    return None
