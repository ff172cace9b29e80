"""Bearer tokens: missing, malformed, unknown and revoked tokens are 401; the
embedded no-auth mode acts as the admin "local"; the admin CLI makes tokens."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.auth import auth_required, is_loopback
from api.main import create_app
from tests.service.conftest import BASE, TestClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token: send 'Authorization: Bearer <token>'"),
        (
            {"Authorization": "Token abc"},
            "malformed Authorization header: expected 'Bearer <token>'",
        ),
        ({"Authorization": "Bearer"}, "malformed Authorization header: expected 'Bearer <token>'"),
        ({"Authorization": "Bearer not-a-real-token"}, "invalid or revoked token"),
    ],
)
def test_bad_or_missing_token_is_401(client, headers, message):
    response = client(headers=headers).get("/api/v1/me")
    assert response.status_code == 401
    assert response.json() == {"detail": message}
    assert response.headers["www-authenticate"] == "Bearer"


def test_good_token_acts_as_its_user(client, alice):
    assert client(alice).get("/api/v1/me").json() == {
        "id": str(alice[0].id),
        "name": "alice",
        "is_admin": False,
    }


def test_auto_auth_is_off_only_on_loopback(settings):
    assert auth_required(settings.model_copy(update={"auth": "auto", "host": "127.0.0.1"})) is False
    assert auth_required(settings.model_copy(update={"auth": "auto", "host": "::1"})) is False
    assert auth_required(settings.model_copy(update={"auth": "auto", "host": "0.0.0.0"})) is True
    assert auth_required(settings.model_copy(update={"auth": "required", "host": "127.0.0.1"}))
    assert is_loopback("localhost") and not is_loopback("10.0.0.1")


def test_without_auth_requests_act_as_local_admin_and_bad_tokens_still_fail(settings, caplog):
    app = create_app(settings.model_copy(update={"auth": "auto", "host": "127.0.0.1"}))
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/api/v1/me").json()["name"] == "local"
        assert c.get("/api/v1/me").json()["is_admin"] is True
        assert c.get("/api/v1/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert "authentication is OFF" in caplog.text
    app.state.engine.dispose()


def _cli(settings, *args):
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "DYART_HOME": str(settings.home),
        "DYART_DATABASE_URL": settings.database_url,
        "DYART_BROKER_URL": settings.broker_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_admin_cli_creates_user_and_token_that_authenticates(settings, client):
    made = _cli(settings, "admin", "create-user", "dave", "--admin")
    assert made.returncode == 0, made.stderr
    again = _cli(settings, "admin", "create-user", "dave")
    assert again.returncode == 1 and "already exists" in again.stderr
    token = _cli(settings, "admin", "create-token", "dave")
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    c = client(headers={"Authorization": f"Bearer {secret}"})
    assert c.get("/api/v1/me").json()["name"] == "dave"
    assert "dave\tadmin" in _cli(settings, "admin", "list-users").stdout
    revoked = _cli(settings, "admin", "revoke-token", secret[:10])
    assert revoked.returncode == 0, revoked.stderr
    assert c.get("/api/v1/me").status_code == 401
    unknown = _cli(settings, "admin", "create-token", "nobody")
    assert unknown.returncode == 1 and "no user named 'nobody'" in unknown.stderr
