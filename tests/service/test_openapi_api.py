"""The OpenAPI document at /openapi.json (what /docs shows): the bearer scheme on
every operation that needs a token and on no other, and each 422 in the shape the
error handlers really answer."""

from __future__ import annotations

from tests.service.conftest import BASE, TestClient

ANY_ID = "0" * 32  # well formed, names nothing: a token-less request must still be 401
FIELD_ERRORS = {"$ref": "#/components/schemas/FieldErrorsPublic"}


def _operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def _bearer_scheme(spec) -> str:
    schemes = spec["components"]["securitySchemes"]
    (name,) = [n for n, s in schemes.items() if s["type"] == "http" and s["scheme"] == "bearer"]
    return name


def test_openapi_declares_the_bearer_token_scheme(client):
    spec = client().get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"][_bearer_scheme(spec)]
    assert "create-token" in scheme["description"]


def test_operations_list_the_scheme_exactly_when_they_answer_401_without_a_token(app):
    spec = app.openapi()
    bearer = [{_bearer_scheme(spec): []}]
    anonymous = TestClient(app, base_url=BASE, raise_server_exceptions=False)
    protected, public = set(), set()
    for method, path, operation in _operations(spec):
        url = path.replace("{job_id}", ANY_ID).replace("{checkpoint_id}", ANY_ID)
        status = anonymous.request(method, url).status_code
        (protected if status == 401 else public).add(path)
        assert operation.get("security") == (bearer if status == 401 else None), (method, path)
    anonymous.close()
    assert public == {"/api/v1/health", "/api/v1/health/ready", "/api/v1/catalog"}
    download = "/api/v1/checkpoints/{checkpoint_id}/download"
    assert {"/api/v1/me", "/api/v1/jobs", download, "/metrics"} <= protected


def test_readiness_documents_the_422_it_answers(client):
    spec = client().get("/openapi.json").json()
    ready = spec["paths"]["/api/v1/health/ready"]["get"]["responses"]
    schema = ready["422"]["content"]["application/json"]["schema"]
    assert schema == FIELD_ERRORS
    response = client().get("/api/v1/health/ready?require_broker=maybe")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert set(error) == set(spec["components"]["schemas"]["FieldErrorPublic"]["properties"])
    assert error["field"] == "require_broker"


def test_every_documented_422_is_the_field_errors_shape(client):
    spec = client().get("/openapi.json").json()
    wrong = [
        (method, path)
        for method, path, operation in _operations(spec)
        if "422" in operation["responses"]
        and operation["responses"]["422"]["content"]["application/json"]["schema"] != FIELD_ERRORS
    ]
    assert wrong == []
