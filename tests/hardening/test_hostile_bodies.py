"""Oversized and malformed requests: a clear 413 or a 422 naming the field, never a
500, never a hang, and nothing stored.

Covers bodies over the 1 MiB limit (declared, chunked without a length, and to a
live server), JSON that Python's parser refuses (nesting, 5000-digit numbers),
numbers that are not finite, NUL characters Postgres cannot store, lone
surrogates, and query values past what the database can compare.
"""

from __future__ import annotations

import json

import httpx
import pytest

from db.models import Job

GOOD = {
    "dataset": "digits",
    "architecture": "mlp",
    "method": "clean",
    "epochs": 2,
    "schedule": "cosine",
}
TOO_LARGE = {"detail": "request body is larger than the limit of 1024 KiB"}
TEN_MB = 10 * 1024 * 1024


def _ten_mb_spec() -> dict:
    return {**GOOD, "hparams": {f"k{i}": "x" * 100 for i in range(TEN_MB // 110)}}


def _jobs(session_factory) -> int:
    with session_factory() as session:
        return session.query(Job).count()


def _fields(response) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text
    return [(e["field"], e["message"]) for e in response.json()["detail"]]


def test_ten_megabyte_job_spec_is_413_and_stores_nothing(client, session_factory):
    body = json.dumps(_ten_mb_spec()).encode()
    assert len(body) > TEN_MB * 0.95
    response = client().post(
        "/api/v1/jobs", content=body, headers={"content-type": "application/json"}
    )
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert _jobs(session_factory) == 0


def test_chunked_body_without_a_length_is_413_too(client, session_factory):
    def chunks():
        yield b'{"dataset": "digits", "architecture": "mlp", "method": "clean", "name": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    headers = {"content-type": "application/json"}
    response = client().post("/api/v1/jobs", content=chunks(), headers=headers)
    assert "content-length" not in response.request.headers
    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert _jobs(session_factory) == 0


def test_body_at_the_limit_is_read_and_one_byte_over_is_413(client):
    padded = json.dumps(GOOD).encode()
    at_limit = padded[:-1] + b" " * (1024 * 1024 - len(padded)) + b"}"
    headers = {"content-type": "application/json"}
    assert client().post("/api/v1/jobs", content=at_limit, headers=headers).status_code == 201
    over = client().post("/api/v1/jobs", content=at_limit + b" ", headers=headers)
    assert (over.status_code, over.json()) == (413, TOO_LARGE)


def test_ten_megabyte_evaluation_body_is_413(client, make_job):
    job = make_job(client, status="succeeded")
    body = {"eps": [0.1] * (TEN_MB // 5)}
    response = client().post(f"/api/v1/jobs/{job['id']}/evaluations", json=body)
    assert (response.status_code, response.json()) == (413, TOO_LARGE)


def test_ten_megabyte_body_to_a_live_server_is_413(live_server):
    """The real server answers before reading the body, and the client is not left hanging."""
    with httpx.Client(base_url=live_server.url, headers=live_server.headers, timeout=60) as c:
        response = c.post("/api/v1/jobs", json=_ten_mb_spec())
        assert (response.status_code, response.json()) == (413, TOO_LARGE)
        assert c.get("/api/v1/jobs").json()["total"] == 0  # and it still serves


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            '{"dataset": "digits", "hparams": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}",
            "nested too deeply",
        ),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        ('{"dataset": "digits", "epochs": ' + "9" * 5000 + "}", "a number has too many digits"),
    ],
)
def test_json_python_cannot_parse_is_422_naming_the_body(client, raw, reason):
    headers = {"content-type": "application/json"}
    response = client().post("/api/v1/jobs", content=raw.encode(), headers=headers)
    assert _fields(response) == [("body", f"body: request body is not valid JSON ({reason})")]


@pytest.mark.parametrize(
    ("fragment", "field", "message"),
    [
        ('"epochs": 1e400', "epochs", "epochs: expected a finite number, got inf"),
        ('"epochs": -1e400', "epochs", "epochs: expected a finite number, got -inf"),
        ('"batch_size": NaN', "batch_size", "batch_size: expected a finite number, got nan"),
        ('"lr": Infinity', "lr", "lr: expected a finite number, got inf"),
        ('"eval_eps": [0.1, 1e999]', "eval_eps", "eval_eps[1]: expected a finite number, got inf"),
        (
            '"hparams": {"label_smoothing": -Infinity}',
            "hparams.label_smoothing",
            "hparams.label_smoothing: expected a finite number, got -inf",
        ),
    ],
)
def test_numbers_that_are_not_finite_are_422_naming_the_field(client, fragment, field, message):
    raw = '{"dataset": "digits", "architecture": "mlp", "method": "clean", ' + fragment + "}"
    response = client().post(
        "/api/v1/jobs", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert _fields(response) == [(field, message)]


def test_nul_in_a_job_name_is_422_and_stores_nothing(client, session_factory):
    response = client().post("/api/v1/jobs", json={**GOOD, "name": "a\x00b"})
    assert _fields(response) == [("name", "name: value error, must not contain NUL characters")]
    assert _jobs(session_factory) == 0


def test_lone_surrogate_in_a_field_name_is_422_with_it_escaped(client):
    raw = (
        '{"dataset": "digits", "architecture": "mlp", "method": "clean", "hparams": {"\\udc80": 1}}'
    )
    response = client().post(
        "/api/v1/jobs", content=raw.encode(), headers={"content-type": "application/json"}
    )
    assert _fields(response) == [
        (
            "hparams.\\udc80",
            "method 'clean' has no hyperparameter '\\udc80'; allowed: label_smoothing",
        )
    ]


@pytest.mark.parametrize("name", ["status", "method", "dataset", "q"])
def test_nul_in_a_list_filter_is_422_naming_it(client, name):
    response = client().get(f"/api/v1/jobs?{name}=%00")
    assert _fields(response) == [(name, f"{name}: must not contain NUL characters")]


def test_offset_past_a_64_bit_integer_is_422(client):
    response = client().get("/api/v1/jobs?offset=99999999999999999999")
    assert _fields(response) == [
        ("offset", "offset: input should be less than or equal to 9223372036854775807")
    ]


@pytest.mark.parametrize(
    "cursor", ["99999999999999999999999.0", "0.99999999999999999999999", "-5.3", "\x00", "a.b"]
)
def test_hostile_event_cursor_still_streams_the_job_to_its_end(client, make_job, cursor):
    job = make_job(client, status="canceled")
    for params, headers in (({"since": cursor}, {}), ({}, {"Last-Event-ID": cursor})):
        with client().stream(
            "GET", f"/api/v1/jobs/{job['id']}/events", params=params, headers=headers
        ) as response:
            assert response.status_code == 200
            events = [line for line in response.iter_lines() if line.startswith("event: ")]
        assert events == ["event: job", "event: end"]
