"""Evaluations: a job's AutoAttack results, and new evaluations of its checkpoints."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.celery_client import RUN_EVALUATION, send_task
from api.deps import OwnedJob, SessionDep
from api.errors import StateConflictError
from api.routes import API_PREFIX, AUTHED_ERRORS
from api.routes.catalog import FULL_TEST_SIZE
from api.schemas import EpsResult, EvaluationCreate, EvaluationPublic, EvaluationsPage
from db.models import Checkpoint, Evaluation, Job, utcnow

router = APIRouter(prefix=API_PREFIX, tags=["evaluations"], responses=AUTHED_ERRORS)


def leaderboard_grade(preset: str, n: int, dataset: str | None) -> bool:
    """Only the standard preset on the dataset's whole test set is leaderboard-grade."""
    full = FULL_TEST_SIZE.get(dataset or "")
    return preset == "standard" and full is not None and n >= full


def evaluation_public(evaluation: Evaluation, job: Job) -> EvaluationPublic:
    dataset = (job.config or {}).get("dataset")
    results = [EpsResult(**r) for r in (evaluation.results or [])]
    return EvaluationPublic(
        id=evaluation.id,
        job_id=evaluation.job_id,
        checkpoint_id=evaluation.checkpoint_id,
        status=evaluation.status,
        preset=evaluation.preset,
        n=evaluation.n,
        norm=evaluation.norm,
        eps=list(evaluation.eps or []),
        results=results,
        error=evaluation.error,
        created_at=evaluation.created_at,
        finished_at=evaluation.finished_at,
        # The worker's flag (it knows the real test-set size) or the catalog's sizes.
        leaderboard_grade=evaluation.status == "succeeded"
        and (
            bool(evaluation.leaderboard_grade)
            or leaderboard_grade(evaluation.preset, evaluation.n, dataset)
        ),
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
    kinds = [kind] if kind else ["final", "best"]
    for wanted in kinds:
        row = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job.id, Checkpoint.kind == wanted)
            .order_by(Checkpoint.created_at.desc())
            .limit(1)
        ).first()
        if row is not None:
            return row
    raise StateConflictError(
        f"job {job.id} has no {' or '.join(kinds)} checkpoint yet; evaluate it when training ends"
    )


@router.post("/jobs/{job_id}/evaluations", status_code=202, response_model=EvaluationPublic)
def create_evaluation(
    body: EvaluationCreate, job: OwnedJob, session: SessionDep, request: Request
) -> EvaluationPublic:
    """Evaluate a checkpoint of the job with AutoAttack at the given eps."""
    checkpoint = _pick_checkpoint(session, job, body.checkpoint)
    norm = ((job.config or {}).get("hparams") or {}).get("norm", "linf")
    evaluation = Evaluation(
        job_id=job.id,
        checkpoint_id=checkpoint.id,
        status="queued",
        preset=body.preset,
        n=body.n,
        norm=norm,
        eps=list(body.eps),
        results=[],
        sent_at=utcnow(),
    )
    session.add(evaluation)
    session.commit()
    send_task(request.app.state.celery, RUN_EVALUATION, evaluation.id)
    return evaluation_public(evaluation, job)
