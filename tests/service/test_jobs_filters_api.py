"""The job list's filters: a value no job can have (a typo) is a 422 naming the
field and the allowed values, never an empty page."""

from __future__ import annotations

import pytest

from db.models import JOB_STATUSES
from dyart import catalog

CHOICES = {
    "status": ", ".join(JOB_STATUSES),
    "method": ", ".join(catalog.METHODS),
    "dataset": ", ".join(catalog.DATASETS),
}


def _errors(response) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text
    return [(e["field"], e["message"]) for e in response.json()["detail"]]


def test_a_misspelt_status_is_422_listing_the_lifecycle(client, make_job):
    make_job(client, status="running")
    response = client().get("/api/v1/jobs?status=runing")
    assert _errors(response) == [
        ("status", "status: 'runing' is not one of queued, running, succeeded, failed, canceled")
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "Running"),
        ("method", "pgd"),
        ("method", "PGD_AT"),
        ("dataset", "cifar"),
        ("dataset", "mnist"),
    ],
)
def test_an_unknown_filter_value_is_422_naming_the_field_and_choices(client, field, value):
    response = client().get("/api/v1/jobs", params={field: value})
    assert _errors(response) == [(field, f"{field}: {value!r} is not one of {CHOICES[field]}")]


def test_every_bad_filter_is_named_at_once(client):
    response = client().get("/api/v1/jobs?status=done&method=clean&dataset=imagenet")
    assert [field for field, _ in _errors(response)] == ["status", "dataset"]


@pytest.mark.parametrize(
    "query", ["status=canceled", "method=mart", "dataset=tiny_imagenet", "status=&method=&dataset="]
)
def test_a_known_value_or_an_empty_filter_still_answers_a_page(client, make_job, query):
    make_job(client)
    page = client().get(f"/api/v1/jobs?{query}")
    assert page.status_code == 200, page.text
    assert page.json()["total"] == (1 if query.startswith("status=&") else 0)


def test_the_filters_document_their_choices(client):
    spec = client().get("/openapi.json").json()
    params = {p["name"]: p["schema"] for p in spec["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    assert params["status"]["enum"] == list(JOB_STATUSES)
    assert params["method"]["enum"] == list(catalog.METHODS)
    assert params["dataset"]["enum"] == list(catalog.DATASETS)
