"""Bearer tokens: missing, malformed, unknown and revoked tokens are 401; the
embedded no-auth mode acts as the admin "local"; the admin CLI makes tokens."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.auth import arrived_beyond_loopback, auth_required, is_loopback
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


def _no_auth_client(settings, base_url):
    app = create_app(settings.model_copy(update={"auth": "auto", "host": "127.0.0.1"}))
    return app, TestClient(app, base_url=base_url)


@pytest.mark.parametrize(
    "base_url", ["http://0.0.0.0:8000", "http://192.0.2.1:8000", "http://[2001:db8::1]:8000"]
)
def test_without_auth_a_request_arriving_beyond_loopback_is_403(settings, alice, base_url):
    """``uvicorn --host 0.0.0.0`` with the default settings: the requests that arrive on
    a network address must not act as the admin."""
    app, c = _no_auth_client(settings, base_url)
    with c:
        response = c.get("/api/v1/me")
        assert response.status_code == 403
        detail = response.json()["detail"]
        assert detail.startswith("authentication is off")
        assert "beyond loopback" in detail and "DYART_AUTH=required" in detail
        jobs = c.post("/api/v1/jobs", json={"dataset": "digits", "architecture": "mlp"})
        assert jobs.status_code == 403
        with_token = c.get("/api/v1/me", headers={"Authorization": f"Bearer {alice[1]}"})
        assert with_token.status_code == 403
        assert c.get("/api/v1/health").status_code == 200  # public in every mode
    app.state.engine.dispose()


@pytest.mark.parametrize(
    "header",
    [
        ("X-Forwarded-For", "203.0.113.9"),
        ("Forwarded", "for=203.0.113.9;proto=https"),
        ("X-Real-IP", "203.0.113.9"),
        ("x-forwarded-host", "dyart.example.org"),
    ],
)
def test_without_auth_a_request_through_a_proxy_on_loopback_is_403(settings, header):
    """nginx on the same host forwards every request from 127.0.0.1: the proxy's
    headers say that it came from beyond, and it must not act as the admin."""
    app, c = _no_auth_client(settings, "http://127.0.0.1:8000")
    with c:
        response = c.get("/api/v1/me", headers=dict([header]))
        assert response.status_code == 403
        detail = response.json()["detail"]
        assert detail.startswith("authentication is off")
        assert f"came through a proxy (it carries {header[0].lower()})" in detail, detail
        assert "DYART_AUTH=required" in detail
        assert c.get("/api/v1/jobs", headers=dict([header])).status_code == 403
        assert c.get("/api/v1/me").json()["name"] == "local"  # straight from loopback: fine
    app.state.engine.dispose()


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8000", "http://127.8.9.10:8000", "http://[::1]:8000", BASE],
)
def test_without_auth_a_request_arriving_on_loopback_acts_as_local(settings, base_url):
    app, c = _no_auth_client(settings, base_url)
    with c:
        assert c.get("/api/v1/me").json()["name"] == "local"
    app.state.engine.dispose()


def test_with_auth_a_request_arriving_beyond_loopback_uses_its_token(app, alice):
    with TestClient(app, base_url="http://192.0.2.1:8000") as c:
        assert c.get("/api/v1/me").status_code == 401
        me = c.get("/api/v1/me", headers={"Authorization": f"Bearer {alice[1]}"})
        assert me.json()["name"] == "alice"


@pytest.mark.parametrize(
    ("server", "beyond"),
    [
        (("192.0.2.1", 8000), "192.0.2.1"),
        (("::ffff:192.0.2.1", 8000), "::ffff:192.0.2.1"),
        (("fe80::1%eth0", 8000), "fe80::1%eth0"),
        (("::ffff:127.0.0.1", 8000), None),  # loopback on a dual-stack socket
        (("127.0.0.1", 8000), None),
        (("/run/dyart.sock", None), None),  # a Unix socket
        (("testserver", 80), None),  # an in-process client
        (None, None),
    ],
)
def test_arrived_beyond_loopback_reads_the_servers_address(server, beyond):
    assert arrived_beyond_loopback(server) == beyond


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
    assert revoked.stdout.strip() == f"revoked 1 token(s) of dave starting with {secret[:10]}"
    assert c.get("/api/v1/me").status_code == 401
    unknown = _cli(settings, "admin", "create-token", "nobody")
    assert unknown.returncode == 1 and "no user named 'nobody'" in unknown.stderr


def test_a_lost_token_is_found_by_its_user_and_revoked_with_the_others(settings, client):
    assert _cli(settings, "admin", "create-user", "erin").returncode == 0
    assert _cli(settings, "admin", "create-user", "fred").returncode == 0
    lost, spare = (_cli(settings, "admin", "create-token", "erin").stdout.strip() for _ in "ab")
    fred = _cli(settings, "admin", "create-token", "fred").stdout.strip()
    listed = _cli(settings, "admin", "list-tokens", "erin")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0] == "prefix\tstate\tcreated\tlast used" and len(lines) == 3
    assert all(line.split("\t")[1] == "active" for line in lines[1:])
    assert lost not in listed.stdout and fred[:8] not in listed.stdout  # prefixes only, hers
    erin = client(headers={"Authorization": f"Bearer {lost}"})
    assert erin.get("/api/v1/me").status_code == 200
    assert _cli(settings, "admin", "list-tokens", "erin").stdout.count("\t-") == 1  # used once
    revoked = _cli(settings, "admin", "revoke-token", "--user", "erin")
    assert revoked.returncode == 0 and "revoked 2 active token(s) of erin" in revoked.stdout
    for token, status in ((lost, 401), (spare, 401), (fred, 200)):
        c = client(headers={"Authorization": f"Bearer {token}"})
        assert c.get("/api/v1/me").status_code == status
    assert _cli(settings, "admin", "list-tokens", "erin").stdout.count("revoked ") == 2
    neither = _cli(settings, "admin", "revoke-token")
    assert neither.returncode == 1 and "give a token prefix or --user NAME" in neither.stderr


def test_a_token_made_to_expire_works_until_then_and_then_says_it_expired(
    settings, client, session_factory
):
    from db.models import ApiToken

    assert _cli(settings, "admin", "create-user", "gina").returncode == 0
    bad = _cli(settings, "admin", "create-token", "gina", "--days", "0")
    assert bad.returncode == 1
    assert "--days: expected a number of days above 0 (at most 36500), got 0" in bad.stderr
    made = _cli(settings, "admin", "create-token", "gina", "--days", "30")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    gina = client(headers={"Authorization": f"Bearer {token}"})
    assert gina.get("/api/v1/me").json()["name"] == "gina"
    [row] = _cli(settings, "admin", "list-tokens", "gina").stdout.strip().splitlines()[1:]
    assert row.split("\t")[1].startswith("active until ")
    with session_factory() as session:  # 30 days later
        session.query(ApiToken).update({"expires_at": datetime.now(UTC) - timedelta(minutes=1)})
        session.commit()
    expired = gina.get("/api/v1/me")
    assert expired.status_code == 401
    detail = expired.json()["detail"]
    assert detail.startswith("token expired on ") and detail.endswith(
        " UTC: ask an admin for a new one (dyart-service admin create-token)"
    ), detail
    [row] = _cli(settings, "admin", "list-tokens", "gina").stdout.strip().splitlines()[1:]
    assert row.split("\t")[1].startswith("expired ")
    unknown = client(headers={"Authorization": "Bearer dyart_nothing"}).get("/api/v1/me")
    assert unknown.json() == {"detail": "invalid or revoked token"}


def test_admin_rights_are_given_and_taken_away_from_the_command_line(
    settings, client, make_job, alice, make_user
):
    """An admin sees every user's jobs; once the rights are taken away, the same token
    sees only its own (the next request, no restart)."""
    job = make_job(client)  # alice's
    hugo = make_user("hugo")
    as_hugo = client(hugo)
    assert as_hugo.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    given = _cli(settings, "admin", "set-admin", "hugo", "yes")
    assert given.returncode == 0, given.stderr
    assert given.stdout.strip() == "hugo is now an admin (sees every user's jobs)"
    assert as_hugo.get("/api/v1/me").json()["is_admin"] is True
    assert as_hugo.get(f"/api/v1/jobs/{job['id']}").status_code == 200
    assert [j["id"] for j in as_hugo.get("/api/v1/jobs").json()["items"]] == [job["id"]]
    again = _cli(settings, "admin", "set-admin", "hugo", "yes")
    assert again.stdout.strip() == "hugo was already an admin (sees every user's jobs)"
    assert "hugo\tadmin\t" in _cli(settings, "admin", "list-users").stdout

    taken = _cli(settings, "admin", "set-admin", "hugo", "no")
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.strip() == "hugo is now a user (sees only their own jobs)"
    assert as_hugo.get("/api/v1/me").json()["is_admin"] is False
    assert as_hugo.get(f"/api/v1/jobs/{job['id']}").status_code == 404
    assert as_hugo.get("/api/v1/jobs").json()["items"] == []
    assert client(alice).get(f"/api/v1/jobs/{job['id']}").status_code == 200  # hers, still

    unknown = _cli(settings, "admin", "set-admin", "nobody", "no")
    assert unknown.returncode == 1 and "no user named 'nobody'" in unknown.stderr
    wrong = _cli(settings, "admin", "set-admin", "hugo", "maybe")
    assert wrong.returncode == 2 and "invalid choice: 'maybe'" in wrong.stderr
