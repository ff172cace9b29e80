"""One router per resource; each carries the API's version prefix itself, so a
route's template (``/api/v1/jobs/{job_id}``) is its full path, as metrics label it."""

API_PREFIX = "/api/v1"
