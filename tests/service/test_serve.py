"""``dyart-service serve``: however the server ends, its worker process ends with it.

A worker left running after its server would go on taking jobs, and the next
``serve`` would start a second one beside it. Real processes, real signals.
"""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ServiceProcess, _healthy, free_port, subprocess_env


def _worker_of(server: ServiceProcess, timeout: float = 60.0) -> int:
    """The pid of the server's worker child, once it has one."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    server.wait_for(lambda: children.read_text().split() != [], "worker child", timeout)
    [pid] = children.read_text().split()
    return int(pid)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait on a non-reaping pid 1)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def server(service_env, tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("reads children from /proc")
    port = free_port()
    env = subprocess_env(service_env, DYART_PORT=str(port), DYART_AUTH="off")
    command = [sys.executable, "-m", "api.cli", "serve"]
    process = ServiceProcess(command, env, tmp_path / "serve.log")
    process.wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), "serve", timeout=90)
    yield process
    process.kill9()  # the process group, should a test fail half-way


def test_sigterm_stops_the_server_and_then_its_worker(server):
    worker = _worker_of(server)

    os.kill(server.pid, signal.SIGTERM)

    assert server.proc.wait(90) == 128 + signal.SIGTERM
    assert not _running(worker), server.output()[-3000:]  # stopped and reaped before exit


def test_a_server_killed_hard_takes_its_worker_with_it(server):
    worker = _worker_of(server)

    os.kill(server.pid, signal.SIGKILL)  # no handler runs: only the kernel can tell the worker

    server.proc.wait(30)
    assert _wait_gone(worker, 90), server.output()[-3000:]
