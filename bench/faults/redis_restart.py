"""Fault: the Redis broker restarts (empty) while a job trains and others queue.

Starts a redis-server of its own on ``--redis-port`` (default 6390; never the
machine's shared Redis), Postgres for the database (a fresh database, dropped
afterwards), the API and two workers. Submits four tiny jobs, waits until one is
training, kills Redis with SIGKILL, submits two more jobs while it is down, then
starts Redis again on the same port, empty: every message that was in it is gone.
Reports what the user saw (submission status codes and latency, readiness) and,
once every job has ended, whether any job was lost or trained to its end twice,
and whether any incomplete checkpoint was offered for download.

    .venv/bin/python bench/faults/redis_restart.py
    .venv/bin/python bench/faults/redis_restart.py --down 20 --sqlite
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter

from common import FINAL, Stack, cleanup_home, start_redis, summarize, wait


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-port", type=int, default=6390)
    parser.add_argument("--down", type=float, default=10.0, help="seconds Redis stays down")
    parser.add_argument("--sqlite", action="store_true", help="SQLite database, not Postgres")
    parser.add_argument("--timeout", type=float, default=900.0, help="for every job to end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    broker = f"redis://127.0.0.1:{args.redis_port}/3"
    stack = Stack(postgres=not args.sqlite, broker_url=broker)
    redis = start_redis(args.redis_port, stack.home / "redis.log")
    report: dict = {"scenario": "redis restart during a running job", "down_seconds": args.down}
    try:
        stack.start_api()
        stack.start_worker()
        stack.start_worker()
        with stack.client() as client:
            before = [stack.submit(client, f"before-{i}") for i in range(4)]
            assert all(r.status_code == 201 for r in before), [r.text for r in before]

            def training() -> bool:
                return any(j["status"] == "running" for j in stack.jobs().values()) and bool(
                    stack.rows("SELECT 1 FROM job_metric LIMIT 1")
                )

            wait(training, "a job to train", 300)
            redis.signal(signal.SIGKILL)
            at_kill = Counter(j["status"] for j in stack.jobs().values())
            report["jobs_at_kill"] = dict(at_kill)
            redis.popen.wait(10)
            down_at = time.monotonic()
            during = []
            for i in range(2):
                start = time.monotonic()
                response = stack.submit(client, f"during-{i}")
                during.append(
                    {"status": response.status_code, "seconds": round(time.monotonic() - start, 2)}
                )
            ready = client.get("/api/v1/health/ready")
            report["while_down"] = {
                "submissions": during,
                "ready": [ready.status_code, ready.json()],
                "jobs_listed": client.get("/api/v1/jobs").json()["total"],
            }
            time.sleep(max(0.0, args.down - (time.monotonic() - down_at)))
            redis = start_redis(args.redis_port, stack.home / "redis.log")
            restarted = time.monotonic()
            jobs = stack.wait_all_final(args.timeout)
            report["all_ended_seconds_after_restart"] = round(time.monotonic() - restarted)
            listed = client.get("/api/v1/jobs", params={"limit": 500}).json()
        report["accepted"] = 4 + sum(d["status"] == 201 for d in during)
        report["listed_after"] = listed["total"]
        report["lost"] = report["accepted"] - sum(j["status"] in FINAL for j in jobs.values())
        report.update(summarize(stack, jobs))
        report["errors"] = sorted({j["error"] for j in jobs.values() if j["error"]})
    finally:
        stack.close()
        redis.stop()
        cleanup_home(stack, args.keep)
    print(json.dumps(report, indent=2))
    ok = report["lost"] == 0 and not report["trained_to_the_end_more_than_once"]
    ok = ok and report["by_status"] == {"succeeded": report["accepted"]}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
