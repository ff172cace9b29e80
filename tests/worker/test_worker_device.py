"""A worker whose DYART_DEVICE cannot be used refuses to start, instead of taking
every queued job and failing it. Real worker process; CUDA is absent on this machine
(the test is skipped where it is present)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, subprocess_env
from tests.worker.conftest import job_row


def _worker(service_env: dict[str, str], **overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=solo"]
    command += ["--concurrency=1", "--loglevel=INFO", "--without-mingle", "--without-gossip"]
    env = subprocess_env(service_env, **overrides)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu"])
def test_a_worker_with_an_unusable_device_exits_and_leaves_jobs_queued(
    device, service_env, submit, session_factory
):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and device != "cuda:1":
        pytest.skip("CUDA is available here")
    if device == "cuda:1" and torch.cuda.device_count() > 1:
        pytest.skip("a second GPU is available here")
    job_id = submit()  # its task is in the broker, waiting for a worker

    result = _worker(service_env, DYART_DEVICE=device)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "DYART_DEVICE" in line]
    assert len(lines) == 1 and lines[0].startswith(f"worker: DYART_DEVICE={device} "), output
    assert "Traceback" not in output and " ready." not in output
    time.sleep(1)
    assert job_row(session_factory, job_id).status == "queued"
    assert job_row(session_factory, job_id).attempts == 0
