"""``dyart-service serve`` and its worker child: the same settings wherever it is
started from, and a server that does not outlive its worker. Real processes."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, TEST_TIMINGS, ServiceProcess, _healthy, free_port
from tests.worker.conftest import wait_for

TINY = {"dataset": "digits", "architecture": "mlp", "method": "clean", "epochs": 30}


def _embedded_env(**extra: str) -> dict[str, str]:
    """Our environment without any DYART_* of the test run, plus the embedded defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYART_")}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.update(TEST_TIMINGS, DYART_DEVICE="cpu", PYTHONPATH=path, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return {**env, **extra}


def _serve(cwd: Path, log: Path, **extra: str) -> tuple[ServiceProcess, str]:
    port = free_port()
    env = _embedded_env(DYART_PORT=str(port), DYART_AUTH="off", **extra)
    command = [sys.executable, "-m", "api.cli", "serve"]
    process = ServiceProcess(command, env, log, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    process.wait_for(lambda: _healthy(url), "serve", timeout=90)
    return process, url


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_serve_started_outside_the_repository_runs_jobs(elsewhere, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("the server's worker dies with it only on Linux")
    home = f"home-{uuid.uuid4().hex[:8]}"  # relative: the API reads it from its own cwd
    server, url = _serve(elsewhere, tmp_path / "serve.log", DYART_HOME=home)
    try:
        job = httpx.post(f"{url}/api/v1/jobs", json=TINY, timeout=10).json()

        def started() -> bool:
            status = httpx.get(f"{url}/api/v1/jobs/{job['id']}", timeout=10).json()["status"]
            return status != "queued"

        wait_for(started, "the worker to take the job", timeout=120)
        assert (elsewhere / home / "dyart.db").is_file()
        assert not (ROOT / home).exists()
        os.kill(server.pid, signal.SIGTERM)
        assert server.proc.wait(90) == 128 + signal.SIGTERM
    finally:
        server.kill9()


def test_serve_stops_with_an_error_when_its_worker_dies(elsewhere, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("reads children from /proc")
    server, _ = _serve(elsewhere, tmp_path / "serve.log", DYART_HOME=str(tmp_path / "home"))
    try:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
        server.wait_for(lambda: children.read_text().split() != [], "worker child", timeout=60)
        [worker] = children.read_text().split()

        os.kill(int(worker), signal.SIGKILL)

        assert server.proc.wait(60) == 1
        errors = [line for line in server.output().splitlines() if "dyart-service:" in line]
        assert len(errors) == 1 and "worker process exited (code -9)" in errors[0]
    finally:
        server.kill9()


def test_the_worker_gets_each_setting_that_is_set_and_no_unset_one(settings, monkeypatch):
    from api.cli import worker_environment

    monkeypatch.delenv("DYART_METRICS_TOKEN", raising=False)
    env = worker_environment(settings)
    assert env["DYART_DATABASE_URL"] == settings.database_url
    assert env["DYART_SWEEP_SECONDS"] == str(settings.sweep_seconds)
    assert "DYART_METRICS_TOKEN" not in env  # unset is not the string "None"

    set_ = settings.model_copy(update={"metrics_token": "scrape-secret"})
    assert worker_environment(set_)["DYART_METRICS_TOKEN"] == "scrape-secret"


def test_a_worker_that_exits_to_be_restarted_is_started_again_and_others_stop_the_server():
    """The watch over serve's worker, on real processes: exit status 75 (a stalled job)
    starts a new worker; any other exit stops the server."""
    import subprocess
    from types import SimpleNamespace

    from api.cli import WorkerWatch
    from db.settings import WORKER_RESTART_EXIT

    def process(code: int | None) -> subprocess.Popen:
        script = "import time; time.sleep(600)" if code is None else f"raise SystemExit({code})"
        return subprocess.Popen([sys.executable, "-c", script])

    server = SimpleNamespace(should_exit=False)  # the flag uvicorn's Server polls
    started: list[subprocess.Popen] = []

    def restart() -> subprocess.Popen:
        started.append(process(None))
        return started[-1]

    watch = WorkerWatch(process(WORKER_RESTART_EXIT), server, restart)
    try:
        wait_for(lambda: len(started) == 1, "the worker started again")
        assert watch.worker is started[0] and not server.should_exit
        started[0].terminate()  # it dies of a signal: not a request to be restarted
        wait_for(lambda: server.should_exit, "the server told to stop")
        watch.thread.join(10)
        assert watch.exit_code == -signal.SIGTERM and len(started) == 1
    finally:
        for p in started:
            p.kill()
            p.wait()
