"""Checkpoint listing and ranged downloads, from a real row and a real file."""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import pytest

from db.models import Checkpoint
from tests.service.conftest import add_final_checkpoint

SIZE = 700_001  # more than two streaming chunks, odd on purpose


@pytest.fixture
def checkpoint(app, client, make_job, settings):
    """A finished job with a final checkpoint: safetensors bytes + card on disk, and its row."""
    job = make_job(client, status="succeeded")
    data = os.urandom(SIZE)
    ident = add_final_checkpoint(app.state.session_factory, settings.artifacts_dir, job["id"], data)
    return {"id": ident, "job": job, "data": data, "sha": hashlib.sha256(data).hexdigest()}


def _url(ck, fmt="safetensors"):
    return f"/api/v1/checkpoints/{ck['id']}/download?format={fmt}"


def test_list_checkpoints_gives_download_urls(client, checkpoint):
    [item] = client().get(f"/api/v1/jobs/{checkpoint['job']['id']}/checkpoints").json()["items"]
    assert item["id"] == checkpoint["id"] and item["kind"] == "final"
    assert item["size"] == SIZE and item["sha256"] == checkpoint["sha"]
    assert set(item["files"]) == {"safetensors", "card"}  # no robustbench file on disk
    assert item["files"]["safetensors"] == f"{_url(checkpoint)}&sha256={checkpoint['sha']}"
    card = client().get(_url(checkpoint, "card")).content
    card_sha = hashlib.sha256(card).hexdigest()
    assert item["files"]["card"] == f"{_url(checkpoint, 'card')}&sha256={card_sha}"


def test_a_listed_url_resumed_after_its_file_was_replaced_is_refused(client, checkpoint, settings):
    """``curl -C -`` resumes with a Range and no If-Range: the listed URL names its
    version, so a resume across an epoch's new ``latest`` gets a 412, not a splice."""
    job = checkpoint["job"]["id"]
    [item] = client().get(f"/api/v1/jobs/{job}/checkpoints").json()["items"]
    url = item["files"]["safetensors"]
    head = client().get(url, headers={"Range": "bytes=0-999"})
    assert head.status_code == 206 and head.content == checkpoint["data"][:1000]
    path = Path(settings.artifacts_dir) / job / "model-final.safetensors"
    fresh, new = path.with_suffix(".tmp"), os.urandom(SIZE)
    fresh.write_bytes(new)
    os.replace(fresh, path)  # the next epoch's file
    rest = client().get(url, headers={"Range": "bytes=1000-"})
    assert rest.status_code == 412
    assert "has been replaced since this URL was made" in rest.json()["detail"]
    assert f"/api/v1/jobs/{job}/checkpoints" in rest.json()["detail"]
    assert client().head(url).status_code == 412
    [item] = client().get(f"/api/v1/jobs/{job}/checkpoints").json()["items"]
    again = client().get(item["files"]["safetensors"])
    assert again.status_code == 200 and again.content == new
    bad = client().get(f"{_url(checkpoint)}&sha256=abc")
    assert bad.status_code == 422 and "sha256" in bad.text


def test_download_full_file_with_checksum_headers(client, checkpoint):
    response = client().get(_url(checkpoint))
    assert response.status_code == 200
    assert response.content == checkpoint["data"]
    headers = response.headers
    assert headers["x-checksum-sha256"] == checkpoint["sha"]
    assert headers["etag"] == f'"{checkpoint["sha"]}"'
    assert headers["content-length"] == str(SIZE) and headers["accept-ranges"] == "bytes"
    assert headers["content-disposition"].startswith("attachment; filename=")


def test_download_partial_range_is_206(client, checkpoint):
    response = client().get(_url(checkpoint), headers={"Range": "bytes=100-299"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 100-299/{SIZE}"
    assert response.content == checkpoint["data"][100:300]
    tail = client().get(_url(checkpoint), headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == checkpoint["data"][-5:]


def test_resumed_download_concatenates_to_the_file(client, checkpoint):
    first = client().get(_url(checkpoint), headers={"Range": "bytes=0-123455"}).content
    etag = f'"{checkpoint["sha"]}"'
    rest = client().get(
        _url(checkpoint), headers={"Range": f"bytes={len(first)}-", "If-Range": etag}
    )
    assert rest.status_code == 206
    assert hashlib.sha256(first + rest.content).hexdigest() == checkpoint["sha"]


def test_range_after_the_end_is_416(client, checkpoint):
    response = client().get(_url(checkpoint), headers={"Range": f"bytes={SIZE}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{SIZE}"
    assert "outside the file" in response.json()["detail"]


def test_stale_if_range_sends_the_whole_file(client, checkpoint):
    headers = {"Range": "bytes=10-", "If-Range": '"0000"'}
    response = client().get(_url(checkpoint), headers=headers)
    assert response.status_code == 200 and len(response.content) == SIZE


def test_a_file_replaced_before_its_row_is_sent_with_its_own_checksum(client, checkpoint, settings):
    """The trainer renames a new file over the old, then the worker updates the row.

    In between, the row's sha256 is the old file's: the answer's checksum and ETag
    are those of the bytes sent, so a resume with the old ETag gets the whole new
    file instead of the old file's head joined to the new one's tail.
    """
    path = Path(settings.artifacts_dir) / checkpoint["job"]["id"] / "model-final.safetensors"
    old_head = client().get(_url(checkpoint), headers={"Range": "bytes=0-999"}).content
    fresh, new = path.with_suffix(".tmp"), os.urandom(SIZE)
    fresh.write_bytes(new)
    os.replace(fresh, path)  # the row still has the old size and sha256
    new_sha = hashlib.sha256(new).hexdigest()
    response = client().get(_url(checkpoint))
    assert response.content == new
    assert response.headers["x-checksum-sha256"] == new_sha
    assert response.headers["etag"] == f'"{new_sha}"'
    old_etag = f'"{checkpoint["sha"]}"'
    rest = client().get(_url(checkpoint), headers={"Range": "bytes=1000-", "If-Range": old_etag})
    assert rest.status_code == 200 and rest.content == new
    assert old_head == checkpoint["data"][:1000]


def test_download_card_has_its_own_checksum(client, checkpoint):
    response = client().get(_url(checkpoint, "card"))
    assert response.status_code == 200 and response.json() == {"architecture": "mlp"}
    assert response.headers["x-checksum-sha256"] == hashlib.sha256(response.content).hexdigest()


def test_other_users_checkpoint_is_404_like_a_missing_one(client, checkpoint, bob):
    response = client(bob).get(_url(checkpoint))
    assert response.status_code == 404
    assert response.json() == {"detail": f"checkpoint {checkpoint['id']} not found"}
    missing = client(bob).get("/api/v1/checkpoints/ffffffffffffffffffffffffffffffff/download")
    assert missing.json() == {"detail": "checkpoint ffffffffffffffffffffffffffffffff not found"}


def test_row_pointing_outside_the_artifact_store_is_refused(client, checkpoint, app, tmp_path):
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"x" * 10)
    with app.state.session_factory() as session:
        session.get(Checkpoint, checkpoint["id"]).path = "../secret.safetensors"
        session.commit()
    response = client().get(_url(checkpoint))
    assert response.status_code == 404


def test_file_without_a_row_is_never_offered(client, checkpoint, settings):
    stray = Path(settings.artifacts_dir) / checkpoint["job"]["id"] / "model-best.safetensors"
    stray.write_bytes(b"stray")
    items = client().get(f"/api/v1/jobs/{checkpoint['job']['id']}/checkpoints").json()["items"]
    assert [c["kind"] for c in items] == ["final"]


HUGE = "9" * 5000  # past Python's int() limit of 4300 digits


@pytest.mark.parametrize(
    ("spec", "status", "content_range", "part"),
    [
        (f"0-{HUGE}", 206, f"bytes 0-{SIZE - 1}/{SIZE}", slice(None)),  # end clamped
        (f"-{HUGE}", 206, f"bytes 0-{SIZE - 1}/{SIZE}", slice(None)),  # suffix: the whole file
        (f"{'0' * 5000}1-2", 206, f"bytes 1-2/{SIZE}", slice(1, 3)),  # leading zeros
        (f"{HUGE}-", 416, f"bytes */{SIZE}", None),  # start past the end
        (f"{HUGE}-{HUGE}", 416, f"bytes */{SIZE}", None),
    ],
)
def test_range_with_a_very_long_number_is_answered_like_any_other(
    client, checkpoint, spec, status, content_range, part
):
    response = client().get(_url(checkpoint), headers={"Range": f"bytes={spec}"})
    assert response.status_code == status
    assert response.headers["content-range"] == content_range
    if part is not None:
        assert response.content == checkpoint["data"][part]
    else:
        detail = response.json()["detail"]
        assert "outside the file" in detail and len(detail) < 200  # the header, shortened


def test_range_in_an_unknown_unit_is_ignored(client, checkpoint):
    response = client().get(_url(checkpoint), headers={"Range": "items=0-1"})
    assert response.status_code == 200 and "content-range" not in response.headers
    assert response.content == checkpoint["data"]


def test_head_answers_the_headers_of_a_download_without_its_body(client, checkpoint):
    full = client().get(_url(checkpoint))
    head = client().head(_url(checkpoint))
    assert head.status_code == 200 and head.content == b""
    names = ("content-length", "content-type", "accept-ranges", "etag", "x-checksum-sha256")
    for name in (*names, "content-disposition"):
        assert head.headers[name] == full.headers[name], name
    card, card_head = (
        client().get(_url(checkpoint, "card")),
        client().head(_url(checkpoint, "card")),
    )
    assert card_head.headers["x-checksum-sha256"] == card.headers["x-checksum-sha256"]


def test_head_ignores_range_as_rfc_9110_asks(client, checkpoint):
    head = client().head(_url(checkpoint), headers={"Range": "bytes=0-9"})
    assert head.status_code == 200 and head.headers["content-length"] == str(SIZE)
    assert "content-range" not in head.headers


def test_head_follows_the_download_rules_for_tokens_and_owners(client, checkpoint, bob):
    assert client(bob).head(_url(checkpoint)).status_code == 404
    assert client(headers={}).head(_url(checkpoint)).status_code == 401


def _in_own_loop(func, *args):
    """``anyio.run(func, *args)`` on a thread of its own: the suite's browser tests
    leave an event loop running on the main thread (Playwright's sync API)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, func, *args).result()


async def _download_asgi(app, url, token, on_start=None, abort=False):
    """GET ``url`` through the app's ASGI interface, as uvicorn calls it: (headers, body).

    ``on_start`` runs when the headers go out; with ``abort`` the client goes away
    after the first chunk of the body.
    """
    path, _, query = url.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    headers, body, gone, asked = {}, bytearray(), anyio.Event(), 0

    async def receive():
        nonlocal asked
        asked += 1
        if asked > 1:
            await gone.wait()
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            headers.update({k.decode(): v.decode() for k, v in message["headers"]})
            if on_start is not None:
                on_start()
        elif not gone.is_set():
            body.extend(message.get("body", b""))
            if abort:
                gone.set()

    await app(scope, receive, send)
    return headers, bytes(body)


def _open_fds_on(path):
    """How many of this process's open files are ``path`` (or a deleted file that was)."""
    fds = Path("/proc/self/fd")
    links = []
    for fd in fds.iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:  # closed while listing
            continue
    return sum(1 for link in links if link.startswith(str(path)))


def test_download_streams_the_file_it_measured_while_the_trainer_replaces_it(
    app, alice, checkpoint, settings
):
    path = Path(settings.artifacts_dir) / checkpoint["job"]["id"] / "model-final.safetensors"

    def replace():  # what the trainer does each epoch: write a new file, rename it over
        fresh = path.with_suffix(".tmp")
        fresh.write_bytes(os.urandom(1000))
        os.replace(fresh, path)

    headers, body = _in_own_loop(_download_asgi, app, _url(checkpoint), alice[1], replace)
    assert headers["content-length"] == str(len(body)) == str(SIZE)
    assert body == checkpoint["data"]
    assert _open_fds_on(path) == 0


def test_aborted_download_closes_its_file(app, alice, checkpoint, settings):
    path = Path(settings.artifacts_dir) / checkpoint["job"]["id"] / "model-final.safetensors"
    headers, body = _in_own_loop(_download_asgi, app, _url(checkpoint), alice[1], None, True)
    assert headers["content-length"] == str(SIZE) and 0 < len(body) < SIZE
    assert _open_fds_on(path) == 0
