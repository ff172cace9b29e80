"""Fixtures shared by every service test: a migrated database, settings, users, and
real worker and API processes.

Backend: ``DYART_TEST_BACKEND=sqlite`` (default: a fresh SQLite file per test and
the serverless ``sqla+sqlite`` broker) or ``postgres`` (a uniquely named database
on 127.0.0.1:5432, made for the test session and dropped after it, emptied before
each test; Redis at 127.0.0.1:6379 on a database number picked for the session,
flushed before each test).

Names others rely on (keep them stable): ``service_env`` (env dict of DYART_*),
``settings``, ``db_session``, ``make_user`` -> (user, token), ``worker_process``
(one worker started; call it to start more), ``make_live_server`` and
``live_server`` (``.url``, ``.headers``).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND = os.environ.get("DYART_TEST_BACKEND", "sqlite")
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_HOST = "127.0.0.1:6379"
# Fast heartbeats so a dead worker is noticed in seconds; stale stays 4x heartbeat.
TEST_TIMINGS = {
    "DYART_HEARTBEAT_SECONDS": "1",
    "DYART_STALE_AFTER_SECONDS": "4",
    "DYART_SWEEP_SECONDS": "1",
    "DYART_RESEND_AFTER_SECONDS": "600",
}


def pytest_configure(config):
    # kombu's SQLAlchemy transport (the embedded broker) maps its tables with the
    # ``noload`` strategy that SQLAlchemy 2.1 deprecates; not ours to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning"
    )


SERVICE_LOG_LINES = 200


def _job_log(session_factory: Callable) -> str:
    """Every job's log lines in the test's database, in order, with their times."""
    from sqlalchemy import select

    from db.models import JobLog

    try:
        with session_factory() as session:
            rows = session.scalars(select(JobLog).order_by(JobLog.id)).all()
            return "\n".join(
                f"{r.ts:%H:%M:%S.%f} {r.level:7} {r.job_id[:8]} {r.message}" for r in rows
            )
    except Exception as exc:  # the failure may be the database itself
        return f"could not read the job log: {type(exc).__name__}: {exc}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that ran service processes shows the end of each one's log (the
    worker's heartbeats, sweeps and task lines say what happened) and the jobs' log
    lines from the database, untruncated."""
    report = yield
    if report.when != "call" or not report.failed:
        return report
    funcargs = getattr(item, "funcargs", {})
    tmp_path = funcargs.get("tmp_path")
    if isinstance(tmp_path, Path):
        for log in sorted(tmp_path.glob("*.log"), key=lambda p: p.stat().st_mtime):
            lines = log.read_text(errors="replace").splitlines()[-SERVICE_LOG_LINES:]
            report.sections.append((f"{log.name} (last {len(lines)} lines)", "\n".join(lines)))
    if "session_factory" in funcargs:
        report.sections.append(("job log (database)", _job_log(funcargs["session_factory"])))
    return report


def postgres_url(database: str) -> str:
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"


def create_postgres_database(prefix: str = "dyart_test") -> str:
    """A fresh, empty, uniquely named Postgres database; returns its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_url(name)


def drop_postgres_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory) -> Iterator[str]:
    """Postgres: the session's migrated database URL. SQLite: a migrated template file."""
    from db.session import upgrade_database

    if BACKEND == "postgres":
        url = create_postgres_database()
        upgrade_database(url)
        yield url
        drop_postgres_database(url)
        return
    template = tmp_path_factory.mktemp("template") / "dyart.db"
    upgrade_database(f"sqlite:///{template}")
    yield str(template)


@pytest.fixture(scope="session")
def redis_db(request) -> int:
    """A Redis database number for this test process. Under pytest-xdist the workers
    share one random start and take consecutive numbers, so no two flush each other's."""
    workerinput = getattr(request.config, "workerinput", None)
    if workerinput is None:
        return random.randint(1, 15)
    start = int(workerinput["testrunuid"], 16) % 15
    return 1 + (start + int(workerinput["workerid"].removeprefix("gw"))) % 15


def _empty_postgres(url: str) -> None:
    from sqlalchemy import text

    from db.models import Base
    from db.session import engine_for_url

    engine = engine_for_url(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


def _flush_redis(db: int) -> None:
    import redis

    client = redis.Redis.from_url(f"redis://{REDIS_HOST}/{db}")
    client.flushdb()
    client.close()


@pytest.fixture
def service_env(tmp_path, migrated_database, redis_db) -> dict[str, str]:
    """DYART_* variables of a fresh, migrated service under ``tmp_path/home``."""
    home = tmp_path / "home"
    home.mkdir()
    if BACKEND == "postgres":
        _empty_postgres(migrated_database)
        _flush_redis(redis_db)
        database_url, broker_url = migrated_database, f"redis://{REDIS_HOST}/{redis_db}"
    else:
        shutil.copy(migrated_database, home / "dyart.db")
        database_url, broker_url = f"sqlite:///{home}/dyart.db", f"sqla+sqlite:///{home}/broker.db"
    return {
        "DYART_HOME": str(home),
        "DYART_DATABASE_URL": database_url,
        "DYART_BROKER_URL": broker_url,
        "DYART_RESULT_BACKEND": f"db+sqlite:///{home}/results.db",
        "DYART_ARTIFACTS_DIR": str(home / "artifacts"),
        "DYART_DEVICE": "cpu",
        **TEST_TIMINGS,
    }


@pytest.fixture
def settings(service_env, monkeypatch):
    """Settings of ``service_env``; ``get_settings()`` returns the same during the test."""
    from db.settings import Settings, reset_settings

    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    yield Settings()
    reset_settings()


@pytest.fixture
def session_factory(settings):
    from db.session import make_engine, make_session_factory

    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def db_session(session_factory):
    """A session on the test's database (commits are real: workers see them)."""
    with session_factory() as session:
        yield session


@pytest.fixture
def make_user(session_factory) -> Callable[..., tuple[Any, str]]:
    """``make_user(name, is_admin=False)`` -> (User, plaintext token), committed."""
    from db import tokens

    def make(name: str, is_admin: bool = False) -> tuple[Any, str]:
        with session_factory(expire_on_commit=False) as session:
            user = tokens.create_user(session, name, is_admin=is_admin)
            token = tokens.create_token(session, user)
            session.commit()
            session.expunge(user)
        return user, token

    return make


def subprocess_env(service_env: dict[str, str], **overrides: str) -> dict[str, str]:
    """The environment of a service subprocess: ours + the service's + overrides."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **service_env, **overrides, "PYTHONPATH": path}
    env.setdefault("OMP_NUM_THREADS", "1")  # two cores: a worker must not take both
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServiceProcess:
    """A service subprocess in its own process group, its output in ``log_path``."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT):
        self.command, self.log_path = command, log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if not self.alive():
                raise RuntimeError(f"{what} exited early:\n{self.output()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{what} not ready in {timeout}s:\n{self.output()[-4000:]}")

    def kill9(self) -> None:
        """SIGKILL the whole process group (the worker and any pool children)."""
        if self._log.closed:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self._log.close()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it lingers."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()


def start_worker(
    service_env: dict[str, str],
    log_dir: Path,
    pool: str = "solo",
    script: str | None = None,
    **overrides: str,
) -> ServiceProcess:
    """A real Celery worker (`python -m celery -A worker.app worker`), once ready.

    ``script``: a file run instead of ``-m celery`` that takes Celery's command line
    (bench/faults/step_fault_worker.py: a worker whose training step raises).
    """
    name = f"w{uuid.uuid4().hex[:6]}"
    launcher = [script] if script else ["-m", "celery"]
    command = [sys.executable, *launcher, "-A", "worker.app", "worker"]
    command += ["--concurrency=1", f"--pool={pool}", "--loglevel=INFO", "--without-mingle"]
    command += ["--without-gossip", f"--hostname={name}@%h"]
    worker = ServiceProcess(
        command, subprocess_env(service_env, **overrides), log_dir / f"worker-{name}.log"
    )
    worker.name = name
    worker.wait_for(lambda: " ready." in worker.output(), f"worker {name}", timeout=90)
    return worker


class WorkerFleet:
    """The test's workers: one started at once; ``fleet()`` starts another."""

    def __init__(self, service_env: dict[str, str], log_dir: Path):
        self.service_env, self.log_dir = service_env, log_dir
        self.workers: list[ServiceProcess] = []

    def __call__(
        self, pool: str = "solo", script: str | None = None, **overrides: str
    ) -> ServiceProcess:
        worker = start_worker(self.service_env, self.log_dir, pool, script, **overrides)
        self.workers.append(worker)
        return worker

    @property
    def first(self) -> ServiceProcess:
        return self.workers[0]

    def kill9(self) -> None:
        self.first.kill9()

    def stop(self) -> None:
        self.first.stop()

    def output(self) -> str:
        return "\n".join(w.output() for w in self.workers)


@pytest.fixture
def worker_process(service_env, settings, tmp_path) -> Iterator[WorkerFleet]:
    """A running worker on the test's service (``.kill9()``, ``.stop()``); call for more."""
    fleet = WorkerFleet(service_env, tmp_path)
    try:
        fleet()
        yield fleet
    finally:
        for worker in fleet.workers:
            worker.kill9()  # nothing to keep: the test's database goes away


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A uvicorn process serving ``api.main:create_app`` (``.url``, ``.headers``)."""

    def __init__(self, process: ServiceProcess, url: str, headers: dict[str, str]):
        self.process, self.url, self.headers = process, url, headers

    def stop(self) -> None:
        self.process.stop(grace=10)


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def make_live_server(service_env, settings, make_user, tmp_path) -> Iterator[Callable]:
    """``make_live_server(auth="required", **env)`` -> LiveServer, with a user's token."""
    servers: list[LiveServer] = []

    def make(auth: str = "required", **overrides: str) -> LiveServer:
        port = free_port()
        env = subprocess_env(service_env, DYART_AUTH=auth, DYART_PORT=str(port), **overrides)
        command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        process = ServiceProcess(command, env, tmp_path / f"api-{port}.log")
        url = f"http://127.0.0.1:{port}"
        process.wait_for(lambda: _healthy(url), "API server", timeout=60)
        _, token = make_user(f"live-{uuid.uuid4().hex[:6]}")
        server = LiveServer(process, url, {"Authorization": f"Bearer {token}"})
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def live_server(make_live_server) -> LiveServer:
    """The API on a free loopback port, auth required; ``.headers`` carry a token."""
    return make_live_server()
