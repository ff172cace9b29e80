"""Who reads /metrics: with tokens required, DYART_METRICS_TOKEN or an admin's API
token (never another user's); without auth, anyone on loopback until the
DYART_METRICS_TOKEN is set, then only that token."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.main import create_app
from db.settings import Settings, reset_settings, settings_error_lines
from tests.service.conftest import BASE, SMALL_JOB, TestClient

METRICS_TOKEN = "scrape-3f9a1c7e5b2d4086"
NEEDS_TOKEN = "/metrics needs the DYART_METRICS_TOKEN bearer token or an admin's API token"


@pytest.fixture
def scraped_app(settings, monkeypatch):
    """The API as `uvicorn api.main:app` builds it from an environment that sets the token."""
    monkeypatch.setenv("DYART_AUTH", "required")
    monkeypatch.setenv("DYART_METRICS_TOKEN", METRICS_TOKEN)
    reset_settings()
    app = create_app()
    yield app
    app.state.engine.dispose()


@pytest.fixture
def scrape(scraped_app):
    """``scrape(headers)``: GET /metrics of the token-protected app with those headers."""
    clients: list[TestClient] = []

    def get(headers: dict[str, str | bytes] | None = None):
        c = TestClient(scraped_app, base_url=BASE, raise_server_exceptions=False)
        clients.append(c)
        return c.get("/metrics", headers=headers or {})

    yield get
    for c in clients:
        c.close()


def test_metrics_are_open_without_auth_and_without_the_setting(settings):
    embedded = create_app(settings.model_copy(update={"auth": "off"}))
    try:
        assert embedded.state.settings.metrics_token is None
        with TestClient(embedded, base_url=BASE) as anonymous:
            response = anonymous.get("/metrics")
        assert response.status_code == 200
        assert 'dyart_jobs{status="queued"} 0.0' in response.text
    finally:
        embedded.state.engine.dispose()


def test_with_tokens_required_only_an_admin_reads_the_metrics(app, alice, root):
    """Every user's counts are in them: not for a user's token, nor for nobody's."""
    assert app.state.settings.metrics_token is None
    with TestClient(app, base_url=BASE) as c:
        anonymous = c.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.json()["detail"] == (
            "missing bearer token: /metrics needs an admin's API token, "
            "sent as 'Authorization: Bearer <token>'"
        )
        user = c.get("/metrics", headers={"Authorization": f"Bearer {alice[1]}"})
        assert user.status_code == 401
        assert user.json()["detail"] == (
            "wrong bearer token: /metrics needs an admin's API token "
            "(other users' tokens do not open it)"
        )
        assert "dyart_jobs" not in user.text
        admin = c.get("/metrics", headers={"Authorization": f"Bearer {root[1]}"})
        assert admin.status_code == 200, admin.text
        assert 'dyart_jobs{status="queued"} 0.0' in admin.text


def test_metrics_refuse_a_scrape_without_a_token(scrape):
    response = scrape()
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert NEEDS_TOKEN in response.json()["detail"]
    assert "dyart_jobs" not in response.text


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {METRICS_TOKEN}x",
        f"Bearer {METRICS_TOKEN[:-1]}",
        "Bearer wrong",
        f"Basic {METRICS_TOKEN}",
        "Bearer",
        f"Bearer {METRICS_TOKEN}é".encode(),  # bytes beyond ASCII: still just wrong
    ],
)
def test_metrics_refuse_a_wrong_token(scrape, authorization):
    response = scrape({"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {
        "detail": f"wrong bearer token: {NEEDS_TOKEN} (other users' tokens do not open it)"
    }


def test_metrics_refuse_a_user_api_token_and_open_to_an_admins(scraped_app, scrape, alice, root):
    response = scrape({"Authorization": f"Bearer {alice[1]}"})
    assert response.status_code == 401
    assert NEEDS_TOKEN in response.json()["detail"]
    assert scrape({"Authorization": f"Bearer {root[1]}"}).status_code == 200
    # the user's token still opens the API, and the scrape token does not
    with TestClient(scraped_app, base_url=BASE) as c:
        assert c.get("/api/v1/me", headers={"Authorization": f"Bearer {alice[1]}"}).is_success
        me = c.get("/api/v1/me", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert me.status_code == 401


def test_metrics_answer_the_right_token(scraped_app, scrape, alice):
    with TestClient(scraped_app, base_url=BASE) as user:
        user.headers["Authorization"] = f"Bearer {alice[1]}"
        assert user.post("/api/v1/jobs", json=SMALL_JOB).status_code == 201
    for authorization in (f"Bearer {METRICS_TOKEN}", f"bearer  {METRICS_TOKEN} "):
        response = scrape({"Authorization": authorization})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert 'dyart_jobs{status="queued"} 1.0' in response.text
    # the refused scrapes are counted like any request
    scrape()
    text = scrape({"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert 'dyart_http_requests_total{method="GET",route="/metrics",status="401"} 1.0' in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "DYART_METRICS_TOKEN is empty"),
        ("two words", "visible ASCII characters without spaces"),
        (" padded", "visible ASCII characters without spaces"),
        ("tökén", "visible ASCII characters without spaces"),
    ],
)
def test_an_unusable_metrics_token_is_refused_at_start(value, message, monkeypatch, tmp_path):
    # refused rather than taken as unset: an empty `DYART_METRICS_TOKEN=${VAR}` would
    # otherwise leave /metrics open while the operator believes it is closed
    monkeypatch.setenv("DYART_METRICS_TOKEN", value)
    with pytest.raises(ValidationError) as caught:
        Settings(home=tmp_path)
    (line,) = settings_error_lines(caught.value)
    assert line.startswith("DYART_METRICS_TOKEN is not valid: ") and message in line
    if value.strip():
        assert value not in line  # a secret: never echoed


def test_metrics_token_is_read_from_the_environment_and_kept_out_of_repr(monkeypatch, tmp_path):
    monkeypatch.setenv("DYART_METRICS_TOKEN", METRICS_TOKEN)
    settings = Settings(home=tmp_path)
    assert settings.metrics_token == METRICS_TOKEN
    assert METRICS_TOKEN not in repr(settings)
    monkeypatch.delenv("DYART_METRICS_TOKEN")
    assert Settings(home=tmp_path).metrics_token is None
