"""Fault: the Postgres server crashes and comes back while jobs train.

Starts a Postgres cluster of its own (``initdb`` into a temporary folder, port
``--pg-port``, default 5499; never the machine's shared server), a redis-server
of its own on ``--redis-port`` (default 6392), the API and two workers. Submits
three tiny jobs, waits until one is training, stops Postgres with ``pg_ctl stop
-m immediate`` (a crash: every connection is cut, no shutdown checkpoint), and
while it is down asks the API what a user would: list and get jobs, submit one,
health and readiness, and a client follows the training job's event stream
throughout (as the dashboard does, reconnecting if it is cut). After ``--down``
seconds Postgres is started again. Reports what the user saw (status codes,
bodies, latency; tracebacks in the API's log; the stream's events and connections),
then, once every job has ended: the jobs' statuses and attempts, whether a job
was lost or trained to its end twice, what the workers logged, and whether any
incomplete checkpoint was offered for download.

    .venv/bin/python bench/faults/postgres_restart.py
    .venv/bin/python bench/faults/postgres_restart.py --down 30
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter

import httpx
from common import (
    FINAL,
    PRODUCTION_TIMINGS,
    TINY_JOB,
    PrivatePostgres,
    Stack,
    cleanup_home,
    start_redis,
    summarize,
    wait,
)


def probe(client: httpx.Client, method: str, path: str, **kwargs: object) -> dict:
    """One request as a user would make it: status, latency and a short body."""
    start = time.monotonic()
    try:
        response = client.request(method, path, **kwargs)
        body: object = response.json() if "json" in response.headers.get("content-type", "") else ""
        out = {"status": response.status_code, "body": body}
        if "retry-after" in response.headers:
            out["retry_after"] = response.headers["retry-after"]
    except httpx.HTTPError as exc:
        out = {"status": type(exc).__name__}
    out["seconds"] = round(time.monotonic() - start, 2)
    if isinstance(out.get("body"), dict) and "items" in out["body"]:
        out["body"] = {"total": out["body"].get("total")}
    elif isinstance(out.get("body"), dict) and "config" in out["body"]:
        out["body"] = {k: out["body"].get(k) for k in ("id", "status", "attempts")}
    return out


def user_view(client: httpx.Client, job_id: str, spec: dict) -> dict:
    return {
        "GET /jobs": probe(client, "GET", "/api/v1/jobs"),
        "GET /jobs/{id}": probe(client, "GET", f"/api/v1/jobs/{job_id}"),
        "GET /jobs/{id}/log": probe(client, "GET", f"/api/v1/jobs/{job_id}/log"),
        "POST /jobs": probe(client, "POST", "/api/v1/jobs", json={**spec, "name": "during"}),
        "GET /health": probe(client, "GET", "/api/v1/health"),
        "GET /health/ready": probe(client, "GET", "/api/v1/health/ready"),
    }


class StreamFollower(threading.Thread):
    """Follows ``GET /jobs/{id}/events`` as the dashboard does: reconnects with
    Last-Event-ID 2 s after the stream is cut or refused, until ``end``."""

    def __init__(self, stack: Stack, job_id: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.job_id = stack, job_id
        self.events: list[tuple[float, str]] = []  # (monotonic time, event type)
        self.connections, self.refused, self.cut = 0, Counter(), 0
        self.ended: str | None = None
        self.last_id: str | None = None

    def run(self) -> None:
        path = f"/api/v1/jobs/{self.job_id}/events"
        while self.ended is None:
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                with self.stack.client(timeout=None) as client:
                    with client.stream("GET", path, headers=headers) as response:
                        if response.status_code != 200:
                            self.refused[response.status_code] += 1
                        else:
                            self.connections += 1
                            self._read(response)
                            if self.ended is None:
                                self.cut += 1
            except httpx.HTTPError:
                self.cut += 1
            if self.ended is None:
                time.sleep(2)

    def _read(self, response: httpx.Response) -> None:
        kind = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                self.last_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
                self.events.append((time.monotonic(), kind))
            elif line.startswith("data: ") and kind == "end":
                self.ended = json.loads(line[6:])["status"]
                return

    def report(self, down_at: float, up_at: float) -> dict:
        during = [k for t, k in self.events if down_at <= t < up_at]
        after = [k for t, k in self.events if t >= up_at]
        return {
            "connections": self.connections,
            "refused": dict(self.refused),
            "cut": self.cut,
            "events_while_down": dict(Counter(during)),
            "first_events_after_restart": after[:3],
            "ended": self.ended,
        }


def worker_events(stack: Stack) -> dict:
    """What the workers' logs say about the outage (counts of telling lines)."""
    text = "\n".join(w.output() for w in stack.workers)
    patterns = {
        "task_raised": "raised unexpected",
        "heartbeat_failed": "heartbeat failed",
        "sweep_failed": "sweep failed",
        "lease_lost": "lease lost",
        "db_error_during_training": "database error during training",
        "db_error_at_claim": "database error at claim",
        "handed_over": "'status': 'handed_over'",
        "task_sent_again_after_claim": "unreachable at claim; task sent again",
        "tracebacks": "Traceback (most recent call last)",
    }
    return {name: text.count(pattern) for name, pattern in patterns.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pg-port", type=int, default=5499)
    parser.add_argument("--redis-port", type=int, default=6392)
    parser.add_argument("--down", type=float, default=10.0, help="seconds Postgres stays down")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs of each job")
    parser.add_argument("--timeout", type=float, default=900.0, help="for every job to end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument(
        "--timings",
        choices=("production", "fault"),
        default="production",
        help="heartbeat/stale/sweep/resend: the defaults (5/60/10/300 s: a 10 s outage is "
        "shorter than the lease) or the fault scripts' short ones (1/6/1/20 s: it is longer)",
    )
    args = parser.parse_args()
    timings = PRODUCTION_TIMINGS if args.timings == "production" else {}
    spec = {**TINY_JOB, "epochs": args.epochs}
    pg = PrivatePostgres(args.pg_port)
    pg.start()
    redis = stack = None
    report: dict = {
        "scenario": "postgres crash + restart during a running job",
        "down": args.down,
        "timings": args.timings,
    }
    try:
        url = pg.create_database("dyart")
        broker = f"redis://127.0.0.1:{args.redis_port}/3"
        stack = Stack(broker_url=broker, DYART_DATABASE_URL=url, **timings)
        redis = start_redis(args.redis_port, stack.home / "redis.log")
        stack.start_api()
        stack.start_worker()
        stack.start_worker()
        with stack.client() as client:
            before = [
                client.post("/api/v1/jobs", json={**spec, "name": f"before-{i}"}) for i in range(3)
            ]
            assert all(r.status_code == 201 for r in before), [r.text for r in before]

            def training() -> list[str]:
                running = [j for j in stack.jobs().values() if j["status"] == "running"]
                metrics = stack.rows("SELECT DISTINCT job_id FROM job_metric")
                with_metric = {r.job_id for r in metrics}
                return [j["id"] for j in running if j["id"] in with_metric]

            training_ids = wait(training, "a job to train", 300)
            watched = training_ids[0]
            follower = StreamFollower(stack, watched)
            follower.start()
            wait(lambda: follower.events, "the event stream's first event", 30)
            report["jobs_at_crash"] = dict(Counter(j["status"] for j in stack.jobs().values()))
            stack.engine.dispose()
            pg.stop("immediate")
            down_at = time.monotonic()
            api_log_before = stack.api.output().count("Traceback")
            report["while_down"] = user_view(client, watched, spec)
            time.sleep(max(0.0, args.down - (time.monotonic() - down_at)))
            report["while_down_again"] = user_view(client, watched, spec)
            report["api_tracebacks_while_down"] = (
                stack.api.output().count("Traceback") - api_log_before
            )
            pg.start()
            restarted = time.monotonic()
            report["first_requests_after_restart"] = {
                "GET /jobs/{id}": probe(client, "GET", f"/api/v1/jobs/{watched}"),
                "GET /health/ready": probe(client, "GET", "/api/v1/health/ready"),
            }
            jobs = stack.wait_all_final(args.timeout)
            report["all_ended_seconds_after_restart"] = round(time.monotonic() - restarted)
            follower.join(30)
            report["event_stream"] = follower.report(down_at, restarted)
            listed = client.get("/api/v1/jobs", params={"limit": 500}).json()
        accepted = 3 + sum(
            v["POST /jobs"]["status"] == 201
            for v in (report["while_down"], report["while_down_again"])
        )
        report["accepted"] = accepted
        report["listed_after"] = listed["total"]
        report["lost"] = accepted - sum(j["status"] in FINAL for j in jobs.values())
        report["job_trained_during_crash"] = {
            "id": watched,
            "status": jobs[watched]["status"],
            "attempts": jobs[watched]["attempts"],
            "log": [
                r.message
                for r in stack.rows(
                    "SELECT message FROM job_log WHERE job_id = :j AND (message LIKE 'attempt %' "
                    "OR message LIKE 'worker lost%' OR message LIKE 'resum%' "
                    "OR level IN ('WARNING', 'ERROR')) ORDER BY id",
                    j=watched,
                )
            ],
        }
        report.update(summarize(stack, jobs))
        report["worker_log"] = worker_events(stack)
        report["errors"] = sorted({j["error"] for j in jobs.values() if j["error"]})
    finally:
        if stack is not None:
            stack.close()
        if redis is not None:
            redis.stop()
        pg.close()
        if stack is not None:
            cleanup_home(stack, args.keep)
    print(json.dumps(report, indent=2, default=str))
    ok = report.get("lost") == 0 and not report.get("trained_to_the_end_more_than_once")
    ok = ok and report.get("by_status") == {"succeeded": report.get("accepted")}
    ok = ok and report.get("event_stream", {}).get("ended") == "succeeded"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
