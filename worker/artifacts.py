"""The local artifact store: every file a job writes lives under one folder.

Rows store paths relative to the store's root (``jobs/<job_id>/model-final.safetensors``),
so the folder can move; :meth:`ArtifactStore.resolve` refuses any path that
would leave the root (``..``, absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import re
from pathlib import Path

from dyart.files import atomic_write, file_sha256

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")

__all__ = ["ArtifactPathError", "ArtifactStore", "file_sha256"]


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
        """Write ``data`` atomically (see :func:`dyart.files.atomic_write`)."""
        return atomic_write(self.resolve(relative), lambda f: f.write(data))
