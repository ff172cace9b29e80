"""One error hierarchy for the API, mapped to HTTP statuses in one place.

Routes raise the domain errors below; :func:`install_error_handlers` turns each
base class into a status code and a message the caller can act on. Anything
else that escapes a route is a bug: it is logged with its traceback under a
short id, and the client gets the id only, never the stack.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from db.jobs import JobStateError
from dyart.errors import ConfigErrors

log = logging.getLogger("api")


class ApiError(Exception):
    """Base of the errors routes raise on purpose; ``status`` is its HTTP code."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def detail(self) -> Any:
        return self.message


class AuthMissingError(ApiError):
    """No usable bearer token on a request that needs one."""

    status = 401


class AuthOffExposedError(ApiError):
    """Authentication is off, but the request reached the server off loopback."""

    status = 403


class ResourceNotFoundError(ApiError):
    """Unknown id, or an id owned by another user (the two look the same)."""

    status = 404

    def __init__(self, kind: str, ident: object):
        super().__init__(f"{kind} {ident} not found")


class StateConflictError(ApiError):
    """The action does not fit the resource's current state (cancel a finished job)."""

    status = 409


class VersionReplacedError(ApiError):
    """A download asked for one version of a file (``sha256=``) that has been replaced."""

    status = 412


class RangeNotSatisfiableError(ApiError):
    """A Range header that asks for bytes outside the file."""

    status = 416

    def __init__(self, message: str, size: int):
        super().__init__(message)
        self.size = size


class PayloadTooLargeError(ApiError):
    """A request body over the configured limit."""

    status = 413


class TooMuchWorkError(ApiError):
    """The user already has as many jobs and evaluations queued or running as allowed."""

    status = 429


class FieldsInvalidError(ApiError):
    """One or more request fields are invalid; ``errors`` is [(field, message)]."""

    status = 422

    MAX_REPORTED = 50  # a small request must not get a multi-megabyte answer

    def __init__(self, errors: list[tuple[str, str]]):
        errors = list(errors)
        if len(errors) > self.MAX_REPORTED:
            more = len(errors) - self.MAX_REPORTED
            errors = errors[: self.MAX_REPORTED] + [
                ("body", f"body: {more} more invalid fields not listed; fix the ones above first")
            ]
        super().__init__("; ".join(message for _, message in errors))
        self.errors = errors

    def detail(self) -> Any:
        return [{"field": f, "message": m} for f, m in self.errors]


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_fields(exc: RequestValidationError) -> list[tuple[str, str]]:
    """Pydantic's errors as (field, "field: message") pairs, like the catalog's."""
    out = []
    for err in exc.errors():
        field = _field_name(tuple(err.get("loc", ())))
        message = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            field = "body"
            message = f"request body is not valid JSON ({err.get('ctx', {}).get('error', '')})"
        out.append((field, f"{field}: {message[0].lower()}{message[1:]}"))
    return out


def _encodable(detail: Any) -> Any:
    """``detail`` with every string made UTF-8 encodable (lone surrogates escaped)."""
    if isinstance(detail, str):
        return detail.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(detail, list):
        return [_encodable(item) for item in detail]
    if isinstance(detail, dict):
        return {key: _encodable(value) for key, value in detail.items()}
    return detail


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    headers = {}
    if isinstance(exc, AuthMissingError):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RangeNotSatisfiableError):
        headers["Content-Range"] = f"bytes */{exc.size}"
    body = {"detail": _encodable(exc.detail())}
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return await _api_error(request, FieldsInvalidError(validation_fields(exc)))


async def _config_invalid(request: Request, exc: ConfigErrors) -> JSONResponse:
    return await _api_error(request, FieldsInvalidError(exc.errors))


DATABASE_RETRY_SECONDS = 5


def database_down(exc: BaseException) -> bool:
    """Is ``exc`` the database being unreachable or busy (not a bug in a query)?"""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeoutError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """503 while the database cannot be reached; any other database error is a bug (500)."""
    if not database_down(exc):
        raise exc
    first_line = str(getattr(exc, "orig", None) or exc).strip().splitlines()[:1]
    log.warning(
        "database unavailable on %s %s: %s: %s",
        request.method, request.url.path, type(exc).__name__, " ".join(first_line),
    )  # fmt: skip
    detail = (
        "database unavailable: the service cannot reach its database right now; "
        f"try again in {DATABASE_RETRY_SECONDS} seconds"
    )
    headers = {"Retry-After": str(DATABASE_RETRY_SECONDS)}
    return JSONResponse({"detail": detail}, status_code=503, headers=headers)


async def _state_conflict(request: Request, exc: JobStateError) -> JSONResponse:
    return await _api_error(request, StateConflictError(str(exc)))


def _unparsable_body(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not parse a JSON body it called unparsable, when Python says."""
    if exc.status_code != 400 or exc.detail != "There was an error parsing the body":
        return None
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(cause, RecursionError):
        return "nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number has too many digits"  # Python's int() limit (4300 digits)
    return None


def _allowed_methods(request: Request) -> list[str]:
    """The methods the API's schema lists for this request's path (none: not an API path)."""
    path = request.scope.get("path", "")
    allowed: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if re.fullmatch(re.sub(r"\{[^/}]+\}", "[^/]+", template), path):
            allowed |= {method.upper() for method in operations}
    return sorted(allowed)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    reason = _unparsable_body(exc)
    if reason is not None:
        message = f"body: request body is not valid JSON ({reason})"
        return await _api_error(request, FieldsInvalidError([("body", message)]))
    # The dashboard is mounted at /, so an API path asked with a method it lacks
    # reaches the static files (a 404) instead of the router's 405: answer the 405.
    allowed = _allowed_methods(request) if exc.status_code in (404, 405) else []
    if allowed and request.method not in allowed:
        detail = (
            f"method {request.method} not allowed on {request.url.path}; use {', '.join(allowed)}"
        )
        return JSONResponse(
            {"detail": detail}, status_code=405, headers={"Allow": ", ".join(allowed)}
        )
    if exc.status_code == 404 and exc.detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}; see /docs"
    else:
        detail = exc.detail
    return JSONResponse(
        {"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


class InternalErrorMiddleware:
    """Turn an unexpected exception into a logged 500 that shows only an id.

    Starlette's own catch-all handler re-raises after answering, which logs the
    stack a second time; this one answers and stops there. A response that has
    already started (a stream) cannot be replaced, so it is only logged.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            ident = uuid.uuid4().hex[:12]
            path = scope.get("path", "")
            log.error("internal error %s on %s %s", ident, scope.get("method"), path, exc_info=exc)
            if not started:
                body = {"detail": "internal error", "id": ident}
                await JSONResponse(body, status_code=500)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Map every domain error base to its status; unknown errors to a logged 500."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(ConfigErrors, _config_invalid)
    app.add_exception_handler(JobStateError, _state_conflict)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeoutError, _database_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(InternalErrorMiddleware)
