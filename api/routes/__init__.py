"""One router per resource; each carries the API's version prefix itself, so a
route's template (``/api/v1/jobs/{job_id}``) is its full path, as metrics label it."""

from typing import Any

from api.schemas import ErrorPublic, FieldErrorsPublic

API_PREFIX = "/api/v1"

_ERRORS: dict[int, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "missing, malformed or revoked token"},
    403: {
        "model": ErrorPublic,
        "description": "authentication is off and the request arrived beyond loopback",
    },
    404: {"model": ErrorPublic, "description": "no such id, or another user's"},
    409: {"model": ErrorPublic, "description": "not possible in the resource's state"},
    412: {
        "model": ErrorPublic,
        "description": "the version asked for (sha256=) has been replaced; download anew",
    },
    413: {"model": ErrorPublic, "description": "request body over the limit"},
    416: {"model": ErrorPublic, "description": "Range outside the file"},
    422: {"model": FieldErrorsPublic, "description": "invalid fields, each named"},
    429: {
        "model": ErrorPublic,
        "description": "as many jobs and evaluations queued or running as the server allows "
        "one user (DYART_MAX_ACTIVE_PER_USER)",
    },
    503: {"model": ErrorPublic, "description": "database unreachable; retry after Retry-After"},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses ``codes`` (as the handlers answer them)."""
    return {code: _ERRORS[code] for code in codes}


# Every route that needs a token and may read a body or an id.
AUTHED_ERRORS = error_responses(401, 403, 404, 409, 413, 422, 503)
