"""Shared parts of the fault scripts: a whole service stack in a temporary home.

``Stack`` owns everything it starts (API, workers, its own redis-server), each in
its own process group, and ends only those. The database is SQLite in the home or
a fresh Postgres database on 127.0.0.1:5432 (dropped at the end) or a private
Postgres cluster of the script's own (:class:`PrivatePostgres`); the broker is
the serverless SQLite one or a redis-server on a port of its own, never the
machine's shared Redis. Jobs are tiny (digits + MLP, 1 burn-in epoch, 2 epochs).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
TINY_JOB = {
    "dataset": "digits",
    "architecture": "mlp",
    "method": "dyart",
    "burn_in_epochs": 1,
    "epochs": 2,
    "schedule": "cosine",
    "batch_size": 64,
    "val_size": 128,
    "val_pgd_steps": 3,
    "eval_preset": "fast",
    "eval_eps": [0.1],
    "eval_n": 50,
    "hparams": {"iterations": 3},
}
FINAL = ("succeeded", "failed", "canceled")
TIMINGS = {
    "DYART_HEARTBEAT_SECONDS": "1",
    "DYART_STALE_AFTER_SECONDS": "6",
    "DYART_SWEEP_SECONDS": "1",
    "DYART_RESEND_AFTER_SECONDS": "20",
}
PRODUCTION_TIMINGS = {  # the service's defaults (db/settings.py)
    "DYART_HEARTBEAT_SECONDS": "5",
    "DYART_STALE_AFTER_SECONDS": "60",
    "DYART_SWEEP_SECONDS": "10",
    "DYART_RESEND_AFTER_SECONDS": "300",
}
_RESULT = re.compile(r"Task worker\.run_job\[[^\]]+\] succeeded in [\d.]+s: (\{.*\})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(check: Callable[[], Any], what: str, timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Proc:
    """A subprocess in its own process group, its output in ``log``."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path):
        self.command, self.log = command, log
        self._out = log.open("ab")
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, grace: float = 20) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._out.close()


def start_redis(port: int, log: Path) -> Proc:
    """A redis-server of our own on ``port``, without persistence (a restart empties it)."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--daemonize", "no"]
    proc = Proc(command, dict(os.environ), log)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait(up, f"redis-server on {port}", 30)
    return proc


class PrivatePostgres:
    """A Postgres cluster of our own in a temporary folder, on ``port`` (never 5432).

    ``initdb`` into the folder, ``pg_ctl start``/``stop`` on it; a fault script may
    stop it (``mode="immediate"`` is a crash: no checkpoint, connections cut) and
    start it again. As root, every command runs as the ``postgres`` user, who owns
    the folder. ``close()`` stops it and removes the folder.
    """

    def __init__(self, port: int = 5499, options: tuple[str, ...] = ()):
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not binaries:
            raise RuntimeError("no Postgres server binaries under /usr/lib/postgresql/*/bin")
        self.bin, self.port, self.options = binaries[-1].parent, port, options
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(f"port {port} is taken: pick another with --pg-port")
        self.root = Path(tempfile.mkdtemp(prefix="dyart-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")  # fmt: skip
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        out = subprocess.run(command, cwd=self.root, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stderr or out.stdout}")
        return out

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
        opts += " ".join(f"-c {o}" for o in self.options)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").is_file()

    def create_database(self, name: str) -> str:
        """A new database ``name``; its SQLAlchemy URL."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


SEED = """
from db import tokens
from db.session import make_engine, make_session_factory, upgrade_database
from db.settings import get_settings
s = get_settings()
upgrade_database(s.database_url)
session = make_session_factory(make_engine(s))()
user = tokens.create_user(session, "faults")
print(tokens.create_token(session, user))
session.commit()
"""


class Stack:
    """API + workers + database + broker in a temporary home; a context manager."""

    def __init__(
        self,
        *,
        postgres: bool = False,
        broker_url: str | None = None,
        artifacts_dir: Path | None = None,
        home: Path | None = None,
        **env: str,
    ):
        self.home = home or Path(tempfile.mkdtemp(prefix="dyart-fault-"))
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env = {
            **os.environ,
            "PYTHONPATH": path,
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "DYART_HOME": str(self.home),
            "DYART_AUTH": "required",
            "DYART_DEVICE": "cpu",
            "DYART_RESULT_BACKEND": f"db+sqlite:///{self.home}/results.db",
            **TIMINGS,
            **env,
        }
        self.pg_name = None
        if postgres:
            import psycopg

            self.pg_name = f"dyart_fault_{uuid.uuid4().hex[:8]}"
            with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{self.pg_name}"')
            self.env["DYART_DATABASE_URL"] = (
                f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.pg_name}"
            )
        if broker_url:
            self.env["DYART_BROKER_URL"] = broker_url
        if artifacts_dir:
            self.env["DYART_ARTIFACTS_DIR"] = str(artifacts_dir)
        out = subprocess.run(
            [sys.executable, "-c", SEED], env=self.env, cwd=ROOT, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        self.token = out.stdout.strip().splitlines()[-1]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self._engine = None

    # -- processes --------------------------------------------------------------

    def start_api(self) -> Proc:
        command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self.api = Proc(command, self.env, self.home / "api.log")
        wait(self._healthy, "the API", 60)
        return self.api

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            if self.api is not None and not self.api.alive():
                raise RuntimeError(f"the API exited:\n{self.api.output()[-3000:]}") from None
            return False

    def start_worker(self, launcher: list[str] | None = None, **env: str) -> Proc:
        """A solo-pool worker; ``launcher`` replaces ``python -m celery`` (fault injection)."""
        name = f"w{len(self.workers)}{uuid.uuid4().hex[:4]}"
        command = launcher or [sys.executable, "-m", "celery"]
        command = [*command, "-A", "worker.app", "worker"]
        command += ["--concurrency=1", "--pool=solo", "--loglevel=INFO", "--without-mingle"]
        command += ["--without-gossip", f"--hostname={name}@%h"]
        worker = Proc(command, {**self.env, **env}, self.home / f"worker-{name}.log")
        wait(lambda: " ready." in worker.output(), f"worker {name}", 120)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None:
                proc.stop(grace=10)
        if self._engine is not None:
            self._engine.dispose()
        if self.pg_name:
            import psycopg

            with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the user's view -----------------------------------------------------------

    def client(self, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def submit(self, client: httpx.Client, name: str, **overrides: Any) -> httpx.Response:
        return client.post("/api/v1/jobs", json={**TINY_JOB, "name": name, **overrides})

    # -- the database's view ---------------------------------------------------------

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from db.session import engine_for_url

            url = self.env.get("DYART_DATABASE_URL") or f"sqlite:///{self.home}/dyart.db"
            self._engine = engine_for_url(url)
        return self._engine

    def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def jobs(self) -> dict[str, dict[str, Any]]:
        rows = self.rows("SELECT id, name, status, attempts, error FROM job")
        return {r.id: dict(r._mapping) for r in rows}

    def wait_all_final(self, timeout: float) -> dict[str, dict[str, Any]]:
        def done() -> dict | None:
            jobs = self.jobs()
            return jobs if jobs and all(j["status"] in FINAL for j in jobs.values()) else None

        return wait(done, "every job to end", timeout, every=1.0)

    def attempt_lines(self, job_id: str) -> list[str]:
        rows = self.rows(
            "SELECT message FROM job_log WHERE job_id = :j AND message LIKE 'attempt %' "
            "ORDER BY id",
            j=job_id,
        )
        return [r.message for r in rows]

    def run_results(self) -> Counter:
        """(job_id, outcome) -> how many task runs the workers logged with that outcome.

        Outcomes: a final status (the job was trained to its end by that run),
        ``lease_lost`` / ``handed_over``, or ``skipped`` (a duplicate delivery that
        found the lease held or the job finished, and did nothing).
        """
        import ast

        counts: Counter = Counter()
        for worker in self.workers:
            for match in _RESULT.finditer(worker.output()):
                result = ast.literal_eval(match.group(1))
                outcome = "skipped" if "skipped" in result else result.get("status")
                counts[(result.get("job_id"), outcome)] += 1
        return counts

    def checkpoint_audit(self) -> dict[str, int]:
        """Rows offered for download vs the files on disk: complete, missing, damaged."""
        artifacts = Path(self.env.get("DYART_ARTIFACTS_DIR") or self.home / "artifacts")
        audit = Counter()
        for row in self.rows("SELECT path, size, sha256 FROM checkpoint"):
            path = artifacts / row.path
            if not path.is_file():
                audit["missing"] += 1
            elif path.stat().st_size != row.size or _sha256(path) != row.sha256:
                audit["damaged"] += 1
            else:
                audit["complete"] += 1
        audit["temp_files_left"] = sum(1 for _ in artifacts.rglob("*.tmp"))
        return dict(audit)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def summarize(stack: Stack, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-run facts every fault script reports."""
    runs = stack.run_results()
    trained = Counter(
        job for (job, outcome), n in runs.items() for _ in range(n) if outcome in FINAL
    )
    skipped = sum(n for (_, outcome), n in runs.items() if outcome == "skipped")
    return {
        "jobs": len(jobs),
        "by_status": dict(Counter(j["status"] for j in jobs.values())),
        "attempts": dict(Counter(j["attempts"] for j in jobs.values())),
        "trained_to_the_end_more_than_once": sorted(j for j, n in trained.items() if n > 1),
        "duplicate_deliveries_skipped": skipped,
        "checkpoints": stack.checkpoint_audit(),
    }


def cleanup_home(stack: Stack, keep: bool) -> None:
    if keep:
        print(f"kept {stack.home}")
    else:
        shutil.rmtree(stack.home, ignore_errors=True)
