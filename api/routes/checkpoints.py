"""Checkpoints: list a job's, and download one (streamed, with HTTP ranges).

Only files that have a checkpoint row are offered, and the path comes from that
row, resolved under ``settings.artifacts_dir``: nothing a request sends reaches
the filesystem, and a row pointing outside the artifact store is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import OwnedCheckpoint, OwnedJob, SessionDep
from api.errors import RangeNotSatisfiableError, ResourceNotFoundError
from api.routes import API_PREFIX, AUTHED_ERRORS, error_responses
from api.schemas import CheckpointPublic, CheckpointsPage
from db.models import Checkpoint
from dyart.files import file_sha256

router = APIRouter(
    prefix=API_PREFIX, tags=["checkpoints"], responses={**AUTHED_ERRORS, **error_responses(416)}
)
CHUNK = 256 * 1024
FORMATS = ("safetensors", "card", "robustbench", "robustbench_entry")
_RANGE = re.compile(r"^bytes=([0-9]*)-([0-9]*)$", re.IGNORECASE)


def checkpoint_file(request: Request, checkpoint: Checkpoint, fmt: str) -> Path:
    """The file of ``checkpoint`` in ``fmt``, inside the artifact store, or 404."""
    root = Path(request.app.state.settings.artifacts_dir).resolve()
    weights = root / checkpoint.path
    card = root / checkpoint.card_path if checkpoint.card_path else weights.with_suffix(".json")
    # RobustBench's layout (WideResNets only): a tensor-only state dict + its entry JSON.
    bench = root / checkpoint.robustbench_path if checkpoint.robustbench_path else None
    path = {
        "safetensors": weights,
        "card": card,
        "robustbench": bench,
        "robustbench_entry": bench.with_suffix(".entry.json") if bench else None,
    }[fmt]
    if path is None:
        raise ResourceNotFoundError(f"{fmt} file of checkpoint", checkpoint.id)
    path = path.resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ResourceNotFoundError(f"{fmt} file of checkpoint", checkpoint.id)
    return path


def formats_of(request: Request, checkpoint: Checkpoint) -> dict[str, str]:
    """Download URLs of the formats this checkpoint has on disk."""
    out = {}
    for fmt in FORMATS:
        try:
            checkpoint_file(request, checkpoint, fmt)
        except ResourceNotFoundError:
            continue
        out[fmt] = f"/api/v1/checkpoints/{checkpoint.id}/download?format={fmt}"
    return out


def checkpoint_public(request: Request, checkpoint: Checkpoint) -> CheckpointPublic:
    return CheckpointPublic(
        id=checkpoint.id,
        job_id=checkpoint.job_id,
        kind=checkpoint.kind,
        stage=checkpoint.stage,
        epoch=checkpoint.epoch,
        size=checkpoint.size,
        sha256=checkpoint.sha256,
        created_at=checkpoint.created_at,
        files=formats_of(request, checkpoint),
    )


@router.get("/jobs/{job_id}/checkpoints", response_model=CheckpointsPage)
def list_checkpoints(job: OwnedJob, session: SessionDep, request: Request) -> CheckpointsPage:
    """The job's checkpoints (burn-in, best, final...) with their download URLs."""
    rows = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.created_at)
    )
    return CheckpointsPage(items=[checkpoint_public(request, c) for c in rows])


def _number(digits: str, cap: int) -> int:
    """``int(digits)``, or ``cap`` if larger: int() refuses strings of over 4300 digits."""
    digits = digits.lstrip("0") or "0"
    return cap if len(digits) > len(str(cap)) else min(int(digits), cap)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a single byte range; None for the whole file.

    As RFC 9110 §14 says: a unit other than bytes is ignored, an end past the file
    is clamped, a suffix longer than the file is the whole file, and a start past
    the end is unsatisfiable (416).
    """
    if not header:
        return None
    unit, _, _ = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        if "," in header:
            return None  # multiple ranges: answer with the whole file (RFC 9110 allows it)
        raise RangeNotSatisfiableError(
            f"unsupported Range {_shortened(header)!r}: use bytes=START-END", size
        )
    first, last = match.groups()
    if not first and not last:
        raise RangeNotSatisfiableError(f"empty Range {header!r}", size)
    if not first:  # the last N bytes
        start, end = size - _number(last, size), size - 1
    else:
        start, end = _number(first, size), _number(last, size - 1) if last else size - 1
    if start >= size or start > end:
        raise RangeNotSatisfiableError(
            f"range {_shortened(header)!r} is outside the file of {size} bytes", size
        )
    return start, end


def _shortened(header: str, keep: int = 80) -> str:
    return header if len(header) <= keep else f"{header[:keep]}... ({len(header)} characters)"


def _read(path: Path, start: int, end: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = end - start + 1
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=StreamingResponse,
    responses={206: {"description": "partial content"}, 416: {"description": "bad range"}},
)
def download_checkpoint(
    checkpoint: OwnedCheckpoint,
    session: SessionDep,
    request: Request,
    format: Literal["safetensors", "card", "robustbench", "robustbench_entry"] = Query(
        "safetensors"
    ),
) -> StreamingResponse:
    """Stream a checkpoint file; supports Range (resume), ETag and If-Range."""
    path = checkpoint_file(request, checkpoint, format)
    size = path.stat().st_size
    sha = checkpoint.sha256 if format == "safetensors" else file_sha256(path)
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{sha}"',
        "X-Checksum-SHA256": sha,
        "Content-Disposition": f'attachment; filename="{checkpoint.job_id}-{path.name}"',
    }
    if_range = request.headers.get("if-range")
    wanted = request.headers.get("range") if if_range in (None, f'"{sha}"') else None
    span = parse_range(wanted, size)
    start, end = span or (0, size - 1)
    headers["Content-Length"] = str(end - start + 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    media = "application/json" if path.suffix == ".json" else "application/octet-stream"
    session.close()  # a slow download must not hold a database connection to its end
    return StreamingResponse(
        _read(path, start, end), status_code=206 if span else 200, headers=headers, media_type=media
    )
