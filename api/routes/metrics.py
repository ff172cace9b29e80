"""Prometheus metrics at /metrics: requests by route, jobs by status, workers by queue.

Each app has its own registry (tests build many apps in one process). The
jobs gauge is read from the database when Prometheus scrapes, so it is never
stale and costs one grouped COUNT per scrape.

Who may read it: on a server that requires tokens (``DYART_AUTH=required``, or
``auto`` off loopback), a scrape sends ``DYART_METRICS_TOKEN`` (the scraper's own
secret) or an admin's API token as a bearer token; another user's token does not
open it, since the counts are every user's. Without auth (the embedded mode on
loopback) it is open, unless ``DYART_METRICS_TOKEN`` is set: then only that token.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response, Security
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from api.deps import BEARER
from api.errors import AuthMissingError
from api.routes import error_responses
from db import tokens, workers
from db.models import Job

router = APIRouter(tags=["metrics"])
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


class JobsByStatusCollector:
    """``dyart_jobs{status=...}``, counted in the database on every scrape."""

    def __init__(self, app: Any):
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("dyart_jobs", "Jobs by status", labels=["status"])
        counts = dict.fromkeys(JOB_STATUSES, 0)
        try:
            with self.app.state.session_factory() as session:
                rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
                counts.update({str(status): n for status, n in rows})
        except Exception:  # a scrape must not fail because the DB blinked
            return
        for status, n in counts.items():
            gauge.add_metric([status], n)
        yield gauge


class WorkersCollector:
    """``dyart_workers{queue=...}``: workers seen within their last 3 beats, per queue
    (alert on 0 for the API's queue: its queued jobs wait)."""

    def __init__(self, app: Any):
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("dyart_workers", "Workers present, by queue", labels=["queue"])
        counts = {self.app.state.settings.worker_queue: 0}
        try:
            with self.app.state.session_factory() as session:
                for row in workers.present(session):
                    counts[row.queue] = counts.get(row.queue, 0) + 1
        except Exception:  # a scrape must not fail because the DB blinked
            return
        for queue, n in sorted(counts.items()):
            gauge.add_metric([queue], n)
        yield gauge


def make_registry(app: Any) -> CollectorRegistry:
    """A fresh registry with the request metrics and the jobs collector."""
    registry = CollectorRegistry()
    app.state.request_count = Counter(
        "dyart_http_requests",
        "HTTP requests by route template, method and status",
        ["route", "method", "status"],
        registry=registry,
    )
    app.state.request_latency = Histogram(
        "dyart_http_request_seconds",
        "HTTP request latency by route template",
        ["route", "method"],
        registry=registry,
    )
    registry.register(JobsByStatusCollector(app))
    registry.register(WorkersCollector(app))
    return registry


class RequestMetricsMiddleware:
    """Count and time each request under its route template, not its raw path."""

    def __init__(self, app: Any, registry: CollectorRegistry):
        self.app = app
        self.registry = registry

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            state = scope["app"].state
            state.request_count.labels(label, scope["method"], str(status)).inc()
            state.request_latency.labels(label, scope["method"]).observe(
                time.perf_counter() - start
            )


def require_metrics_token(request: Request) -> None:
    """401 unless the request may read the metrics (see the module's docstring)."""
    expected = request.app.state.settings.metrics_token
    users = bool(request.app.state.auth_required)  # an admin's token opens it too
    if expected is None and not users:
        return
    what = " or ".join(
        part
        for part, offered in (
            ("the DYART_METRICS_TOKEN bearer token", expected is not None),
            ("an admin's API token", users),
        )
        if offered
    )
    header = request.headers.get("authorization")
    if header is None:
        raise AuthMissingError(
            f"missing bearer token: /metrics needs {what}, sent as 'Authorization: Bearer <token>'"
        )
    scheme, _, given = header.strip().partition(" ")
    # Starlette decodes header values as latin-1: encoding back gives the bytes sent.
    sent = given.strip().encode("latin-1")
    bearer = scheme.lower() == "bearer"
    if bearer and expected is not None and hmac.compare_digest(sent, expected.encode("ascii")):
        return
    if bearer and users and sent and sent.isascii():
        with request.app.state.session_factory() as session:
            user = tokens.user_for_token(session, sent.decode("ascii"))
            if user is not None and user.is_admin:
                return
    raise AuthMissingError(
        f"wrong bearer token: /metrics needs {what} (other users' tokens do not open it)"
    )


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Security(BEARER), Depends(require_metrics_token)],
    responses=error_responses(401),  # with tokens required, or DYART_METRICS_TOKEN set
)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
