"""Checkpoints: list a job's, and download one (streamed, with HTTP ranges).

Only files that have a checkpoint row are offered, and the path comes from that
row, resolved under ``settings.artifacts_dir``: nothing a request sends reaches
the filesystem, and a row pointing outside the artifact store is refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.types import Receive, Scope, Send

from api.deps import OwnedCheckpoint, OwnedJob, SessionDep
from api.errors import RangeNotSatisfiableError, ResourceNotFoundError, VersionReplacedError
from api.routes import API_PREFIX, AUTHED_ERRORS, error_responses
from api.schemas import CheckpointPublic, CheckpointsPage
from db.models import Checkpoint

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
    """Download URLs of the formats this checkpoint has on disk, each naming the
    version it was made for (``sha256=``): ``latest`` and ``best`` are replaced
    every epoch, and a download resumed with such a URL (``curl -C -`` sends no
    If-Range) is refused with a 412 instead of joining two versions' bytes."""
    out = {}
    for fmt in FORMATS:
        try:
            path = checkpoint_file(request, checkpoint, fmt)
            with path.open("rb") as f:
                sha = DIGESTS.sha256(f)
        except (ResourceNotFoundError, FileNotFoundError):
            continue
        out[fmt] = f"/api/v1/checkpoints/{checkpoint.id}/download?format={fmt}&sha256={sha}"
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


def _read(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    f.seek(start)
    left = end - start + 1
    while left > 0:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


class DigestCache:
    """sha256 of open files, remembered per file version.

    Checkpoint files are never changed in place (a new one is renamed over the old),
    so (device, inode, size, mtime) names one content: hashing the open file once
    per version gives a checksum and ETag that are always those of the bytes
    streamed, even while the trainer replaces the file and before its row is
    updated.
    """

    def __init__(self, size: int = 256):
        self.size, self._known = size, OrderedDict[tuple[int, ...], str]()
        self._lock = threading.Lock()

    def sha256(self, f: BinaryIO) -> str:
        st = os.fstat(f.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._known:
                self._known.move_to_end(key)
                return self._known[key]
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        f.seek(0)
        with self._lock:
            self._known[key] = digest
            while len(self._known) > self.size:
                self._known.popitem(last=False)
        return digest


DIGESTS = DigestCache()


class FileStreamResponse(StreamingResponse):
    """Streams ``file`` from ``start`` to ``end``; closes it when the response ends,
    fails or is cut off by the client."""

    def __init__(self, file: BinaryIO, start: int, end: int, **kwargs: Any):
        self.file = file
        super().__init__(_read(file, start, end), **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.file.close()


DOWNLOAD = "/checkpoints/{checkpoint_id}/download"
FormatQuery = Annotated[Literal["safetensors", "card", "robustbench", "robustbench_entry"], Query()]
VersionQuery = Annotated[
    str | None,
    Query(
        pattern="^[0-9a-fA-F]{64}$",
        description="the sha256 of the version to send (the listed URLs carry it): "
        "412 if the file has been replaced since",
    ),
]


def _open(request: Request, checkpoint: Checkpoint, fmt: str) -> tuple[Path, BinaryIO]:
    path = checkpoint_file(request, checkpoint, fmt)
    try:
        return path, path.open("rb")
    except FileNotFoundError:  # removed since checkpoint_file looked
        raise ResourceNotFoundError(f"{fmt} file of checkpoint", checkpoint.id) from None


def _response(
    checkpoint: Checkpoint,
    request: Request,
    fmt: str,
    file: tuple[Path, BinaryIO],
    head: bool,
    version: str | None,
) -> Response:
    path, f = file
    size = os.fstat(f.fileno()).st_size
    sha = DIGESTS.sha256(f)  # of the bytes this answer streams, not the row's
    if version is not None and version.lower() != sha:
        raise VersionReplacedError(
            f"the {fmt} file of checkpoint {checkpoint.id} has been replaced since this URL "
            f"was made (sha256 {version[:12]}..., now {sha[:12]}...): a partial download of "
            "it cannot be resumed; download it again from the start with the URL that "
            f"GET /api/v1/jobs/{checkpoint.job_id}/checkpoints gives now"
        )
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{sha}"',
        "X-Checksum-SHA256": sha,
        "Content-Disposition": f'attachment; filename="{checkpoint.job_id}-{path.name}"',
    }
    # RFC 9110 §14.2 defines Range for GET only, and asks servers to ignore it otherwise.
    use_range = not head and request.headers.get("if-range") in (None, f'"{sha}"')
    span = parse_range(request.headers.get("range") if use_range else None, size)
    start, end = span or (0, size - 1)
    headers["Content-Length"] = str(end - start + 1)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    media = "application/json" if path.suffix == ".json" else "application/octet-stream"
    status = 206 if span else 200
    if head:
        f.close()
        return Response(status_code=status, headers=headers, media_type=media)
    return FileStreamResponse(f, start, end, status_code=status, headers=headers, media_type=media)


def answer_download(
    request: Request, checkpoint: Checkpoint, fmt: str, head: bool, version: str | None = None
) -> Response:
    """The download's response (headers only for ``head``). The file is opened once,
    and its size, checksum and bytes all come from that open file: the trainer
    renames a new file over best/latest each epoch, and a second open could find
    another file than the one measured. With ``version`` (a sha256) the answer is
    412 unless the file is still that version."""
    file = _open(request, checkpoint, fmt)
    try:
        return _response(checkpoint, request, fmt, file, head, version)
    except BaseException:  # a bad range (416) or a failed read: nothing will stream it
        file[1].close()
        raise


@router.get(
    DOWNLOAD,
    response_class=StreamingResponse,
    responses={206: {"description": "partial content"}, **error_responses(412, 416)},
)
def download_checkpoint(
    checkpoint: OwnedCheckpoint,
    session: SessionDep,
    request: Request,
    format: FormatQuery = "safetensors",
    sha256: VersionQuery = None,
) -> Response:
    """Stream a checkpoint file; supports Range (resume), ETag and If-Range, and with
    ``sha256`` refuses (412) a version that has been replaced."""
    response = answer_download(request, checkpoint, format, head=False, version=sha256)
    session.close()  # a slow download must not hold a database connection to its end
    return response


@router.head(DOWNLOAD, response_class=Response, responses=error_responses(412))
def head_checkpoint(
    checkpoint: OwnedCheckpoint,
    request: Request,
    format: FormatQuery = "safetensors",
    sha256: VersionQuery = None,
) -> Response:
    """A download's headers (size, ETag, checksum) without its body; Range is ignored."""
    return answer_download(request, checkpoint, format, head=True, version=sha256)
