"""Start the API on this machine for a benchmark: a free port, a process, a readiness wait."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(
    env: dict[str, str], port: int, log: Path, *, migrate: bool = False, ready: str = "health"
) -> subprocess.Popen:
    """The API under uvicorn on ``port``, once ``/api/v1/<ready>`` answers 2xx.

    ``migrate`` first brings the database to the latest schema (the API's own
    ``migrate`` command); the server's output goes to ``log``, named in the error
    if it does not start within a minute.
    """
    if migrate:
        subprocess.run([sys.executable, "-m", "api.cli", "migrate"], env=env, cwd=ROOT, check=True)
    command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/{ready}", timeout=5).is_success:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the API did not start; see {log}")
