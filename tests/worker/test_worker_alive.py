"""The worker's liveness file (worker.alive): what the container health check reads.

A solo worker busy training answers no ``celery inspect ping``; its sweep thread
touches a file every ``sweep_seconds`` instead. Real worker, real training job.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, subprocess_env
from tests.worker.conftest import job_row, wait_for


def _check(service_env: dict[str, str], max_age: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "worker.alive", "--max-age", str(max_age)]
    env = subprocess_env(service_env)
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def _next_touch(path: Path, after: int) -> int:
    """Wait until ``path`` is modified later than ``after`` (ns); its new mtime."""

    def mtime() -> int:
        return path.stat().st_mtime_ns if path.exists() else 0

    return wait_for(lambda: mtime() > after and mtime(), f"{path} touched", timeout=30)


def test_a_training_worker_keeps_its_alive_file_fresh(
    worker_process, submit, session_factory, settings, service_env
):
    alive = settings.worker_alive_file
    job_id = submit(epochs=40, burn_in_epochs=0)
    wait_for(lambda: job_row(session_factory, job_id).epoch, "the job to train", timeout=120)

    touched = _next_touch(alive, after=0)
    for _ in range(2):  # touched again and again while the job trains
        touched = _next_touch(alive, after=touched)
    assert job_row(session_factory, job_id).status == "running"
    assert _check(service_env, max_age=10).returncode == 0

    worker_process.kill9()
    result = wait_for(
        lambda: (r := _check(service_env, max_age=2)).returncode and r, "a stale file", 30
    )
    assert result.stderr.startswith("worker not alive:") and "last touched" in result.stderr


def test_the_check_fails_without_a_worker(service_env):
    result = _check(service_env, max_age=60)
    assert result.returncode == 1
    assert "DYART_WORKER_ALIVE_FILE" in result.stderr and "Traceback" not in result.stderr
