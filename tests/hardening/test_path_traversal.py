"""Path traversal through every id and file name the API takes.

Job ids, checkpoint ids and the download ``format`` come from the request; file
paths come only from checkpoint rows. Every hostile value is answered 404 (or 422
for ``format``) with an exact message, and no byte of a file outside the artifact
store ever comes back: not through the API, a tampered row, a symlink, nor the
dashboard's static files.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import unquote

import pytest

from db.models import Checkpoint
from tests.hardening.conftest import SECRET

ROOT = Path(__file__).resolve().parents[2]

# (segment as sent, the id the route sees once decoded). Starlette's TestClient decodes
# a path twice, so double-encoded segments are sent to the live server (RAW_TARGETS).
HOSTILE_IDS = [
    ("%2e%2e", ".."),
    ("..%5C..%5Csecret.txt", "..\\..\\secret.txt"),
    ("%00", "\x00"),
    ("%2e%2e%00", "..\x00"),
    ("ABCDEF0123456789ABCDEF0123456789", "ABCDEF0123456789ABCDEF0123456789"),
    ("f" * 31, "f" * 31),
    ("a" * 4000, "a" * 4000),
    ("secret.txt", "secret.txt"),
]
# Segments that decode to a slash: the path has more parts and matches no route.
SLASHED = ["..%2f..%2fsecret.txt", "%2e%2e%2f%2e%2e%2fsecret.txt", "%2Fetc%2Fpasswd", "%2F"]

JOB_ROUTES = [
    ("GET", "/api/v1/jobs/{}"),
    ("GET", "/api/v1/jobs/{}/metrics"),
    ("GET", "/api/v1/jobs/{}/log"),
    ("GET", "/api/v1/jobs/{}/checkpoints"),
    ("GET", "/api/v1/jobs/{}/evaluations"),
    ("GET", "/api/v1/jobs/{}/events"),
    ("POST", "/api/v1/jobs/{}/cancel"),
    ("POST", "/api/v1/jobs/{}/resume"),
    ("POST", "/api/v1/jobs/{}/evaluations"),
]
DOWNLOAD = "/api/v1/checkpoints/{}/download"


def _send(c, method, url):
    body = {"eps": [0.1]} if url.endswith("/evaluations") and method == "POST" else None
    return c.request(method, url, json=body)


def _no_secret(response):
    assert SECRET not in response.content
    assert b"SQLite format 3" not in response.content


@pytest.mark.parametrize(("sent", "seen"), HOSTILE_IDS)
@pytest.mark.parametrize(("method", "template"), JOB_ROUTES)
def test_hostile_job_id_is_404_naming_the_job(client, secret, method, template, sent, seen):
    response = _send(client(), method, template.format(sent))
    assert response.status_code == 404
    assert response.json() == {"detail": f"job {seen} not found"}
    _no_secret(response)


@pytest.mark.parametrize(("sent", "seen"), HOSTILE_IDS)
def test_hostile_checkpoint_id_is_404_naming_the_checkpoint(client, stored_checkpoint, sent, seen):
    response = client().get(DOWNLOAD.format(sent))
    assert response.status_code == 404
    assert response.json() == {"detail": f"checkpoint {seen} not found"}
    _no_secret(response)


@pytest.mark.parametrize("sent", SLASHED)
@pytest.mark.parametrize(("method", "template"), [*JOB_ROUTES, ("GET", DOWNLOAD)])
def test_id_decoding_to_a_slash_matches_no_route(client, secret, method, template, sent):
    url = template.format(sent)
    response = _send(client(), method, url)
    if method == "GET":
        assert response.status_code == 404
        assert response.json() == {"detail": f"no route GET {unquote(url)}; see /docs"}
    else:  # the dashboard's static files, mounted at /, answer other paths: GET only
        assert response.status_code == 405
        assert response.json() == {"detail": "Method Not Allowed"}
    _no_secret(response)


@pytest.mark.parametrize(
    "fmt", ["../../secret.txt", "..%2F..%2Fsecret.txt", "/etc/passwd", "safetensors/../card", ""]
)
def test_hostile_download_format_is_422_naming_the_field(client, stored_checkpoint, fmt):
    url = DOWNLOAD.format(stored_checkpoint["id"]) + f"?format={fmt}"
    response = client().get(url)
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "field": "format",
                "message": "format: input should be 'safetensors', 'card', 'robustbench' "
                "or 'robustbench_entry'",
            }
        ]
    }


def _tamper(app, checkpoint_id, **values):
    with app.state.session_factory() as session:
        row = session.get(Checkpoint, checkpoint_id)
        for key, value in values.items():
            setattr(row, key, value)
        session.commit()


@pytest.mark.parametrize(
    ("column", "fmt", "value"),
    [
        ("path", "safetensors", "../secret.txt"),
        ("path", "safetensors", "jobs/../../secret.txt"),
        ("path", "safetensors", "ABSOLUTE"),
        ("card_path", "card", "../secret.txt"),
        ("card_path", "card", "ABSOLUTE"),
        ("robustbench_path", "robustbench", "../secret.txt"),
        ("robustbench_path", "robustbench", "ABSOLUTE"),
    ],
)
def test_row_pointing_outside_the_store_is_neither_listed_nor_served(
    app, client, stored_checkpoint, secret, column, fmt, value
):
    _tamper(app, stored_checkpoint["id"], **{column: str(secret) if value == "ABSOLUTE" else value})
    job_id = stored_checkpoint["job"]["id"]
    [listed] = client().get(f"/api/v1/jobs/{job_id}/checkpoints").json()["items"]
    assert fmt not in listed["files"]
    response = client().get(DOWNLOAD.format(stored_checkpoint["id"]) + f"?format={fmt}")
    assert response.status_code == 404
    assert response.json() == {
        "detail": f"{fmt} file of checkpoint {stored_checkpoint['id']} not found"
    }
    _no_secret(response)


def test_symlink_out_of_the_store_is_not_served(app, client, stored_checkpoint, secret):
    weights = stored_checkpoint["folder"] / "model-final.safetensors"
    weights.unlink()
    weights.symlink_to(secret)
    [listed] = (
        client().get(f"/api/v1/jobs/{stored_checkpoint['job']['id']}/checkpoints").json()["items"]
    )
    assert "safetensors" not in listed["files"]
    response = client().get(DOWNLOAD.format(stored_checkpoint["id"]))
    assert response.status_code == 404
    assert response.json() == {
        "detail": f"safetensors file of checkpoint {stored_checkpoint['id']} not found"
    }
    _no_secret(response)


def _raw_get(url: str, target: str, token: str) -> tuple[int, bytes]:
    """Send ``GET target`` byte for byte (no client-side normalisation of ``..``)."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    status = int(raw.split(b" ", 2)[1])
    return status, raw.partition(b"\r\n\r\n")[2]


RAW_TARGETS = [
    "/api/v1/jobs/../../secret.txt",
    "/api/v1/jobs/..%2f..%2fsecret.txt",
    "/api/v1/jobs/%252e%252e%252fsecret.txt",
    "/api/v1/checkpoints/../../../secret.txt/download",
    "/api/v1/checkpoints/%2e%2e%2f%2e%2e%2fsecret.txt/download",
    "/../pyproject.toml",
    "/%2e%2e/pyproject.toml",
    "/..%2fpyproject.toml",
    "/js/..%2f..%2fpyproject.toml",
    "/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc/passwd",
    "//etc/passwd",
    "/..\\pyproject.toml",
]


def test_raw_traversal_requests_to_a_live_server_get_404(live_server, secret):
    """The real server, byte-exact request targets, the API and the dashboard's files."""
    token = live_server.headers["Authorization"].removeprefix("Bearer ")
    pyproject = (ROOT / "pyproject.toml").read_bytes()[:200]
    answers = {target: _raw_get(live_server.url, target, token) for target in RAW_TARGETS}
    for target, (status, body) in answers.items():
        assert status == 404, (target, status, body[:200])
        assert SECRET not in body and pyproject not in body and b"root:" not in body, target
