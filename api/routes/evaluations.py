"""Evaluations: a job's AutoAttack results, and new evaluations of its checkpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.celery_client import RUN_EVALUATION, send_task
from api.deps import _ID, CurrentUser, OwnedJob, SessionDep, within_active_limit
from api.errors import ResourceNotFoundError, StateConflictError
from api.routes import API_PREFIX, AUTHED_ERRORS, error_responses
from api.schemas import EpsResult, EvaluationCreate, EvaluationPublic, EvaluationsPage
from db import evaluations
from db.locks import hold_row
from db.models import FINAL_STATUSES, PENDING_STATUSES, Checkpoint, Evaluation, Job, utcnow
from dyart import catalog

router = APIRouter(prefix=API_PREFIX, tags=["evaluations"], responses=AUTHED_ERRORS)


def evaluation_public(evaluation: Evaluation, job: Job) -> EvaluationPublic:
    dataset = (job.config or {}).get("dataset")
    results = [EpsResult(**r) for r in (evaluation.results or [])]
    return EvaluationPublic(
        id=evaluation.id,
        job_id=evaluation.job_id,
        checkpoint_id=evaluation.checkpoint_id,
        checkpoint_kind=evaluation.checkpoint_kind,
        checkpoint_epoch=evaluation.checkpoint_epoch,
        checkpoint_sha256=evaluation.checkpoint_sha256,
        status=evaluation.status,
        cancel_requested=bool(evaluation.cancel_requested),
        preset=evaluation.preset,
        n=evaluation.n,
        norm=evaluation.norm,
        eps=list(evaluation.eps or []),
        results=results,
        warnings=list(evaluation.warnings or []),
        error=evaluation.error,
        created_at=evaluation.created_at,
        finished_at=evaluation.finished_at,
        # From the catalog, whatever the row says: a dataset without a published test
        # set (synthetic) is never leaderboard-grade, however many images were attacked.
        leaderboard_grade=evaluation.status == "succeeded"
        and catalog.leaderboard_grade(dataset or "", evaluation.preset, evaluation.n),
    )


def job_evaluations(session: Session, job: Job) -> list[EvaluationPublic]:
    rows = session.scalars(
        select(Evaluation).where(Evaluation.job_id == job.id).order_by(Evaluation.created_at)
    )
    return [evaluation_public(e, job) for e in rows]


@router.get("/jobs/{job_id}/evaluations", response_model=EvaluationsPage)
def list_evaluations(job: OwnedJob, session: SessionDep) -> EvaluationsPage:
    """The job's AutoAttack evaluations; leaderboard_grade marks full standard runs."""
    return EvaluationsPage(items=job_evaluations(session, job))


def _pick_checkpoint(session: Session, job: Job, kind: str | None) -> Checkpoint:
    kinds = [kind] if kind else ["best", "final"]
    for wanted in kinds:
        row = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job.id, Checkpoint.kind == wanted)
            .order_by(Checkpoint.created_at.desc())
            .limit(1)
        ).first()
        if row is not None:
            return row
    which = " or ".join(kinds)
    if job.status in FINAL_STATUSES:
        raise StateConflictError(
            f"job {job.id} ended {job.status} without a {which} checkpoint; nothing to evaluate"
        )
    raise StateConflictError(
        f"job {job.id} has no {which} checkpoint yet; evaluate it once training has saved one"
    )


@router.post(
    "/jobs/{job_id}/evaluations",
    status_code=202,
    response_model=EvaluationPublic,
    responses=error_responses(429),
)
def create_evaluation(
    body: EvaluationCreate, job: OwnedJob, session: SessionDep, request: Request, user: CurrentUser
) -> EvaluationPublic:
    """Evaluate a checkpoint of the job with AutoAttack at the given eps.

    The evaluation is pinned to the checkpoint's current weights (kind, epoch,
    sha256): if training replaces them before it runs, it fails and says so. ``n``
    above the dataset's test set is the whole test set. The same request while an
    identical one (same weights, preset, n, eps) is queued or running returns that one.
    """
    checkpoint = _pick_checkpoint(session, job, body.checkpoint)
    config = job.config or {}
    norm = (config.get("hparams") or {}).get("norm", "linf")
    card = catalog.DATASETS.get(config.get("dataset") or "")
    full = card.test_size if card is not None else None
    n = min(body.n, full) if full is not None else body.n
    # one request at a time per job, so two identical requests sent at once make one
    hold_row(session, Job, job.id)
    same = session.scalars(
        select(Evaluation).where(
            Evaluation.job_id == job.id,
            Evaluation.checkpoint_kind == checkpoint.kind,
            Evaluation.status.in_(PENDING_STATUSES),
            Evaluation.cancel_requested.is_(False),
            Evaluation.checkpoint_sha256 == checkpoint.sha256,
            Evaluation.preset == body.preset,
            Evaluation.n == n,
        )
    ).all()
    for evaluation in same:
        if list(evaluation.eps or []) == list(body.eps):
            return evaluation_public(evaluation, job)
    within_active_limit(session, user, request.app.state.settings, "this evaluation")
    evaluation = Evaluation(
        job_id=job.id,
        checkpoint_id=checkpoint.id,
        checkpoint_kind=checkpoint.kind,
        checkpoint_epoch=checkpoint.epoch,
        checkpoint_sha256=checkpoint.sha256,
        status="queued",
        preset=body.preset,
        n=n,
        norm=norm,
        eps=list(body.eps),
        results=[],
        sent_at=utcnow(),
    )
    session.add(evaluation)
    session.commit()
    send_task(request.app.state.celery, RUN_EVALUATION, evaluation.id)
    return evaluation_public(evaluation, job)


@router.post(
    "/jobs/{job_id}/evaluations/{evaluation_id}/cancel",
    status_code=202,
    response_model=EvaluationPublic,
)
def cancel_evaluation(evaluation_id: str, job: OwnedJob, session: SessionDep) -> EvaluationPublic:
    """Cancel an evaluation: a queued one ends at once, a running one before its next
    attack."""
    evaluation = session.get(Evaluation, evaluation_id) if _ID.fullmatch(evaluation_id) else None
    if evaluation is None or evaluation.job_id != job.id:
        raise ResourceNotFoundError("evaluation", evaluation_id)
    if evaluation.status not in PENDING_STATUSES:
        raise StateConflictError(
            f"evaluation {evaluation.id} is already {evaluation.status}; nothing to cancel"
        )
    if evaluation.lease_owner is None and evaluation.status == "running":
        raise StateConflictError(
            f"evaluation {evaluation.id} is the job's own; cancel the job instead"
        )
    done = evaluations.request_cancel(session, evaluation.id)
    session.commit()
    session.refresh(evaluation)
    if done == "none":  # it ended between the read above and the update
        raise StateConflictError(
            f"evaluation {evaluation.id} is already {evaluation.status}; nothing to cancel"
        )
    return evaluation_public(evaluation, job)
