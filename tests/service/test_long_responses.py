"""Responses that last as long as the client wants (event streams, slow downloads)
hold no database connection while they last."""

from __future__ import annotations

import os
from contextlib import ExitStack

import httpx

from tests.conftest import BACKEND
from tests.service.conftest import SMALL_JOB, add_final_checkpoint

# More than the connection pool holds (5 + 10 overflow): were each response to keep
# its request's connection, the requests after the 15th would wait for one in vain.
CLIENTS = 20
SIZE = 32 * 1024 * 1024  # far more than the loopback socket buffers: the download stalls


def _finished_job_with_checkpoint(server, settings, session_factory) -> tuple[str, str, bytes]:
    created = httpx.post(f"{server.url}/api/v1/jobs", json=SMALL_JOB, headers=server.headers)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    data = os.urandom(SIZE)
    return job_id, add_final_checkpoint(session_factory, settings.artifacts_dir, job_id, data), data


def _idle_in_transaction(url: str) -> int:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test") as admin:
        (count,) = admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = %s AND state LIKE 'idle in transaction%%'",
            (name,),
        ).fetchone()
    return count


def test_open_streams_and_stalled_downloads_hold_no_database_connection(
    live_server, settings, session_factory
):
    """20 clients follow a queued job's events and 20 start a large download and stop
    reading; meanwhile every other request is answered, Postgres shows no session idle
    in a transaction, and a stalled download, read on, arrives whole."""
    job_id, checkpoint_id, data = _finished_job_with_checkpoint(
        live_server, settings, session_factory
    )
    limits = httpx.Limits(max_connections=2 * CLIENTS + 4)
    timeout = httpx.Timeout(20.0)
    with (
        httpx.Client(
            base_url=live_server.url, headers=live_server.headers, limits=limits, timeout=timeout
        ) as client,
        ExitStack() as open_responses,
    ):
        downloads = []
        for _ in range(CLIENTS):
            events = open_responses.enter_context(
                client.stream("GET", f"/api/v1/jobs/{job_id}/events")
            )
            assert events.status_code == 200
            assert any(line == "event: job" for line in _first_lines(events))
            download = open_responses.enter_context(
                client.stream("GET", f"/api/v1/checkpoints/{checkpoint_id}/download")
            )
            assert download.status_code == 200
            chunks = download.iter_bytes()
            downloads.append((download, chunks, next(chunks)))

        answered = client.get(f"/api/v1/jobs/{job_id}")
        assert answered.status_code == 200 and answered.json()["status"] == "queued"
        if BACKEND == "postgres":
            assert _idle_in_transaction(settings.database_url) == 0

        _, chunks, first = downloads[0]
        whole = first + b"".join(chunks)
        assert len(whole) == SIZE and whole == data


def _first_lines(response, most: int = 10) -> list[str]:
    """Lines up to the first event's name (at most ``most``)."""
    lines = []
    for line in response.iter_lines():
        lines.append(line)
        if line.startswith("event: ") or len(lines) >= most:
            break
    return lines
