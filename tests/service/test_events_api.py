"""The SSE stream of a job: job, metric, log, evaluation events, then end."""

import json
import threading
import time

from db.jobs import add_log, record_metric
from db.models import Evaluation, Job


def parse_sse(text):
    """[(id, event, data)] of a text/event-stream body (comments and retry skipped)."""
    events = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "event" in fields:
            events.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return events


def read_stream(response, signal, when):
    """The whole body; ``signal`` is set once a line equal to ``when`` has arrived."""
    lines = []
    for line in response.iter_lines():
        lines.append(line)
        if line == when:
            signal.set()
    return "\n".join(lines)


def _add_rows(app, job_id, metrics=(), logs=()):
    with app.state.session_factory() as session:
        for stage, epoch in metrics:
            record_metric(session, job_id, stage, epoch, {"train_loss": 1.0})
        for message in logs:
            add_log(session, job_id, message)
        session.commit()


def _finish_later(app, job_id, started):
    """Once the stream has started: one more metric, then the job succeeds."""

    def run():
        started.wait(10)
        _add_rows(app, job_id, metrics=[("train", 1)], logs=["epoch 1 done"])
        with app.state.session_factory() as session:
            session.get(Job, job_id).status = "succeeded"
            session.commit()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_events_follow_a_job_until_end(client, make_job, app):
    job = make_job(client, status="running", stage="burn_in", epoch=1)
    _add_rows(app, job["id"], metrics=[("burn_in", 1)], logs=["started"])
    started = threading.Event()
    thread = _finish_later(app, job["id"], started)
    c = client()
    with c.stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = read_stream(response, started, "event: job")
    thread.join()
    events = parse_sse(body)
    kinds = [kind for _, kind, _ in events]
    assert kinds[-1] == "end" and events[-1][2] == {"status": "succeeded"}
    assert [d["stage"] for _, k, d in events if k == "metric"] == ["burn_in", "train"]
    assert [d["message"] for _, k, d in events if k == "log"] == ["started", "epoch 1 done"]
    statuses = [d["status"] for _, k, d in events if k == "job"]
    assert statuses[0] == "running" and statuses[-1] == "succeeded"


def test_events_resume_after_last_event_id(client, make_job, app):
    job = make_job(client, status="succeeded")
    _add_rows(app, job["id"], metrics=[("train", 1), ("train", 2)], logs=["a", "b"])
    first = parse_sse(client().get(f"/api/v1/jobs/{job['id']}/events").text)
    after_first_metric = next(i for i, kind, _ in first if kind == "metric")
    again = client().get(
        f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": after_first_metric}
    )
    events = parse_sse(again.text)
    assert [d["epoch"] for _, k, d in events if k == "metric"] == [2]
    assert [d["message"] for _, k, d in events if k == "log"] == ["a", "b"]
    last = first[-1][0]
    by_query = parse_sse(client().get(f"/api/v1/jobs/{job['id']}/events?since={last}").text)
    assert [k for _, k, _ in by_query] == ["job", "end"]


def test_a_jobs_numbers_count_its_own_rows_not_other_users(client, make_job, app, bob):
    """Line ids and event ids are the job's own numbers, 1, 2, 3, ...: rows other users'
    jobs write in between leave no gaps that would show how busy the service is."""
    mine = make_job(client, status="succeeded")
    theirs = make_job(client, user=bob, status="running")
    _add_rows(app, mine["id"], metrics=[("train", 1)], logs=["a"])
    _add_rows(app, theirs["id"], metrics=[("train", 1), ("train", 2)], logs=["x", "y", "z"])
    _add_rows(app, mine["id"], metrics=[("train", 2)], logs=["b"])
    lines = client().get(f"/api/v1/jobs/{mine['id']}/log").json()["lines"]
    assert [(line["id"], line["message"]) for line in lines] == [(1, "a"), (2, "b")]
    events = parse_sse(client().get(f"/api/v1/jobs/{mine['id']}/events").text)
    assert [(i, k) for i, k, _ in events if k in ("metric", "log")] == [
        ("1.0", "metric"), ("2.0", "metric"), ("2.1", "log"), ("2.2", "log"),
    ]  # fmt: skip
    theirs_lines = client(bob).get(f"/api/v1/jobs/{theirs['id']}/log").json()["lines"]
    assert [line["id"] for line in theirs_lines] == [1, 2, 3]


def test_a_rerun_epoch_is_sent_again_to_a_client_that_had_its_first_values(client, make_job, app):
    """A job resumed after a crash trains an epoch again and replaces its metrics row: a
    client following past that row gets the new values (the row takes a new number)."""
    job = make_job(client, status="succeeded")
    _add_rows(app, job["id"], metrics=[("train", 1), ("train", 2)])
    seen = parse_sse(client().get(f"/api/v1/jobs/{job['id']}/events").text)[-1][0]
    with app.state.session_factory() as session:
        record_metric(session, job["id"], "train", 2, {"train_loss": 0.25})
        session.commit()
    again = parse_sse(
        client().get(f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": seen}).text
    )
    assert [(i, d["epoch"], d["train_loss"]) for i, k, d in again if k == "metric"] == [
        ("3.0", 2, 0.25)
    ]
    metrics = client().get(f"/api/v1/jobs/{job['id']}/metrics").json()["items"]
    assert [(m["epoch"], m["train_loss"]) for m in metrics] == [(1, 1.0), (2, 0.25)]


def test_events_wait_for_pending_evaluation(client, make_job, app):
    job = make_job(client, status="succeeded")
    with app.state.session_factory() as session:
        evaluation = Evaluation(
            job_id=job["id"],
            status="running",
            preset="fast",
            n=10,
            norm="linf",
            eps=[0.1],
            results=[],
        )
        session.add(evaluation)
        session.commit()
        eval_id = evaluation.id
    started = threading.Event()

    def finish():
        started.wait(10)
        with app.state.session_factory() as session:
            row = session.get(Evaluation, eval_id)
            row.status = "succeeded"
            row.results = [{"eps": 0.1, "clean_acc": 0.9, "robust_acc": 0.5, "per_attack": {}}]
            session.commit()

    thread = threading.Thread(target=finish)
    thread.start()
    with client().stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
        events = parse_sse(read_stream(response, started, "event: evaluation"))
    thread.join()
    evaluations = [d for _, k, d in events if k == "evaluation"]
    assert [e["status"] for e in evaluations] == ["running", "succeeded"]
    assert evaluations[-1]["results"][0]["robust_acc"] == 0.5
    assert events[-1][1] == "end"


def test_event_stream_stays_open_through_a_database_outage(tmp_path, caplog):
    """The database's folder goes away while a client follows a job (every new
    connection fails to open), then comes back and the job ends: the client gets one
    ``unavailable`` event, then the current job, the new rows and ``end``, in one
    stream, with no traceback."""
    import asyncio
    import logging

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from api.events import UNAVAILABLE, Cursor, JobEventStream
    from db.models import User
    from db.session import make_session_factory, upgrade_database

    folder, away = tmp_path / "data", tmp_path / "data-away"
    folder.mkdir()
    url = f"sqlite:///{folder}/service.db"
    upgrade_database(url)
    engine = create_engine(url, poolclass=NullPool)  # a new connection for every read
    factory = make_session_factory(engine)
    with factory() as session:
        owner = User(name="owner")
        session.add(owner)
        session.flush()
        job = Job(owner_id=owner.id, method="dyart", dataset="digits", status="running")
        session.add(job)
        session.commit()
        job_id = job.id

    def back_and_finish():
        away.rename(folder)
        with factory() as session:
            record_metric(session, job_id, "train", 1, {"train_loss": 1.0})
            session.get(Job, job_id).status = "succeeded"
            session.commit()

    async def follow() -> list[str]:
        async def connected() -> bool:
            return False

        messages = []
        async for message in JobEventStream(factory, job_id, Cursor()).messages(connected, 0.02):
            messages.append(message)
            if message.startswith("id: 0.0\nevent: job\n") and len(messages) == 2:
                folder.rename(away)  # the database goes away
            elif "event: unavailable" in message:
                await asyncio.sleep(0.3)  # a few failed polls: still one event
                back_and_finish()
        return messages

    out: list[list[str]] = []
    # a thread of its own: an event loop may already run in this one (the browser tests')
    runner = threading.Thread(
        target=lambda: out.append(asyncio.run(asyncio.wait_for(follow(), 30)))
    )
    with caplog.at_level(logging.INFO, logger="api.events"):
        runner.start()
        runner.join(40)
    (messages,) = out
    events = parse_sse("".join(messages))
    assert [kind for _, kind, _ in events] == ["job", "unavailable", "metric", "job", "end"]
    assert events[1][2] == {"detail": UNAVAILABLE}
    assert events[3][2]["status"] == "succeeded" and events[4][2] == {"status": "succeeded"}
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "database unreachable (OperationalError); still polling",
        "database answers again",
    ]
    assert not any(r.exc_info for r in caplog.records)
    engine.dispose()


def test_a_revoked_token_closes_its_open_stream(client, make_job, app, alice, monkeypatch):
    """A stolen token revoked by the admin must not keep reading a job for hours."""
    from api import events
    from db import tokens

    monkeypatch.setattr(events, "ACCESS_RECHECK_SECONDS", 0.2)
    job = make_job(client, status="running", stage="train", epoch=1)
    started, revoked = threading.Event(), threading.Event()

    def revoke_then_finish():
        started.wait(10)
        _add_rows(app, job["id"], logs=["before the revoke"])
        with app.state.session_factory() as session:
            assert tokens.revoke_token(session, alice[1][: tokens.PREFIX_LENGTH]) == 1
            session.commit()
        revoked.set()
        time.sleep(5)  # a stream still open by then reads the rest: the test fails, not hangs
        _add_rows(app, job["id"], logs=["after the revoke"])
        with app.state.session_factory() as session:
            session.get(Job, job["id"]).status = "succeeded"
            session.commit()

    thread = threading.Thread(target=revoke_then_finish)
    thread.start()
    with client().stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
        assert response.status_code == 200
        body = read_stream(response, started, "event: job")
    thread.join()
    events_seen = parse_sse(body)
    kinds = [kind for _, kind, _ in events_seen]
    assert revoked.is_set() and "end" not in kinds, kinds
    messages = [d["message"] for _, k, d in events_seen if k == "log"]
    assert "after the revoke" not in messages, messages
    again = client().get(f"/api/v1/jobs/{job['id']}/events")
    assert again.status_code == 401 and again.json() == {"detail": "invalid or revoked token"}


def test_an_admins_stream_of_another_users_job_stays_open(client, make_job, app, root, monkeypatch):
    from api import events

    monkeypatch.setattr(events, "ACCESS_RECHECK_SECONDS", 0.05)
    job = make_job(client, status="running", stage="train", epoch=1)
    started = threading.Event()
    thread = _finish_later(app, job["id"], started)
    with client(root).stream("GET", f"/api/v1/jobs/{job['id']}/events") as response:
        body = read_stream(response, started, "event: job")
    thread.join()
    kinds = [kind for _, kind, _ in parse_sse(body)]
    assert kinds[-1] == "end", kinds
