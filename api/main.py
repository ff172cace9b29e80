"""The FastAPI application: routers, error handlers, metrics and the dashboard.

``create_app(settings)`` builds everything from one Settings object, so tests
and the CLI make as many independent apps as they like; ``app`` is the one
``uvicorn api.main:app`` serves with the environment's settings.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from api import __version__
from api.auth import auth_required
from api.celery_client import make_celery_client
from api.errors import install_error_handlers
from api.routes import (
    catalog,
    checkpoints,
    evaluations,
    events,
    health,
    jobs,
    me,
    metrics,
)
from api.routes.metrics import RequestMetricsMiddleware, make_registry
from db.session import make_engine, make_session_factory
from db.settings import Settings, get_settings

log = logging.getLogger("api")
FRONTEND_DIR = Path(__file__).resolve().parents[1] / "frontend"
MAX_BODY_BYTES = 1024 * 1024

_PLACEHOLDER = """<!doctype html><html><head><meta charset="utf-8"><title>DyART</title></head>
<body><h1>DyART service</h1><p>The dashboard is not installed here (no frontend/index.html).
The API is at <a href="/docs">/docs</a>.</p></body></html>"""


class BodySizeLimitMiddleware:
    """Answer 413 to a body over ``max_bytes``, declared or streamed (DESIGN.md §7)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes // 1024} KiB"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._message()}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # The route is reading its body. FastAPI turns any other error raised
                # here into a 400 "error parsing the body"; an HTTPException passes
                # through to the error handlers, which answer 413.
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> Any:
    if not app.state.auth_required:
        log.warning(
            "authentication is OFF: the service should listen on loopback (DYART_HOST=%s); "
            "every request without a token acts as the admin user 'local', and a request "
            "that arrives on any other address is refused",
            app.state.settings.host,
        )
    yield
    app.state.engine.dispose()


def _mount_frontend(app: FastAPI, folder: Path) -> None:
    if (folder / "index.html").is_file():
        app.mount("/", StaticFiles(directory=folder, html=True), name="frontend")
        return

    @app.get("/", include_in_schema=False)
    def placeholder() -> HTMLResponse:
        return HTMLResponse(_PLACEHOLDER)


def create_app(settings: Settings | None = None, frontend_dir: Path | None = None) -> FastAPI:
    """The API for ``settings`` (default: the environment's), with its own engine."""
    settings = settings or get_settings()
    app = FastAPI(
        title="DyART training service",
        version=__version__,
        description="Train, evaluate and download adversarially robust classifiers.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings)
    app.state.session_factory = make_session_factory(app.state.engine)
    app.state.celery = make_celery_client(settings)
    app.state.auth_required = auth_required(settings)
    app.state.registry = make_registry(app)
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, registry=app.state.registry)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    for module in (health, catalog, me, jobs, evaluations, checkpoints, events):
        app.include_router(module.router)
    app.include_router(metrics.router)
    _mount_frontend(app, frontend_dir or FRONTEND_DIR)
    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn api.main:app`` builds the app on first access, not at import,
    # so importing this module (tests, the seam check) needs no settings.
    if name == "app":
        return create_app()
    raise AttributeError(name)
