"""Files that appear whole or not at all, and their checksums; no torch here.

Both the library (training state, model files, evaluation progress) and the
service's artifact store write through :func:`atomic_write`: a temporary file
in the same folder, flushed and fsynced, renamed over the target, then the
folder fsynced. A crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from dyart.errors import ConfigError

CHUNK = 1 << 20


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(fileobj)`` so it appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; files get the usual mode
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


def _umask() -> int:
    """The process's umask, read from /proc where there is one: ``os.umask`` can only read
    it by setting it, which for a moment changes it for the process's other threads."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def writable_folder(path: str | Path, field: str) -> Path:
    """Create ``path`` if need be and prove a file can be written there, before any work.

    Raises:
        ConfigError: naming ``field``, when ``path`` is a file or cannot be written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(field, f"{path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # FileExistsError: a file on the way (a/b/c with a/b a file)
        raise ConfigError(field, f"cannot create folder {path}: {exc.strerror or exc}") from exc
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(field, f"cannot write in folder {path}: {exc.strerror or exc}") from exc
    return path


@contextlib.contextmanager
def exclusive_use(folder: Path, field: str, what: str) -> Iterator[None]:
    """Hold ``folder/.lock`` for this process while the block runs (released at exit,
    even a killed one's, by the OS), so a second ``what`` on the same folder is refused
    instead of racing the first for its files.

    Raises:
        ConfigError: naming ``field`` and the pid holding the folder.
    """
    import fcntl

    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            raise ConfigError(field, f"{folder} is in use by another {what} (pid {pid})") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
