"""A job's live progress as Server-Sent Events (see api.events for the protocol)."""

from __future__ import annotations

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api.auth import bearer_token
from api.deps import OwnedJob, SessionDep, visible
from api.events import Access, Cursor, JobEventStream
from api.routes import API_PREFIX, AUTHED_ERRORS
from db import tokens
from db.models import Job

router = APIRouter(prefix=API_PREFIX, tags=["jobs"], responses=AUTHED_ERRORS)


def _access(token: str) -> Access:
    """Whether ``token`` still opens the job: not revoked, and its user owns the job or is
    an admin (checked again and again while the stream is open)."""

    def check(session: Session, job: Job) -> bool:
        user = tokens.user_for_token(session, token)
        return user is not None and visible(user, job.owner_id)

    return check


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job: OwnedJob,
    session: SessionDep,
    request: Request,
    since: str | None = Query(None, description="resume after this event id"),
    last_event_id: str | None = Header(None),
) -> StreamingResponse:
    """Live events: job, metric, log, evaluation, then end when the job is final;
    unavailable (once) while the database cannot be reached, the stream staying open."""
    cursor = Cursor.parse(last_event_id or since)
    token = bearer_token(request.headers.get("authorization"))
    stream = JobEventStream(
        request.app.state.session_factory, job.id, cursor, None if token is None else _access(token)
    )
    # The stream opens a session per poll; the request's own would otherwise hold a
    # connection, idle in a transaction, for as long as the client follows the job.
    session.close()
    poll = getattr(request.app.state, "events_poll_seconds", 0.5)
    return StreamingResponse(
        stream.messages(request.is_disconnected, poll),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
