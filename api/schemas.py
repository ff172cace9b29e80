"""Request and response bodies of the HTTP API (``<Resource><Role>``).

A job request is checked by ``dyart.catalog.validate_job`` (the same check the
trainer's config runs), so the API and the library cannot disagree about a
field's range; :func:`validate_job_create` turns its findings into one 422
that lists every bad field.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator

from api.errors import FieldsInvalidError
from dyart import catalog


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time the service stores is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


def _no_nul(value: str | None) -> str | None:
    # Postgres cannot store a NUL character in a text column.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "choice": "string"}
# The most eps one AutoAttack run takes: an evaluation's ``eps`` and a job's ``eval_eps``.
MAX_EPS = catalog.MAX_EPS
MAX_ITEMS = {n: p.max_items for n, p in catalog.TRAIN_PARAMS.items() if p.max_items is not None}


def _train_param_field(param: catalog.Param) -> tuple[Any, Any]:
    """An optional, loosely typed field: the catalog, not pydantic, checks the value."""
    schema: dict[str, Any] = {"type": _JSON_TYPES.get(param.type, "array")}
    if param.type == "float_list":
        schema["items"] = {"type": "number", "minimum": param.min, "maximum": param.max}
        if param.name in MAX_ITEMS:
            schema["maxItems"] = MAX_ITEMS[param.name]
    elif param.type == "choice":
        schema["enum"] = list(param.choices)
    elif param.type != "bool":
        schema.update(minimum=param.min, maximum=param.max)
    default = param.default if param.default is not None else "dataset-dependent"
    return (
        Any,
        Field(
            default=None, description=f"{param.help} (default {default})", json_schema_extra=schema
        ),
    )


class _JobCreateBase(BaseModel):
    """A training job: dataset, architecture, method, its hyperparameters, run settings."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str | None, AfterValidator(_no_nul)] = Field(
        default=None, max_length=200, description="a label for people"
    )
    dataset: str = Field(description="a name from GET /api/v1/catalog (datasets)")
    architecture: str = Field(description="a name from the catalog's architectures")
    method: str = Field(description="clean, dyart, pgd_at, trades or mart")
    hparams: dict[str, Any] = Field(
        default_factory=dict, description="method hyperparameters; missing ones take defaults"
    )


JobCreate = create_model(
    "JobCreate",
    __base__=_JobCreateBase,
    **{name: _train_param_field(p) for name, p in catalog.TRAIN_PARAMS.items()},
)


def validate_job_create(body: BaseModel, data_dir: str | Path | None) -> dict[str, Any]:
    """The resolved TrainConfig dict for ``body``, or FieldsInvalidError (422)."""
    spec = body.model_dump(exclude={"name"}, exclude_none=True)
    spec.update({k: v for k, v in (body.model_extra or {}).items() if v is not None})
    too_long = _too_long_lists(spec)
    for field, _ in too_long:  # refused here: no need to check its items one by one
        spec.pop(field)
    not_finite = _non_finite_numbers(spec)
    if not_finite:  # 1e400 parses as inf, which an integer field cannot even compare
        raise FieldsInvalidError(too_long + not_finite)
    resolved, errors = catalog.validate_job(spec, data_dir)
    errors = too_long + errors
    for key, value in (body.model_extra or {}).items():
        if value is None:
            errors.append((key, f"unknown field {key!r}"))
    if errors:
        raise FieldsInvalidError(errors)
    return resolved


def _too_long_lists(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each list field with more items than it may have."""
    errors = []
    for field, limit in MAX_ITEMS.items():
        value = spec.get(field)
        if isinstance(value, list) and len(value) > limit:
            message = f"{field}: at most {limit} values are allowed, got {len(value)}"
            errors.append((field, message))
    return errors


def _non_finite_numbers(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each inf or NaN among the top-level and hparams values."""
    errors = []
    hparams = spec.get("hparams") if isinstance(spec.get("hparams"), dict) else {}
    values = [(k, v) for k, v in spec.items() if k != "hparams"]
    for field, value in values + [(f"hparams.{k}", v) for k, v in hparams.items()]:
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, float) and not math.isfinite(item):
                where = f"{field}[{i}]" if isinstance(value, list) else field
                errors.append((field, f"{where}: expected a finite number, got {item!r}"))
                break
    return errors


class BestPublic(BaseModel):
    val_pgd_acc: float | None
    epoch: int | None


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: str
    name: str | None
    owner: str
    status: str
    stage: str | None
    epoch: int | None
    step: int | None
    total_epochs: int
    progress: float = Field(description="0..1 over burn-in and training epochs")
    attempts: int
    error: str | None
    config: dict[str, Any]
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    heartbeat_at: UtcDatetime | None
    elapsed_seconds: float | None
    eta_seconds: float | None
    cancel_requested: bool
    burn_in_source_job_id: str | None
    latest_metrics: dict[str, Any]
    best: BestPublic | None


class JobsPage(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class MetricPublic(BaseModel):
    """One epoch's row (the names are the trainer's metric keys)."""

    stage: str
    epoch: int
    lr: float | None = None
    train_loss: float | None = None
    train_clean_acc: float | None = None
    train_robust_acc: float | None = None
    val_clean_acc: float | None = None
    val_pgd_acc: float | None = None
    margin_q10: float | None = None
    margin_q50: float | None = None
    margin_q90: float | None = None
    frac_correct: float | None = None
    frac_found: float | None = None
    frac_kept: float | None = None
    seconds: float | None = None
    created_at: UtcDatetime | None = None


class MetricsPage(BaseModel):
    items: list[MetricPublic]


class LogLine(BaseModel):
    id: int = Field(description="the line's number in its job's log, from 1; `?after=` takes it")
    ts: UtcDatetime
    level: str
    message: str


class LogPage(BaseModel):
    lines: list[LogLine]


class CheckpointPublic(BaseModel):
    id: str
    job_id: str
    kind: str
    stage: str | None
    epoch: int | None
    size: int
    sha256: str
    created_at: UtcDatetime
    files: dict[str, str] = Field(description="format -> download URL")


class CheckpointsPage(BaseModel):
    items: list[CheckpointPublic]


class EvaluationCreate(BaseModel):
    """Evaluate one of the job's checkpoints with AutoAttack at other eps."""

    model_config = ConfigDict(extra="forbid")

    eps: list[Annotated[float, Field(gt=0.0, le=1.0, strict=True)]] = Field(
        min_length=1, max_length=MAX_EPS, description="L-inf radii on the pixel scale, in (0, 1]"
    )
    preset: Literal["standard", "custom", "fast"] = "standard"
    n: int = Field(
        default=1000,
        ge=1,
        le=100000,
        strict=True,
        description="test images to attack (at most the dataset's test set, which is all of it)",
    )
    checkpoint: Literal["best", "final"] | None = Field(
        default=None,
        description="which checkpoint (default: best, else final; best is the one the job's "
        "own evaluation attacks)",
    )

    @field_validator("eps")
    @classmethod
    def _distinct(cls, eps: list[float]) -> list[float]:
        # radii equal to 6 significant digits share one result folder: one would be
        # reported for the other
        seen: dict[str, float] = {}
        for value in eps:
            key = f"{value:.6g}"
            if key in seen:
                raise ValueError(f"{value:g} is given twice (as {seen[key]:g}); list each eps once")
            seen[key] = value
        return eps


class EpsResult(BaseModel):
    eps: float
    clean_acc: float | None = None
    robust_acc: float | None = None
    per_attack: dict[str, float] = Field(default_factory=dict)


class EvaluationPublic(BaseModel):
    id: str
    job_id: str
    checkpoint_id: str | None
    checkpoint_kind: str | None = Field(
        None, description="`best` or `final`: the checkpoint evaluated (null for old rows)"
    )
    checkpoint_epoch: int | None = Field(None, description="the epoch its weights are from")
    checkpoint_sha256: str | None = Field(
        None, description="sha256 of the weights evaluated (the safetensors file)"
    )
    status: str = Field(description="queued, running, succeeded, failed or canceled")
    cancel_requested: bool = False
    preset: str
    n: int
    norm: str
    eps: list[float]
    results: list[EpsResult]
    error: str | None = None
    created_at: UtcDatetime
    finished_at: UtcDatetime | None = None
    leaderboard_grade: bool = Field(
        description="true only for the standard preset on the dataset's full test set"
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="what the model drew before the attacks: signs that its robust accuracy "
        "may read higher than it is (zero input gradients: gradient masking; outputs that "
        "look like probabilities; a model in train mode)",
    )


class EvaluationsPage(BaseModel):
    items: list[EvaluationPublic]


class UserPublic(BaseModel):
    id: str
    name: str
    is_admin: bool


class HealthPublic(BaseModel):
    status: str = Field(
        description="`ok`, or `degraded` while the database or broker is unreachable"
    )
    database: str
    broker: str
    workers: int | None = Field(
        description="workers on this server's queue that were seen within their last 3 sweeps; "
        "0: queued jobs wait until one starts; null while the database is unreachable"
    )
    version: str


class ErrorPublic(BaseModel):
    """Every error but a 422: what went wrong, in one sentence."""

    detail: str


class FieldErrorPublic(BaseModel):
    field: str = Field(description="the field, dotted for nested ones (hparams.eta, eps.0)")
    message: str


class FieldErrorsPublic(BaseModel):
    """A 422: every invalid field of the request at once."""

    detail: list[FieldErrorPublic]
