"""What the API answers is what its OpenAPI schema says (found by bench/fuzz_api.py).

Every error status a route can answer is documented with the body it really has;
a method a path does not take is a 405 naming the ones it does (not the
dashboard's 404); booleans and strings are not numbers in an evaluation request.
"""

from __future__ import annotations

import pytest

AUTHED = {"401", "404", "409", "413", "422"}


def _operations(app):
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_authed_operation_documents_its_errors(app):
    public = {"/api/v1/health", "/api/v1/health/ready", "/api/v1/catalog", "/metrics"}
    checked = 0
    for method, path, operation in _operations(app):
        if path in public:
            continue
        assert AUTHED <= set(operation["responses"]), (method, path)
        schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/FieldErrorsPublic"}, (method, path)
        checked += 1
    assert checked >= 12
    download = app.openapi()["paths"]["/api/v1/checkpoints/{checkpoint_id}/download"]["get"]
    assert "416" in download["responses"]


def test_a_422_body_has_the_documented_shape(client):
    response = client().get("/api/v1/jobs?limit=0")
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {"field": "limit", "message": "limit: input should be greater than or equal to 1"}
        ]
    }


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/v1/jobs/{id}/cancel", "POST"),
        ("GET", "/api/v1/jobs/{id}/resume", "POST"),
        ("PUT", "/api/v1/jobs/{id}", "DELETE, GET"),
        ("PUT", "/api/v1/jobs", "GET, POST"),
        ("PATCH", "/api/v1/checkpoints/{id}/download", "GET, HEAD"),
    ],
)
def test_a_method_the_path_does_not_take_is_405(client, make_job, method, path, allowed):
    job = make_job(client)
    url = path.replace("{id}", job["id"])
    response = client().request(method, url)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json() == {"detail": f"method {method} not allowed on {url}; use {allowed}"}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"eps": [False]}, "eps.0", "eps.0: input should be a valid number"),
        ({"eps": ["0.1"]}, "eps.0", "eps.0: input should be a valid number"),
        ({"eps": [0.1], "n": True}, "n", "n: input should be a valid integer"),
        ({"eps": [0.1], "n": "50"}, "n", "n: input should be a valid integer"),
    ],
)
def test_evaluation_numbers_are_not_coerced(client, make_job, body, field, message):
    job = make_job(client, status="succeeded")
    response = client().post(f"/api/v1/jobs/{job['id']}/evaluations", json=body)
    assert response.status_code == 422
    assert response.json() == {"detail": [{"field": field, "message": message}]}
