"""A job's live events as Server-Sent Events, polled from the database.

The database is the source of truth, so the stream is a loop that reads what
changed since the last look (about twice a second) and emits it:

* ``job``        the JobPublic, whenever its row changes,
* ``metric``     each new per-epoch metrics row,
* ``log``        each new log line,
* ``evaluation`` an evaluation, whenever it changes,
* ``end``        once the job is final, no evaluation of it is pending and every
  log line has been sent (a long log goes out 1000 lines a poll),
* ``unavailable`` once when the database stops answering; the stream stays open,
  keeps polling, and carries on from where it was when the database is back
  (the next ``job`` event says it is).

The token the stream was opened with is checked again every
``ACCESS_RECHECK_SECONDS``: once it is revoked (or its user may no longer see the
job) the stream closes, without ``end``; the client's reconnect gets the 401.

Event ids are ``<metric seq>.<log seq>``, the job's own numbers of the last metric
write and log line sent (db.models: a re-run epoch's row takes a new number, so it
is sent again): a client that reconnects with ``Last-Event-ID`` (or ``?since=``)
gets only the rows it has not seen, plus the current job and evaluations. An id
of another form, such as the ``<row id>-<row id>`` of versions before migration
0008 that a tab open across the upgrade sends, starts from the beginning: the
dashboard drops log lines it already shows (by their number) and replaces metric
rows by stage and epoch, so it shows nothing twice and misses nothing.

Every stream of the process polls through one narrow lane of ``POLL_THREADS``
threads, not the threadpool that serves the other requests: a poll holds a thread
and a pooled database connection while it reads, and with many streams open (one
per dashboard tab on a job page) and reads that are slow (a locked table, a busy
disk), polls would otherwise take every thread and every connection, and the rest
of the API would hang until the pool timed out. Past the lane's width the streams
take turns, each polling less often; other requests keep their threads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio import to_thread
from anyio.lowlevel import RunVar
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import database_down
from db.models import MAX_SEQ, PENDING_STATUSES, Job, JobLog, JobMetric

log = logging.getLogger("api.events")

FINAL = ("succeeded", "failed", "canceled")
KEEPALIVE_SECONDS = 15.0
ACCESS_RECHECK_SECONDS = 10.0  # a revoked token's open stream ends within about this
# Fields that change on every read of a running job; not a reason to emit ``job``.
_VOLATILE = ("elapsed_seconds", "eta_seconds")
LOG_BATCH = 1000  # log rows per poll; a longer backlog goes out over the next polls
# Threads (so also database connections) all streams' polls share; well under the
# pool's 5 + 10 connections and the 40 threads of the request threadpool.
POLL_THREADS = 4
_poll_lane: RunVar[anyio.CapacityLimiter] = RunVar("dyart_events_poll_lane")
# Whether the stream's credentials still give access to the job (checked in a poll).
Access = Callable[[Session, Job], bool]
UNAVAILABLE = (
    "database unavailable: the service cannot reach its database right now; "
    "live updates resume when it answers"
)


@dataclass
class Cursor:
    """The last metric and log ``seq`` of the job a client has seen."""

    metric: int = 0
    log: int = 0

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """Read ``"<metric>.<log>"``; anything unreadable starts from the beginning."""
        try:
            metric, log = (int(part) for part in (text or "").split("."))
        except ValueError:
            return cls()
        return cls(min(max(metric, 0), MAX_SEQ), min(max(log, 0), MAX_SEQ))

    def __str__(self) -> str:
        return f"{self.metric}.{self.log}"


@dataclass
class Snapshot:
    """What one poll found: the job, and rows newer than the cursor."""

    job: dict[str, Any] | None
    metrics: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    logs: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    more_logs: bool = False  # log rows past this poll's batch wait for the next one
    refused: bool = False  # the stream's token no longer gives access to the job

    @property
    def finished(self) -> bool:
        if self.job is None:
            return True
        if self.more_logs:  # a final job's stream ends with its last log line, not before
            return False
        pending = any(e["status"] in PENDING_STATUSES for e in self.evaluations)
        return self.job["status"] in FINAL and not pending


def take_snapshot(
    session_factory: Any, job_id: str, cursor: Cursor, access: Access | None = None
) -> Snapshot:
    """Read the job and everything newer than ``cursor`` in one short session;
    with ``access``, first check that the stream may still see it."""
    from api.routes.evaluations import job_evaluations
    from api.routes.jobs import job_public, log_line, metric_public

    with session_factory() as session:
        job = session.get(Job, job_id)
        if job is None:
            return Snapshot(job=None)
        if access is not None and not access(session, job):
            return Snapshot(job=None, refused=True)
        metrics = session.scalars(
            select(JobMetric)
            .where(JobMetric.job_id == job_id, JobMetric.seq > cursor.metric)
            .order_by(JobMetric.seq)
        )
        logs = session.scalars(
            select(JobLog)
            .where(JobLog.job_id == job_id, JobLog.seq > cursor.log)
            .order_by(JobLog.seq)
            .limit(LOG_BATCH)
        ).all()
        return Snapshot(
            job=job_public(session, job).model_dump(mode="json"),
            metrics=[(m.seq, metric_public(m).model_dump(mode="json")) for m in metrics],
            logs=[(r.seq, log_line(r).model_dump(mode="json")) for r in logs],
            evaluations=[e.model_dump(mode="json") for e in job_evaluations(session, job)],
            more_logs=len(logs) == LOG_BATCH,
        )


def poll_lane() -> anyio.CapacityLimiter:
    """The limiter every stream's polls share (one per event loop, made on first use)."""
    try:
        return _poll_lane.get()
    except LookupError:
        lane = anyio.CapacityLimiter(POLL_THREADS)
        _poll_lane.set(lane)
        return lane


def sse(event: str, data: Any, ident: Cursor | None = None) -> str:
    """One SSE message (``data`` as one line of JSON)."""
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class JobEventStream:
    """The state of one client's stream: what it has already been sent."""

    def __init__(
        self, session_factory: Any, job_id: str, cursor: Cursor, access: Access | None = None
    ):
        self.session_factory, self.job_id, self.cursor = session_factory, job_id, cursor
        self.access = access
        self.last_job: dict[str, Any] | None = None
        self.last_evaluations: dict[str, dict[str, Any]] = {}

    def changes(self, snap: Snapshot) -> list[str]:
        """The messages ``snap`` holds that this client has not seen."""
        out = []
        for ident, row in snap.metrics:
            self.cursor.metric = ident
            out.append(sse("metric", row, self.cursor))
        for ident, line in snap.logs:
            self.cursor.log = ident
            out.append(sse("log", line, self.cursor))
        for evaluation in snap.evaluations:
            if self.last_evaluations.get(evaluation["id"]) != evaluation:
                self.last_evaluations[evaluation["id"]] = evaluation
                out.append(sse("evaluation", evaluation, self.cursor))
        if snap.job is not None:
            stable = {k: v for k, v in snap.job.items() if k not in _VOLATILE}
            if stable != self.last_job:
                self.last_job = stable
                out.append(sse("job", snap.job, self.cursor))
        return out

    async def messages(
        self, is_disconnected: Callable[[], Awaitable[bool]], poll_seconds: float
    ) -> AsyncIterator[str]:
        """Poll until the job is final (then ``end``) or the client goes away."""
        yield "retry: 2000\n\n"
        quiet_since = checked = time.monotonic()
        down = False
        while not await is_disconnected():
            due = self.access is not None and time.monotonic() - checked >= ACCESS_RECHECK_SECONDS
            try:
                snap = await to_thread.run_sync(
                    take_snapshot,
                    self.session_factory,
                    self.job_id,
                    self.cursor,
                    self.access if due else None,
                    limiter=poll_lane(),
                )
            except Exception as exc:
                if not database_down(exc):
                    raise
                if not down:
                    down, quiet_since = True, time.monotonic()
                    log.warning(
                        "event stream of job %s: database unreachable (%s); still polling",
                        self.job_id, type(exc).__name__,
                    )  # fmt: skip
                    yield sse("unavailable", {"detail": UNAVAILABLE}, self.cursor)
                elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                await anyio.sleep(max(poll_seconds, 1.0))
                continue
            if due:
                checked = time.monotonic()
            if snap.refused:
                log.info("event stream of job %s closed: its token no longer opens it", self.job_id)
                return
            if down:
                down, self.last_job = False, None  # say it is back with the current job
                log.info("event stream of job %s: database answers again", self.job_id)
            for message in self.changes(snap):
                quiet_since = time.monotonic()
                yield message
            if snap.finished:
                status = snap.job["status"] if snap.job else "deleted"
                yield sse("end", {"status": status}, self.cursor)
                return
            if time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await anyio.sleep(0 if snap.more_logs else poll_seconds)
