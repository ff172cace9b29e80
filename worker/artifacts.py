"""The local artifact store: every file a job writes lives under one folder.

Rows store paths relative to the store's root (``jobs/<job_id>/model-final.safetensors``),
so the folder can move; :meth:`ArtifactStore.resolve` refuses any path that
would leave the root (``..``, absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
CHUNK = 1 << 20


class ArtifactPathError(ValueError):
    """A path outside the artifact store, or a malformed id used to build one."""


class ArtifactStore:
    """Paths, checksums and atomic writes under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def job_dir(self, job_id: str) -> Path:
        """``<root>/jobs/<job_id>`` (the trainer's out_dir for the job)."""
        if not _JOB_ID.match(job_id):
            raise ArtifactPathError(f"job id {job_id!r} is not 32 hexadecimal digits")
        return self.root / "jobs" / job_id

    def resolve(self, relative: str | Path) -> Path:
        """The absolute path of a stored relative path, refusing anything outside the root."""
        if Path(relative).is_absolute():
            raise ArtifactPathError(f"artifact path {str(relative)!r} must be relative")
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ArtifactPathError(f"artifact path {str(relative)!r} leaves {self.root}")
        return path

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the root, as stored in rows (posix separators)."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root):
            raise ArtifactPathError(f"{path} is outside the artifact store {self.root}")
        return resolved.relative_to(self.root).as_posix()

    def write_bytes(self, relative: str | Path, data: bytes) -> Path:
        """Write ``data`` atomically: temp file in the same folder, fsync, rename."""
        path = self.resolve(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, streamed in 1 MiB chunks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
