"""Liveness and readiness: is the database answering, is the broker reachable, and how
many workers can take a job (their rows of presence, :mod:`db.workers`)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api import __version__
from api.celery_client import broker_reachable
from api.routes import API_PREFIX, error_responses
from api.schemas import HealthPublic
from db import workers

router = APIRouter(prefix=API_PREFIX, tags=["health"])


def _database_ok(request: Request) -> bool:
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def _workers_present(request: Request) -> int | None:
    """Workers on this server's queue seen lately; None when they cannot be counted."""
    try:
        with request.app.state.session_factory() as session:
            return len(workers.present(session, request.app.state.settings.worker_queue))
    except Exception:
        return None


def _health(request: Request) -> HealthPublic:
    database = "ok" if _database_ok(request) else "unreachable"
    present = _workers_present(request) if database == "ok" else None
    broker = "ok" if broker_reachable(request.app.state.celery) else "unreachable"
    status = "ok" if database == broker == "ok" else "degraded"
    return HealthPublic(
        status=status, database=database, broker=broker, workers=present, version=__version__
    )


@router.get("/health", response_model=HealthPublic)
def health(request: Request) -> HealthPublic:
    """Liveness: always 200 while the process answers; says what is unreachable."""
    return _health(request)


# A bad require_broker is answered by the app's handler in the {field, message} shape,
# not FastAPI's default {loc, msg, type}: document the one it really has.
READY_RESPONSES = {**error_responses(422), 503: {"model": HealthPublic}}


@router.get("/health/ready", response_model=HealthPublic, responses=READY_RESPONSES)
def ready(
    request: Request,
    require_broker: bool = Query(
        False,
        description="also 503 while the broker is unreachable (by default jobs are still "
        "accepted then: they are kept and sent when it is back)",
    ),
) -> JSONResponse:
    """Readiness: 503 while the database is unreachable (jobs cannot be accepted), and
    with ``require_broker`` while the broker is."""
    body = _health(request)
    ready = body.database == "ok" and (body.broker == "ok" or not require_broker)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
