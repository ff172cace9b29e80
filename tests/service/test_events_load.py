"""Many event streams while the database is slow to answer them: the rest of the API
keeps its threads and connections."""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from api.events import POLL_THREADS
from tests.conftest import BACKEND
from tests.service.conftest import SMALL_JOB

pytestmark = pytest.mark.skipif(
    BACKEND != "postgres",
    reason="a read that waits needs a table lock, and SQLite readers never wait (WAL)",
)

POOL = 5 + 10  # SQLAlchemy's default pool: 5 connections, 10 more in overflow
STREAMS = 2 * POOL


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


@contextmanager
def table_locked(url: str, table: str):
    """Another session holds ``table`` ACCESS EXCLUSIVE until exit: every read of it waits."""
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={_database(url)}") as conn:
        conn.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        try:
            yield
        finally:
            conn.rollback()


def _waiting_on_a_lock(url: str) -> int:
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as admin:
        (count,) = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (_database(url),),
        ).fetchone()
    return count


def _lines_until(lines_of, wanted: tuple[str, ...]) -> list[str]:
    """Lines from the iterator ``lines_of`` up to the first one in ``wanted``."""
    lines = []
    for line in lines_of:
        lines.append(line)
        if line in wanted:
            break
    return lines


def test_streams_waiting_on_the_database_leave_the_api_its_threads_and_connections(
    live_server, settings
):
    """The job log table is locked, so every poll of a stream waits, and twice as many
    clients as the pool has connections follow a job. Each stream still opens; health
    and /me answer; at most POLL_THREADS polls wait in the database at once (not one per
    stream, which would hold every pooled connection); and once the lock goes, every
    stream carries on with the job, none told the database is unavailable."""
    url = settings.database_url
    created = httpx.post(
        f"{live_server.url}/api/v1/jobs", json=SMALL_JOB, headers=live_server.headers
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    limits = httpx.Limits(max_connections=STREAMS + 4)
    client = httpx.Client(
        base_url=live_server.url, headers=live_server.headers, limits=limits, timeout=60
    )
    with client, ExitStack() as streams:
        with table_locked(url, "job_log"):
            opened = []
            for n in range(STREAMS):
                response = streams.enter_context(
                    client.stream("GET", f"/api/v1/jobs/{job_id}/events")
                )
                assert response.status_code == 200, f"stream {n + 1}: {response.read()!r}"
                lines_of = response.iter_lines()
                assert _lines_until(lines_of, ("retry: 2000",))[-1] == "retry: 2000"
                opened.append(lines_of)

            deadline = time.monotonic() + 30
            while _waiting_on_a_lock(url) == 0 and time.monotonic() < deadline:
                time.sleep(0.1)  # the polls reach the locked table
            health = client.get("/api/v1/health")
            assert health.status_code == 200 and health.json()["database"] == "ok"
            assert client.get("/api/v1/me").status_code == 200
            assert 1 <= _waiting_on_a_lock(url) <= POLL_THREADS

        for lines_of in opened:
            lines = _lines_until(lines_of, ("event: job", "event: unavailable"))
            assert lines[-1] == "event: job", lines
