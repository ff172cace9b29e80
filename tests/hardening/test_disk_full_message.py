"""A job that fails because the artifact disk is full says so.

torch's checkpoint writer reports a short write as "unexpected pos N vs M", which
tells a user nothing; the worker names the full disk instead when the error is an
ENOSPC/EDQUOT ``OSError``, or when the disk has less room left than the job's
largest file. (bench/faults/disk_full.py runs a real job into a full tmpfs.)
"""

from __future__ import annotations

import errno
import os
import shutil

from worker.runner import _disk_full


def _job_dir(tmp_path):
    job_dir = tmp_path / "artifacts" / "jobs" / ("a" * 32)
    (job_dir / "state").mkdir(parents=True)
    (job_dir / "state" / "latest.pt").write_bytes(b"x" * 1000)
    return job_dir


def test_enospc_anywhere_in_the_chain_is_a_full_disk(tmp_path):
    job_dir = _job_dir(tmp_path)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("unexpected pos 4992 vs 4884") from inner
    except RuntimeError as exc:
        assert _disk_full(exc, tmp_path / "artifacts", job_dir)


def test_other_errors_on_a_roomy_disk_are_not(tmp_path):
    job_dir = _job_dir(tmp_path)
    assert shutil.disk_usage(tmp_path).free > 1 << 20
    assert not _disk_full(RuntimeError("shape mismatch"), tmp_path / "artifacts", job_dir)
    assert not _disk_full(OSError(errno.EACCES, "denied"), tmp_path / "artifacts", job_dir)


def test_less_room_than_the_jobs_largest_file_is_a_full_disk(tmp_path):
    """A sparse file as large as the free space plus 1 GiB stands for a big checkpoint."""
    job_dir = _job_dir(tmp_path)
    big = job_dir / "model-best.safetensors"
    with big.open("wb") as f:
        f.truncate(shutil.disk_usage(tmp_path).free + (1 << 30))
    assert os.stat(big).st_blocks * 512 < 1 << 20  # sparse: it takes no room itself
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4992 vs 4884")
    assert _disk_full(error, tmp_path / "artifacts", job_dir)
