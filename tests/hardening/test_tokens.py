"""Bearer tokens under attack: missing, malformed, unknown, revoked, another user's.

Each is answered with an exact status and message; a token is never taken from
the query string; another user's job or checkpoint is a 404 exactly like an id
that does not exist, on every route, and is left untouched.
"""

from __future__ import annotations

import pytest

from db import tokens
from db.models import Job

PUBLIC = {"/api/v1/health", "/api/v1/health/ready", "/api/v1/catalog"}
MISSING = "missing bearer token: send 'Authorization: Bearer <token>'"
# /metrics holds every user's counts: it takes an admin's token (test_metrics_token.py)
METRICS_MISSING = (
    "missing bearer token: /metrics needs an admin's API token, "
    "sent as 'Authorization: Bearer <token>'"
)
METRICS_WRONG = (
    "wrong bearer token: /metrics needs an admin's API token (other users' tokens do not open it)"
)
MALFORMED = "malformed Authorization header: expected 'Bearer <token>'"
INVALID = "invalid or revoked token"


def _routes(app):
    for path, item in app.openapi()["paths"].items():
        for method in item:
            yield method.upper(), path


def _fill(path: str, ident: str = "0" * 32) -> str:
    return path.replace("{job_id}", ident).replace("{checkpoint_id}", ident)


def test_every_route_but_health_and_catalog_needs_a_token(app, client):
    anonymous = client(headers={})
    routes = list(_routes(app))
    assert len(routes) >= 14
    for method, path in routes:
        response = anonymous.request(method, _fill(path), json={})
        if path in PUBLIC:
            assert response.status_code in (200, 503), (method, path)
            continue
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        if method != "HEAD":  # a HEAD answer has no body
            assert response.json() == {"detail": METRICS_MISSING if path == "/metrics" else MISSING}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", MALFORMED),
        ("Bearer", MALFORMED),
        ("Bearer    ", MALFORMED),
        ("Basic YWxpY2U6cGFzc3dvcmQ=", MALFORMED),
        ("Token {token}", MALFORMED),
        ("{token}", MALFORMED),
        ("Bearer {token} {token}", MALFORMED),
        ("Bearer {token}x", INVALID),
        ("Bearer {token_short}", INVALID),
        ("Bearer dyart_", INVALID),
        ("Bearer " + "A" * 20000, INVALID),
        ("Bearer ' OR '1'='1", MALFORMED),
        ("Bearer '--", INVALID),
    ],
)
def test_malformed_or_unknown_token_is_401_with_its_reason(client, alice, header, message):
    _, token = alice
    value = header.format(token=token, token_short=token[:-1])
    response = client(headers={"Authorization": value}).get("/api/v1/me")
    assert response.status_code == 401
    assert response.json() == {"detail": message}
    assert response.headers["www-authenticate"] == "Bearer"


def test_non_ascii_token_bytes_are_401_not_500(client):
    raw = "Bearer t\u00f6k\u00e9n".encode()  # UTF-8 bytes; the server reads latin-1
    response = client(headers={"Authorization": raw}).get("/api/v1/me")
    assert response.status_code == 401
    assert response.json() == {"detail": INVALID}


def test_lowercase_scheme_and_padding_are_accepted(client, alice):
    _, token = alice
    response = client(headers={"Authorization": f"  bearer   {token}  "}).get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["name"] == "alice"


@pytest.mark.parametrize("param", ["token", "access_token", "api_key"])
def test_token_in_the_query_string_is_not_accepted(client, alice, param):
    _, token = alice
    response = client(headers={}).get(f"/api/v1/me?{param}={token}")
    assert response.status_code == 401
    assert response.json() == {"detail": MISSING}


def test_anonymous_bad_body_is_401_not_a_field_report(client):
    response = client(headers={}).post("/api/v1/jobs", json={"dataset": "nope", "epochs": -1})
    assert response.status_code == 401
    assert response.json() == {"detail": MISSING}


def test_revoked_token_is_401_on_every_route_and_other_tokens_still_work(
    app, client, alice, make_job, session_factory
):
    user, token = alice
    job = make_job(client)
    with session_factory(expire_on_commit=False) as session:
        spare = tokens.create_token(session, session.merge(user))
        session.commit()
        assert tokens.revoke_token(session, token[: tokens.PREFIX_LENGTH]) == 1
        session.commit()
    revoked = client(headers={"Authorization": f"Bearer {token}"})
    for method, path in _routes(app):
        if path in PUBLIC:
            continue
        response = revoked.request(method, _fill(path, job["id"]), json={})
        assert response.status_code == 401, (method, path)
        if method != "HEAD":  # a HEAD answer has no body
            assert response.json() == {"detail": METRICS_WRONG if path == "/metrics" else INVALID}
    still = client(headers={"Authorization": f"Bearer {spare}"}).get(f"/api/v1/jobs/{job['id']}")
    assert still.status_code == 200


def test_another_users_token_sees_404_everywhere_and_changes_nothing(
    app, client, alice, bob, make_job, session_factory
):
    job = make_job(client)
    for method, path in _routes(app):
        if "{job_id}" not in path:
            continue
        body = {"eps": [0.1]} if path.endswith("/evaluations") else None
        response = client(bob).request(method, _fill(path, job["id"]), json=body)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": f"job {job['id']} not found"}
    assert client(bob).get("/api/v1/jobs").json()["total"] == 0
    with session_factory() as session:
        row = session.get(Job, job["id"])
        assert (row.status, row.cancel_requested) == ("queued", False)
