"""Which workers are there (db.workers): the rows of presence the sweep writes, and
what ``GET /health`` makes of them. Real database, real worker processes."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

from api.main import create_app
from db import workers
from db.models import Job, WorkerPresence, utcnow
from tests.conftest import ROOT, subprocess_env
from tests.service.conftest import BASE, TestClient
from tests.worker.conftest import wait_for


def _me(queue: str = "celery", beat: float = 10.0) -> workers.Identity:
    return workers.Identity(queue=queue, device="cpu", beat_seconds=beat)


def test_a_worker_counts_until_it_misses_three_of_its_beats(session_factory):
    me, start = _me(beat=10.0), utcnow()
    with session_factory() as session:
        workers.beat(session, me, start)
        assert [w.id for w in workers.present(session, now=start + timedelta(seconds=29))] == [
            me.id
        ]
        assert workers.present(session, now=start + timedelta(seconds=31)) == []
        workers.beat(session, me, start + timedelta(seconds=30))  # one row, refreshed
        assert session.query(WorkerPresence).count() == 1
        assert len(workers.present(session, now=start + timedelta(seconds=31))) == 1


def test_only_workers_on_the_queue_count_and_a_leaving_one_is_gone(session_factory):
    here, elsewhere, now = _me("celery"), _me("gpu-big"), utcnow()
    with session_factory() as session:
        workers.beat(session, here, now)
        workers.beat(session, elsewhere, now)
        assert [w.id for w in workers.present(session, "celery", now)] == [here.id]
        assert {w.id for w in workers.present(session, now=now)} == {here.id, elsewhere.id}
        workers.leave(session, here)
        assert workers.present(session, "celery", now) == []


def test_rows_of_long_dead_workers_are_pruned_by_the_next_beat(session_factory):
    dead, live, now = _me(), _me(), utcnow()
    with session_factory() as session:
        workers.beat(session, dead, now - workers.PRUNE_AFTER - timedelta(minutes=1))
        workers.beat(session, live, now)
        assert [w.id for w in workers.every(session)] == [live.id]


def _health_workers(app) -> int | None:
    with TestClient(app, base_url=BASE) as c:
        return c.get("/api/v1/health").json()["workers"]


def _metrics_workers(app) -> list[str]:
    with TestClient(app, base_url=BASE) as c:
        text = c.get("/metrics").text
    return [line for line in text.splitlines() if line.startswith("dyart_workers{")]


def _cli_workers(service_env: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "api.cli", "workers"]
    result = subprocess.run(
        command, env=subprocess_env(service_env), cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_health_and_the_cli_count_real_workers_on_their_queue(
    worker_process, settings, session_factory, service_env
):
    app = create_app(settings)
    try:
        wait_for(lambda: _health_workers(app) == 1, "the worker's first beat", timeout=30)
        with session_factory() as session:
            (row,) = workers.every(session)
        assert (row.queue, row.device, row.pid) == ("celery", "cpu", worker_process.first.pid)

        other = worker_process(DYART_WORKER_QUEUE="elsewhere")  # cannot take this API's jobs
        with session_factory() as session:
            wait_for(lambda: len(workers.every(session)) == 2, "the second worker's beat", 30)
        assert _health_workers(app) == 1
        assert _metrics_workers(app) == [
            'dyart_workers{queue="celery"} 1.0',
            'dyart_workers{queue="elsewhere"} 1.0',
        ]
        lines = _cli_workers(service_env)
        assert lines[0] == "1 worker(s) present on queue 'celery' (DYART_WORKER_QUEUE)"
        assert sorted(line.split("\t")[1] for line in lines[2:]) == ["celery", "elsewhere"]
        assert all(line.endswith("\tpresent") for line in lines[2:])

        worker_process.stop()  # warm shutdown: the worker removes its row at once
        with session_factory() as session:
            assert [w.queue for w in workers.every(session)] == ["elsewhere"]
        assert _health_workers(app) == 0
        assert 'dyart_workers{queue="celery"} 0.0' in _metrics_workers(app)

        other.kill9()  # no goodbye: the row stays but stops counting after 3 missed beats
        with session_factory() as session:
            wait_for(lambda: workers.present(session) == [], "the killed worker to expire", 30)
            assert len(workers.every(session)) == 1
        lines = _cli_workers(service_env)
        assert lines[0].startswith("0 worker(s) present")
        assert lines[2].split("\t")[1] == "elsewhere" and lines[2].endswith("(missed 3 beats)")
    finally:
        app.state.engine.dispose()


def test_health_says_null_workers_when_the_database_is_down(settings, tmp_path):
    gone = f"sqlite:///{tmp_path}/missing-dir/nothing.db"
    app = create_app(settings.model_copy(update={"database_url": gone}))
    try:
        with TestClient(app, base_url=BASE) as c:
            body = c.get("/api/v1/health").json()
        assert (body["database"], body["workers"]) == ("unreachable", None)
    finally:
        app.state.engine.dispose()


def test_a_failed_beat_is_logged_once_and_leaves_the_sweeps_session_usable(
    session_factory, settings, caplog
):
    # A worker upgraded before the database was migrated (rolling upgrade): its
    # presence cannot be written, but stale jobs must still be requeued.
    from db.models import Base
    from worker.sweep import Presence

    table = Base.metadata.tables["worker_presence"]
    presence, engine = Presence(_me()), session_factory.kw["bind"]
    table.drop(engine)
    try:
        with session_factory() as session, caplog.at_level("INFO", "worker.sweep"):
            presence.beat(session)
            presence.beat(session)
            assert session.query(Job).count() == 0  # the session is usable after the failure
            table.create(engine)
            presence.beat(session)
            assert [w.id for w in workers.every(session)] == [presence.me.id]
    finally:
        table.create(engine, checkfirst=True)
    messages = [r.getMessage() for r in caplog.records if r.name == "worker.sweep"]
    assert len([m for m in messages if "could not write this worker's row" in m]) == 1
    assert messages[-1] == "this worker's row of presence is written again"
