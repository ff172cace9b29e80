"""Jobs: create, list, get, cancel, resume; a job's metrics and log."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.celery_client import RUN_JOB, send_task
from api.deps import CurrentUser, OwnedJob, SessionDep, within_active_limit
from api.errors import FieldsInvalidError, StateConflictError
from api.routes import API_PREFIX, AUTHED_ERRORS, error_responses
from api.schemas import (
    BestPublic,
    JobCreate,
    JobPublic,
    JobsPage,
    LogLine,
    LogPage,
    MetricPublic,
    MetricsPage,
    validate_job_create,
)
from db import jobs as job_states
from db.locks import hold_row
from db.models import (
    JOB_STATUSES,
    MAX_SEQ,
    PENDING_STATUSES,
    Evaluation,
    Job,
    JobLog,
    JobMetric,
    User,
)
from dyart import catalog

router = APIRouter(prefix=API_PREFIX, tags=["jobs"], responses=AUTHED_ERRORS)
FINAL = ("succeeded", "failed", "canceled")
log = logging.getLogger("api.jobs")
METRIC_FIELDS = tuple(MetricPublic.model_fields)
MAX_OFFSET = 2**63 - 1  # the largest OFFSET both databases accept
# The list filters that name a lifecycle state or a catalog key. A value outside these
# matches no job, so it is a typo: answered 422, naming the allowed values, not [].
FILTER_CHOICES: dict[str, tuple[str, ...]] = {
    "status": JOB_STATUSES,
    "method": tuple(catalog.METHODS),
    "dataset": tuple(catalog.DATASETS),
}


def _filter_query(name: str) -> Any:
    """An optional filter, documented with its choices (a drop-down in /docs)."""
    choices = list(FILTER_CHOICES[name])
    return Query(
        None,
        alias=name,
        description=f"one of {', '.join(choices)}",
        json_schema_extra={"enum": choices},
    )


def _check_filters(filters: dict[str, str | None]) -> None:
    """FieldsInvalidError (422) for a NUL character or a value no job can have."""
    # NUL first: Postgres cannot compare text with a NUL character (and q is free text).
    bad = [
        (k, f"{k}: must not contain NUL characters")
        for k, v in filters.items()
        if v and "\x00" in v
    ]
    if not bad:
        bad = [
            (k, f"{k}: {v!r} is not one of {', '.join(FILTER_CHOICES[k])}")
            for k, v in filters.items()
            if v and k in FILTER_CHOICES and v not in FILTER_CHOICES[k]
        ]
    if bad:
        raise FieldsInvalidError(bad)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every time we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def metric_public(row: JobMetric) -> MetricPublic:
    return MetricPublic(**{k: getattr(row, k, None) for k in METRIC_FIELDS})


def log_line(row: JobLog) -> LogLine:
    return LogLine(id=row.seq, ts=row.ts, level=row.level, message=row.message)


def _progress(job: Job, total: int, latest: JobMetric | None) -> float:
    """Completed burn-in + training epochs over their total (metric rows are per epoch)."""
    if job.status == "succeeded" or job.stage == "evaluate":
        return 1.0
    if latest is None or not total:
        return 0.0
    done = latest.epoch
    if latest.stage == "train":
        done += int((job.config or {}).get("burn_in_epochs") or 0)
    elif latest.stage != "burn_in":
        return 0.0
    return max(0.0, min(1.0, done / total))


def _timing(job: Job, progress: float) -> tuple[float | None, float | None]:
    started, finished = _aware(job.started_at), _aware(job.finished_at)
    if started is None:
        return None, None
    elapsed = ((finished or datetime.now(UTC)) - started).total_seconds()
    if job.status != "running" or progress <= 0 or job.stage == "evaluate":
        return elapsed, None  # AutoAttack's length is not known from the training epochs
    return elapsed, elapsed * (1 - progress) / progress


def _latest_metrics(session: Session, ids: list[str]) -> dict[str, JobMetric]:
    """Each job's most recently written metrics row: the highest ``seq``, which a
    re-run epoch's row takes anew (its id stays that of the first write)."""
    newest = (
        select(JobMetric.job_id, func.max(JobMetric.seq).label("seq"))
        .where(JobMetric.job_id.in_(ids))
        .group_by(JobMetric.job_id)
        .subquery()
    )
    rows = session.scalars(
        select(JobMetric).join(
            newest, (JobMetric.job_id == newest.c.job_id) & (JobMetric.seq == newest.c.seq)
        )
    )
    return {row.job_id: row for row in rows}


def _best(session: Session, ids: list[str]) -> dict[str, BestPublic]:
    """Each job's training epoch with the highest validation PGD accuracy."""
    rank = (
        func.row_number()
        .over(
            partition_by=JobMetric.job_id,
            order_by=(JobMetric.val_pgd_acc.desc(), JobMetric.epoch.desc()),
        )
        .label("rank")
    )
    ranked = (
        select(JobMetric.job_id, JobMetric.val_pgd_acc, JobMetric.epoch, rank)
        .where(
            JobMetric.job_id.in_(ids),
            JobMetric.stage == "train",
            JobMetric.val_pgd_acc.is_not(None),
        )
        .subquery()
    )
    rows = session.execute(select(ranked).where(ranked.c.rank == 1))
    return {r.job_id: BestPublic(val_pgd_acc=r.val_pgd_acc, epoch=r.epoch) for r in rows}


def jobs_public(session: Session, jobs: list[Job]) -> list[JobPublic]:
    """Public views of ``jobs`` in three queries, whatever their number."""
    ids = [job.id for job in jobs]
    query = select(User.id, User.name).where(User.id.in_({j.owner_id for j in jobs}))
    owners = dict(session.execute(query).all())
    latest, best = _latest_metrics(session, ids), _best(session, ids)
    return [_job_public(job, owners.get(job.owner_id, ""), latest, best) for job in jobs]


def job_public(session: Session, job: Job) -> JobPublic:
    """The public view of ``job``: its row plus latest metrics, best epoch and timing."""
    return jobs_public(session, [job])[0]


def _job_public(
    job: Job, owner: str, latest: dict[str, JobMetric], best: dict[str, BestPublic]
) -> JobPublic:
    config = job.config or {}
    total = job.total_epochs or int(config.get("burn_in_epochs") or 0) + int(
        config.get("epochs") or 0
    )
    metrics = latest.get(job.id)
    progress = _progress(job, total, metrics)
    elapsed, eta = _timing(job, progress)
    return JobPublic(
        id=job.id,
        name=job.name,
        owner=owner,
        status=job.status,
        stage=job.stage,
        epoch=job.epoch,
        step=job.step,
        total_epochs=total,
        progress=progress,
        attempts=job.attempts or 0,
        error=job.error,
        config=config,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        elapsed_seconds=elapsed,
        eta_seconds=eta,
        cancel_requested=bool(job.cancel_requested),
        burn_in_source_job_id=job.burn_in_source_job_id,
        latest_metrics=metric_public(metrics).model_dump(mode="json") if metrics else {},
        best=best.get(job.id),
    )


IDEMPOTENCY_HELP = (
    "Any 1-200 printable ASCII characters, new for each job you mean to create (a UUID). "
    "A retry with the same key and the same request returns the job the first request "
    "created (200) instead of creating another; the same key with a different request is 409."
)


def _check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not all(33 <= ord(c) <= 126 for c in key):
        raise FieldsInvalidError(
            [("Idempotency-Key", "Idempotency-Key: expected 1-200 printable ASCII characters")]
        )
    return key


def _replay(session: Session, user: User, key: str, config: dict[str, Any], name: str | None):
    """The job an earlier request with ``key`` created, if the requests agree; else 409."""
    job = job_states.job_by_idempotency_key(session, user, key)
    if job is not None and (job.config != config or job.name != name):
        raise StateConflictError(
            f"Idempotency-Key {key!r} was used for a different job request (job {job.id}); "
            "use a new key for a new job"
        )
    return job


@router.post(
    "/jobs",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses=error_responses(429),
)
def create_job(
    body: JobCreate,  # type: ignore[valid-type]
    request: Request,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", description=IDEMPOTENCY_HELP
    ),
) -> Any:
    """Submit a training job; every field is checked against the catalog first.

    With an ``Idempotency-Key`` header, a retried submission (say, after a dropped
    connection) returns the job the first one created, with status 200.
    """
    key = _check_idempotency_key(idempotency_key)
    config = validate_job_create(body, request.app.state.settings.data_dir)  # 422 if bad
    settings = request.app.state.settings
    if key is not None and (earlier := _replay(session, user, key, config, body.name)):
        response.status_code = status.HTTP_200_OK
        return job_public(session, earlier)
    within_active_limit(session, user, settings, "this job")
    try:
        job = job_states.create_job(
            session, user, config, name=body.name, max_attempts=settings.max_attempts,
            idempotency_key=key,
        )  # fmt: skip
        session.commit()  # the row exists before any worker can hear of it
    except IntegrityError:  # the same key, committed by a concurrent request just now
        session.rollback()
        earlier = _replay(session, user, key, config, body.name) if key else None
        if earlier is None:
            raise
        response.status_code = status.HTTP_200_OK
        return job_public(session, earlier)
    send_task(request.app.state.celery, RUN_JOB, job.id)
    return job_public(session, job)


@router.get("/jobs", response_model=JobsPage)
def list_jobs(
    session: SessionDep,
    user: CurrentUser,
    status_: str | None = _filter_query("status"),
    method: str | None = _filter_query("method"),
    dataset: str | None = _filter_query("dataset"),
    q: str | None = Query(None, max_length=200, description="substring of the name or id"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> Response:
    """Your jobs (an admin's: everyone's), newest first, filtered and paged."""
    _check_filters({"status": status_, "method": method, "dataset": dataset, "q": q})
    query = select(Job)
    if not user.is_admin:
        query = query.where(Job.owner_id == user.id)
    for column, value in ((Job.status, status_), (Job.method, method), (Job.dataset, dataset)):
        if value:
            query = query.where(column == value)
    if q:
        query = query.where(
            or_(Job.name.contains(q, autoescape=True), Job.id.startswith(q, autoescape=True))
        )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    )
    page = JobsPage(items=jobs_public(session, list(rows)), total=total, limit=limit, offset=offset)
    # Already validated: answer its JSON directly instead of validating the page twice.
    return Response(page.model_dump_json(), media_type="application/json")


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    """One job with its progress, latest metrics and best epoch."""
    return job_public(session, job)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobPublic)
def cancel_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    """Cancel: a queued job ends at once, a running one stops at its next step."""
    if job.status in FINAL:
        raise StateConflictError(f"job {job.id} is already {job.status}; nothing to cancel")
    job_states.request_cancel(session, job)
    session.commit()
    return job_public(session, job)


@router.post(
    "/jobs/{job_id}/resume",
    status_code=202,
    response_model=JobPublic,
    responses=error_responses(429),
)
def resume_job(
    job: OwnedJob, session: SessionDep, request: Request, user: CurrentUser
) -> JobPublic:
    """Resume a canceled or failed job from its latest checkpoint."""
    if job.status not in ("canceled", "failed"):
        raise StateConflictError(
            f"job {job.id} is {job.status}; only a canceled or failed job can be resumed"
        )
    within_active_limit(session, user, request.app.state.settings, "resuming this job")
    job_states.resume_job(session, job)
    session.commit()
    send_task(request.app.state.celery, RUN_JOB, job.id)
    return job_public(session, job)


@router.delete("/jobs/{job_id}", status_code=204, response_class=Response)
def delete_job(job: OwnedJob, session: SessionDep, request: Request) -> Response:
    """Delete a finished job: its rows (metrics, log, checkpoints, evaluations) and its
    files in the artifact store. A queued or running job, or one with an evaluation
    queued or running, is a 409: cancel it first. A job that reused this one's burn-in
    keeps its own copy."""
    # a resume or an evaluation request cannot slip in between the check and the delete
    hold_row(session, Job, job.id)
    session.refresh(job)
    if job.status not in FINAL:
        raise StateConflictError(
            f"job {job.id} is {job.status}; cancel it first, then delete it once it ends"
        )
    pending = session.scalar(
        select(func.count()).where(
            Evaluation.job_id == job.id, Evaluation.status.in_(PENDING_STATUSES)
        )
    )
    if pending:
        raise StateConflictError(
            f"job {job.id} has {pending} evaluation(s) queued or running; cancel them first"
        )
    job_id = job.id
    session.execute(delete(Job).where(Job.id == job_id))  # the database cascades the rest
    session.commit()
    _remove_files(Path(request.app.state.settings.artifacts_dir), job_id)
    return Response(status_code=204)


def _remove_files(artifacts: Path, job_id: str) -> None:
    """Remove ``<artifacts>/jobs/<job_id>``: renamed aside first, so a folder left by a
    failed removal is plainly a deleted job's (and logged), never a live one."""
    root = artifacts.resolve() / "jobs"
    folder = root / job_id
    if not folder.is_dir():
        return
    doomed = root / f".deleted-{job_id}"
    try:
        folder.rename(doomed)
        shutil.rmtree(doomed)
    except OSError as exc:
        log.warning("job %s deleted, but its files were not all removed: %s", job_id, exc)


@router.get("/jobs/{job_id}/metrics", response_model=MetricsPage)
def job_metrics(job: OwnedJob, session: SessionDep) -> MetricsPage:
    """Every epoch's metrics row, in order."""
    rows = session.scalars(
        select(JobMetric).where(JobMetric.job_id == job.id).order_by(JobMetric.id)
    )
    return MetricsPage(items=[metric_public(r) for r in rows])


@router.get("/jobs/{job_id}/log", response_model=LogPage)
def job_log(
    job: OwnedJob,
    session: SessionDep,
    tail: int = Query(200, ge=1, le=5000, description="at most this many lines"),
    after: int | None = Query(
        None,
        ge=0,
        le=MAX_SEQ,
        description="only lines after this line's `id`, its number in the job's log "
        "(follow a log: pass the last one seen)",
    ),
) -> LogPage:
    """The last ``tail`` log lines of the job, oldest first; with ``after``, the first
    ``tail`` lines after that one."""
    query = select(JobLog).where(JobLog.job_id == job.id)
    if after is not None:
        rows = session.scalars(query.where(JobLog.seq > after).order_by(JobLog.seq).limit(tail))
        return LogPage(lines=[log_line(r) for r in rows])
    rows = session.scalars(query.order_by(JobLog.seq.desc()).limit(tail)).all()
    return LogPage(lines=[log_line(r) for r in reversed(rows)])
