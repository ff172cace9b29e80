"""The application as a whole: OpenAPI, errors, health, catalog, metrics, dashboard."""

import logging

from api.main import create_app
from tests.service.conftest import BASE, TestClient

ROUTES = {
    ("get", "/api/v1/health"),
    ("get", "/api/v1/health/ready"),
    ("get", "/api/v1/catalog"),
    ("get", "/api/v1/me"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs"),
    ("get", "/api/v1/jobs/{job_id}"),
    ("post", "/api/v1/jobs/{job_id}/cancel"),
    ("post", "/api/v1/jobs/{job_id}/resume"),
    ("get", "/api/v1/jobs/{job_id}/metrics"),
    ("get", "/api/v1/jobs/{job_id}/events"),
    ("get", "/api/v1/jobs/{job_id}/log"),
    ("get", "/api/v1/jobs/{job_id}/checkpoints"),
    ("get", "/api/v1/checkpoints/{checkpoint_id}/download"),
    ("get", "/api/v1/jobs/{job_id}/evaluations"),
    ("post", "/api/v1/jobs/{job_id}/evaluations"),
    ("get", "/metrics"),
}


def test_openapi_lists_every_route(client):
    spec = client().get("/openapi.json").json()
    served = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert ROUTES <= served
    assert "epochs" in spec["components"]["schemas"]["JobCreate"]["properties"]
    assert client().get("/docs").status_code == 200


def test_unexpected_error_is_500_without_stack_trace(app, client, caplog):
    def broken():
        raise RuntimeError("secret internal detail")

    app.add_api_route("/api/v1/broken", broken)
    app.router.routes.insert(0, app.router.routes.pop())  # before the dashboard's catch-all mount
    with caplog.at_level(logging.ERROR, logger="api"):
        response = client().get("/api/v1/broken")
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"detail", "id"} and body["detail"] == "internal error"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert body["id"] in caplog.text and "secret internal detail" in caplog.text


def test_unknown_route_is_404_with_a_hint(client):
    response = client().get("/api/v1/nothing")
    assert response.status_code == 404 and "/docs" in response.json()["detail"]


def test_health_and_readiness(client, settings):
    health = client().get("/api/v1/health").json()
    assert health["database"] == "ok" and health["version"]
    assert health["broker"] in ("ok", "unreachable")
    assert health["status"] == ("ok" if health["broker"] == "ok" else "degraded")
    assert client().get("/api/v1/health/ready").status_code == 200
    strict = client().get("/api/v1/health/ready?require_broker=true").status_code
    assert strict == (200 if health["broker"] == "ok" else 503)


def test_readiness_is_503_when_the_database_is_down(settings, tmp_path):
    gone = f"sqlite:///{tmp_path}/missing-dir/nothing.db"
    app = create_app(settings.model_copy(update={"database_url": gone}))
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/api/v1/health").status_code == 200
        assert c.get("/api/v1/health").json()["database"] == "unreachable"
        ready = c.get("/api/v1/health/ready")
        assert ready.status_code == 503 and ready.json()["database"] == "unreachable"
    app.state.engine.dispose()


def test_catalog_says_which_datasets_are_here(client):
    catalog = client().get("/api/v1/catalog").json()
    available = {d["name"]: d["available"] for d in catalog["datasets"]}
    assert available["digits"] is True and available["cifar10"] is False
    assert catalog["eval_presets"] == ["standard", "custom", "fast"]
    dyart = next(m for m in catalog["methods"] if m["name"] == "dyart")
    r0 = next(p for p in dyart["params"] if p["name"] == "r0")
    assert r0["max"] == 4.0


def test_prometheus_metrics_count_requests_and_jobs(client, make_job, root):
    make_job(client)
    make_job(client, status="running")
    client().get("/api/v1/jobs")
    text = client(headers={"Authorization": f"Bearer {root[1]}"}).get("/metrics").text
    assert 'dyart_jobs{status="queued"} 1.0' in text
    assert 'dyart_jobs{status="running"} 1.0' in text
    assert 'route="/api/v1/jobs"' in text and 'method="POST"' in text
    assert "dyart_http_request_seconds_bucket" in text


def test_dashboard_is_served_at_root(client, app, tmp_path, settings):
    assert client().get("/").status_code == 200
    folder = tmp_path / "frontend"
    folder.mkdir()
    (folder / "index.html").write_text("<html>dashboard here</html>")
    other = create_app(settings, frontend_dir=folder)
    with TestClient(other, base_url=BASE) as c:
        assert "dashboard here" in c.get("/").text
    other.state.engine.dispose()
