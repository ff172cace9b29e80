"""Atomic file writes: a failed write leaves the old file whole and no temporary behind."""

import hashlib
import os
import stat
import subprocess
import sys

import pytest

from dyart.files import atomic_write, file_sha256


def test_write_appears_whole_and_replaces_the_old_file(tmp_path):
    target = tmp_path / "deep" / "folder" / "model.bin"
    atomic_write(target, lambda f: f.write(b"old"))
    atomic_write(target, lambda f: f.write(b"new" * 1000))
    assert target.read_bytes() == b"new" * 1000
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin"]


def test_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write(target, lambda f: f.write(b"old contents"))

    def half_then_fail(f):
        f.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_process_killed_mid_write_leaves_the_old_file(tmp_path):
    """A process that dies inside ``write`` (no cleanup runs) never exposes half a file."""
    target = tmp_path / "model.bin"
    atomic_write(target, lambda f: f.write(b"old contents"))
    script = (
        "import os, sys\n"
        "from dyart.files import atomic_write\n"
        "def die(f):\n"
        "    f.write(b'half'); f.flush(); os._exit(9)\n"
        "atomic_write(sys.argv[1], die)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    assert result.returncode == 9
    assert target.read_bytes() == b"old contents"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "model.bin"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.bin.")


def test_file_sha256_streams_files_larger_than_one_chunk(tmp_path):
    data = bytes(range(256)) * 9000  # 2.2 MiB: three 1 MiB reads
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_usual_mode_not_0600(tmp_path, umask):
    before = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "model.json", lambda f: f.write(b"{}"))
        plain = tmp_path / "plain.json"
        plain.write_bytes(b"{}")
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
