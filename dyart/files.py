"""Files that appear whole or not at all, and their checksums; no torch here.

Both the library (training state, model files, evaluation progress) and the
service's artifact store write through :func:`atomic_write`: a temporary file
in the same folder, flushed and fsynced, renamed over the target, then the
folder fsynced. A crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

CHUNK = 1 << 20


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fileobj)`` so it appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
