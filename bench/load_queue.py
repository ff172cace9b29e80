"""Load: a deep queue of tiny jobs drained by several workers, the API sampled meanwhile.

Starts, on loopback, a Postgres cluster of its own (``initdb`` into a temporary
folder, port ``--pg-port``; never the machine's shared server), a redis-server
of its own (``--redis-port``), the API and, once ``--jobs`` tiny jobs have been
submitted one after another through the API, ``--workers`` solo-pool Celery
workers. While they drain the queue, a client samples the API's latency of
``GET /api/v1/jobs?limit=50`` and ``GET /api/v1/jobs/{id}`` (a random job),
alternately. The service's timings are the production defaults unless given.

Reports: whether every job ended ``succeeded``; whether any ran twice (the job
rows' attempts, the "attempt N started" lines in the job logs, and the task
results in the workers' logs); the messages the sweep sent again for jobs still
waiting in the queue, and those left in the broker once every job has ended;
the order jobs started in against the order they were submitted in (the largest
inversion); the drain time and throughput; and the API's p50/p99/max latency
during the drain.

    .venv/bin/python bench/load_queue.py --jobs 100 --workers 4
    .venv/bin/python bench/load_queue.py --jobs 1000 --workers 8
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from common import (  # noqa: E402
    FINAL,
    PRODUCTION_TIMINGS,
    PrivatePostgres,
    Stack,
    cleanup_home,
    start_redis,
    wait,
)

TINY = {
    "dataset": "synthetic",
    "architecture": "mlp",
    "method": "clean",
    "epochs": 1,
    "schedule": "cosine",
    "burn_in_epochs": 0,
    "batch_size": 64,
    "val_size": 64,
    "val_pgd_steps": 1,
    "eval_preset": "fast",
    "eval_n": 10,
    "eval_eps": [0.1],
}
_ATTEMPT = re.compile(r"^attempt (\d+) started")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Sampler(threading.Thread):
    """Alternates the two GETs as one user would, ``every`` seconds apart."""

    def __init__(self, stack: Stack, ids: list[str], every: float):
        super().__init__(name="sampler", daemon=True)
        self.stack, self.ids, self.every = stack, ids, every
        self.samples: dict[str, list[float]] = {"list": [], "get": []}
        self.failures: Counter = Counter()
        self._halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(0)
        with self.stack.client(timeout=60) as client:
            while not self._halt.is_set():
                for kind in ("list", "get"):
                    path = (
                        "/api/v1/jobs" if kind == "list" else f"/api/v1/jobs/{rng.choice(self.ids)}"
                    )
                    params = {"limit": 50} if kind == "list" else None
                    start = time.perf_counter()
                    try:
                        response = client.get(path, params=params)
                        status = response.status_code
                    except Exception as exc:  # a dropped connection is a result too
                        status = type(exc).__name__
                    elapsed = time.perf_counter() - start
                    if status == 200:
                        self.samples[kind].append(elapsed)
                    else:
                        self.failures[f"{kind} {status}"] += 1
                    self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def summary(self) -> dict:
        out = {}
        for kind, name in (("list", "GET /jobs?limit=50"), ("get", "GET /jobs/{id}")):
            ms = [s * 1000 for s in self.samples[kind]]
            if ms:
                out[name] = {
                    "n": len(ms),
                    "p50_ms": round(statistics.median(ms), 1),
                    "p99_ms": round(percentile(ms, 99), 1),
                    "max_ms": round(max(ms), 1),
                }
        out["non_200"] = dict(self.failures)
        return out


def start_order(rows: list, submitted: list[str]) -> dict:
    """Start order against submission order: inversions, the largest one, by rank and time."""
    rank = {job_id: i for i, job_id in enumerate(submitted)}
    started = sorted((r for r in rows if r.started_at is not None), key=lambda r: r.started_at)
    order = [rank[r.id] for r in started]
    times = {rank[r.id]: r.started_at for r in started}
    inversions, largest, worst = 0, 0, None
    for pos, j in enumerate(order):  # j started at position pos
        earlier_started_later = [i for i in order[pos + 1 :] if i < j]
        inversions += len(earlier_started_later)
        if earlier_started_later:
            i = min(earlier_started_later)
            if j - i > largest:
                largest, worst = j - i, (i, j)
    out = {
        "started": len(order),
        "inverted_pairs": inversions,
        "largest_inversion_in_submission_ranks": largest,
        "largest_displacement": max((abs(p - j) for p, j in enumerate(order)), default=0),
    }
    if worst is not None:
        i, j = worst
        lead = (times[i] - times[j]).total_seconds()
        out["largest_inversion"] = (
            f"job #{j} started {lead * 1000:.0f} ms before job #{i}, submitted {j - i} places later"
        )
    return out


def runs_from_worker_logs(stack: Stack) -> dict:
    """Task runs per job from the workers' result lines, and exceptions logged."""
    runs = stack.run_results()
    finals = Counter(
        job for (job, outcome), n in runs.items() for _ in range(n) if outcome in FINAL
    )
    text = "\n".join(w.output() for w in stack.workers)
    return {
        "task_results_by_outcome": dict(Counter(o for (_, o), n in runs.items() for _ in range(n))),
        "jobs_ended_by_more_than_one_run": sorted(j for j, n in finals.items() if n > 1),
        "tasks_raised": text.count("raised unexpected"),
        "sweep_passes_that_resent": len(re.findall(r"re-sent queued jobs \['", text)),
        "messages_resent_by_sweep": sum(
            len(re.findall(r"[0-9a-f]{32}", ids))
            for ids in re.findall(r"re-sent queued jobs \[([^\]]*)\]", text)
        ),
    }


def broker_backlog(port: int) -> int:
    """Messages still waiting in our redis-server's default queue (duplicates, once drained)."""
    import redis as redis_client

    with redis_client.Redis(host="127.0.0.1", port=port, db=0) as r:
        return int(r.llen("celery"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--pg-port", type=int, default=5498)
    parser.add_argument("--redis-port", type=int, default=6394)
    parser.add_argument("--sample-every", type=float, default=0.25, help="seconds between GETs")
    parser.add_argument("--timeout", type=float, default=3600.0, help="for the queue to drain")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument(
        "--timings",
        choices=("production", "fault"),
        default="production",
        help="heartbeat/stale/sweep/resend: the defaults (5/60/10/300 s) or the fault "
        "scripts' short ones (1/6/1/20 s)",
    )
    args = parser.parse_args()
    env = PRODUCTION_TIMINGS if args.timings == "production" else {}
    pg = PrivatePostgres(args.pg_port, options=("max_connections=400",))
    pg.start()
    stack = redis = sampler = None
    report: dict = {
        "scenario": "deep queue of tiny jobs",
        "jobs": args.jobs,
        "workers": args.workers,
        "timings": args.timings,
        "job": TINY,
    }
    try:
        url = pg.create_database("dyart_load")
        stack = Stack(
            broker_url=f"redis://127.0.0.1:{args.redis_port}/0", DYART_DATABASE_URL=url, **env
        )
        redis = start_redis(args.redis_port, stack.home / "redis.log")
        stack.start_api()
        submitted: list[str] = []
        start = time.monotonic()
        with stack.client() as client:
            for i in range(args.jobs):
                response = client.post("/api/v1/jobs", json={**TINY, "name": f"load-{i}"})
                if response.status_code != 201:
                    raise RuntimeError(
                        f"submission {i} refused: {response.status_code} {response.text}"
                    )
                submitted.append(response.json()["id"])
        report["submit_seconds"] = round(time.monotonic() - start, 1)
        launched = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda _: stack.start_worker(), range(args.workers)))
        report["workers_ready_seconds"] = round(time.monotonic() - launched, 1)
        sampler = Sampler(stack, submitted, args.sample_every)  # every worker is running
        sampler.start()

        def drained() -> bool:
            rows = stack.rows(
                "SELECT count(*) AS n FROM job "
                "WHERE status NOT IN ('succeeded', 'failed', 'canceled')"
            )
            return rows[0].n == 0

        wait(drained, "the queue to drain", args.timeout, every=1.0)
        report["drain_seconds_from_worker_launch"] = round(time.monotonic() - launched, 1)
        report["broker_messages_left_when_drained"] = broker_backlog(args.redis_port)
        sampler.stop()
        rows = stack.rows(
            "SELECT id, status, attempts, error, created_at, started_at, finished_at FROM job"
        )
        first = min(r.started_at for r in rows if r.started_at)
        last = max(r.finished_at for r in rows if r.finished_at)
        span = (last - first).total_seconds()
        report["drain_seconds_first_start_to_last_end"] = round(span, 1)
        report["jobs_per_minute"] = round(len(rows) / span * 60, 1) if span else None
        report["by_status"] = dict(Counter(r.status for r in rows))
        report["errors"] = sorted({r.error for r in rows if r.error})[:5]
        report["attempts_from_rows"] = dict(Counter(r.attempts for r in rows))
        attempt_lines = stack.rows(
            "SELECT job_id, message FROM job_log WHERE message LIKE 'attempt %'"
        )
        per_job = Counter(r.job_id for r in attempt_lines if _ATTEMPT.match(r.message))
        report["attempt_lines_per_job"] = dict(Counter(per_job[r.id] for r in rows))
        report["worker_logs"] = runs_from_worker_logs(stack)
        report["jobs_per_worker"] = sorted(
            (_finals_in(w.output()) for w in stack.workers), reverse=True
        )
        report["start_order"] = start_order(rows, submitted)
        report["api_latency_during_drain"] = sampler.summary()
    finally:
        steps = [sampler.stop if sampler else None, stack.close if stack else None]
        steps += [redis.stop if redis else None, pg.close]
        for step in steps:
            try:
                if step is not None:
                    step()
            except Exception as exc:  # clean up the rest regardless
                print(f"cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)
        if stack is not None:
            cleanup_home(stack, args.keep)
    print(json.dumps(report, indent=2, default=str))
    ok = report.get("by_status") == {"succeeded": args.jobs}
    ok = ok and not report["worker_logs"]["jobs_ended_by_more_than_one_run"]
    ok = ok and set(report["attempts_from_rows"]) == {1}
    return 0 if ok else 1


def _finals_in(text: str) -> int:
    return len(
        re.findall(r"succeeded in [\d.]+s: \{'job_id': '[0-9a-f]+', 'status': 'succeeded'", text)
    )


if __name__ == "__main__":
    sys.exit(main())
