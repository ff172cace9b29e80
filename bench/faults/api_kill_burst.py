"""Fault: the API is killed with SIGKILL in the middle of a burst of submissions.

Starts the API and one worker (SQLite and the serverless broker by default; or
Postgres and a redis-server of its own with ``--postgres``), sends ``--burst`` job
submissions from as many concurrent clients, and kills the API's process group
once ``--kill-after`` of them have been answered. The API is started again on the
same port. Reports what each client saw (201, an error status, or a dropped
connection), then, once every job has ended: jobs that were answered 201 but do not
exist (lost), jobs that exist although their client saw no 201 (the commit landed,
the answer did not), jobs trained to their end more than once, and whether any
incomplete checkpoint was offered for download.

    .venv/bin/python bench/faults/api_kill_burst.py
    .venv/bin/python bench/faults/api_kill_burst.py --postgres --burst 30 --kill-after 12
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import Counter

import httpx
from common import TINY_JOB, Stack, cleanup_home, start_redis, summarize


async def burst(stack: Stack, n: int, kill_after: int) -> list[dict]:
    """``n`` concurrent submissions; SIGKILL the API once ``kill_after`` are answered."""
    answered = 0
    outcomes: list[dict] = []
    headers = {"Authorization": f"Bearer {stack.token}"}
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(
        base_url=stack.url, headers=headers, timeout=60, limits=limits
    ) as client:

        async def one(i: int) -> None:
            nonlocal answered
            body = {**TINY_JOB, "name": f"burst-{i}"}
            try:
                response = await client.post("/api/v1/jobs", json=body)
                outcome = {"name": body["name"], "status": response.status_code}
                if response.status_code == 201:
                    outcome["id"] = response.json()["id"]
            except httpx.HTTPError as exc:
                outcome = {"name": body["name"], "status": type(exc).__name__}
            outcomes.append(outcome)
            answered += 1
            if answered == kill_after:
                stack.api.signal(signal.SIGKILL)

        await asyncio.gather(*(one(i) for i in range(n)))
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--kill-after", type=int, default=8)
    parser.add_argument("--postgres", action="store_true", help="Postgres + own redis-server")
    parser.add_argument("--redis-port", type=int, default=6391)
    parser.add_argument("--timeout", type=float, default=1200.0, help="for every job to end")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    redis = None
    if args.postgres:
        broker = f"redis://127.0.0.1:{args.redis_port}/3"
        stack = Stack(postgres=True, broker_url=broker)
        redis = start_redis(args.redis_port, stack.home / "redis.log")
    else:
        stack = Stack()
    report: dict = {
        "scenario": "kill -9 the API during a submission burst",
        "backend": "postgres+redis" if args.postgres else "sqlite",
        "burst": args.burst,
        "kill_after_answers": args.kill_after,
    }
    try:
        stack.start_api()
        stack.start_worker()
        outcomes = asyncio.run(burst(stack, args.burst, args.kill_after))
        stack.api.popen.wait(30)
        report["client_saw"] = dict(Counter(str(o["status"]) for o in outcomes))
        start = time.monotonic()
        stack.start_api()
        report["api_restart_seconds"] = round(time.monotonic() - start, 1)
        jobs = stack.wait_all_final(args.timeout)
        answered = {o["id"] for o in outcomes if "id" in o}
        report["answered_201_but_missing"] = sorted(answered - set(jobs))
        orphans = [j for j in jobs.values() if j["id"] not in answered]
        report["created_without_a_201"] = len(orphans)
        report["orphans_by_status"] = dict(Counter(j["status"] for j in orphans))
        report.update(summarize(stack, jobs))
        report["errors"] = sorted({j["error"] for j in jobs.values() if j["error"]})
    finally:
        stack.close()
        if redis is not None:
            redis.stop()
        cleanup_home(stack, args.keep)
    print(json.dumps(report, indent=2))
    ok = not report["answered_201_but_missing"] and not report["trained_to_the_end_more_than_once"]
    ok = ok and set(report["by_status"]) == {"succeeded"}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
