"""Dependencies: the DB session, the current user, and a job the user may see.

Ownership is checked in one place (:func:`owned_job`): another user's job is
answered exactly like a job that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.auth import authenticate, refuse_no_auth_beyond_loopback
from api.errors import ResourceNotFoundError, TooMuchWorkError
from db import quota
from db.models import Checkpoint, Job, User

# Every id the service makes is ``uuid4().hex``; anything else names nothing, and is
# answered 404 before it reaches the database (Postgres refuses NUL characters).
_ID = re.compile(r"[0-9a-f]{32}")


def get_session(request: Request) -> Iterator[Session]:
    """A session per request from the app's factory; rolled back if not committed."""
    with request.app.state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


# Declares the bearer scheme in the OpenAPI document, so /docs has an Authorize button
# and lists it on every operation that needs a user. It never answers by itself
# (auto_error=False): api.auth reads the header, with its own messages.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from `dyart-service admin create-token <user>`, sent as "
    "`Authorization: Bearer <token>`.",
)
BearerDeclared = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def current_user(request: Request, session: SessionDep, _bearer: BearerDeclared) -> User:
    """The authenticated user (401 otherwise; 403 without auth off loopback: see api.auth)."""
    required = request.app.state.auth_required
    if not required:
        refuse_no_auth_beyond_loopback(
            request.scope.get("server"), request.app.state.settings, request.headers
        )
    return authenticate(session, request.headers.get("authorization"), required)


CurrentUser = Annotated[User, Depends(current_user)]


def visible(user: User, owner_id: object) -> bool:
    return bool(user.is_admin) or owner_id == user.id


def owned_job(job_id: str, session: SessionDep, user: CurrentUser) -> Job:
    """The job ``job_id`` if it exists and the user may see it; 404 otherwise."""
    job = session.get(Job, job_id) if _ID.fullmatch(job_id) else None
    if job is None or not visible(user, job.owner_id):
        raise ResourceNotFoundError("job", job_id)
    return job


OwnedJob = Annotated[Job, Depends(owned_job)]


def owned_checkpoint(checkpoint_id: str, session: SessionDep, user: CurrentUser) -> Checkpoint:
    """The checkpoint if its job is the user's (or the user is an admin); 404 otherwise."""
    checkpoint = session.get(Checkpoint, checkpoint_id) if _ID.fullmatch(checkpoint_id) else None
    job = session.get(Job, checkpoint.job_id) if checkpoint is not None else None
    if job is None or not visible(user, job.owner_id):
        raise ResourceNotFoundError("checkpoint", checkpoint_id)
    return checkpoint


OwnedCheckpoint = Annotated[Checkpoint, Depends(owned_checkpoint)]


def within_active_limit(session: Session, user: User, settings: object, adding: str) -> None:
    """429 if ``user`` already has ``max_active_per_user`` jobs and evaluations queued or
    running (admins are not limited). ``adding`` names what the request would add."""
    limit = int(getattr(settings, "max_active_per_user", 0) or 0)
    if not limit or user.is_admin:
        return
    active = quota.active_work(session, user.id)
    if active >= limit:
        raise TooMuchWorkError(
            f"you have {active} jobs and evaluations queued or running, the most this server "
            f"allows one user (DYART_MAX_ACTIVE_PER_USER={limit}); {adding} can wait until one "
            "of them ends: cancel one, or try again later"
        )
