"""Fault: the worker's compute raises in the middle of a training step.

Starts the API and one worker (SQLite and the serverless broker by default, or
Postgres and a redis-server of its own with ``--postgres``) through
``step_fault_worker.py``: the ``--at-step``-th training step of that worker
process raises ``RuntimeError: CUDA error: an illegal memory access ...`` (the
fault is in the worker's process only; API, database and broker are the real
ones). Submits one tiny job (``clean`` method, ``--epochs`` epochs, no burn-in)
and waits for it to end. Reports what the user sees (status, error, the log),
which checkpoints are offered and whether each downloads complete (size and
sha256 of the bytes served against the row), then resumes the job through the
API and reports whether it resumed from its last checkpoint and succeeded.

    .venv/bin/python bench/faults/worker_raises.py
    .venv/bin/python bench/faults/worker_raises.py --postgres --at-step 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import httpx
from common import TINY_JOB, Stack, cleanup_home, start_redis, summarize, wait

HERE = Path(__file__).resolve().parent


def offered(client: httpx.Client, job_id: str) -> list[dict]:
    """The job's checkpoints as listed, each downloaded and checked against its row."""
    out = []
    for row in client.get(f"/api/v1/jobs/{job_id}/checkpoints").json()["items"]:
        body = client.get(row["files"]["safetensors"]).content
        complete = len(body) == row["size"] and hashlib.sha256(body).hexdigest() == row["sha256"]
        out.append(
            {"kind": row["kind"], "stage": row["stage"], "epoch": row["epoch"],
             "size": row["size"], "download_complete": complete}
        )  # fmt: skip
    return sorted(out, key=lambda c: c["kind"])


def job_view(client: httpx.Client, job_id: str) -> dict:
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    return {k: job.get(k) for k in ("status", "stage", "epoch", "attempts", "error")}


def wait_final(client: httpx.Client, job_id: str, timeout: float) -> dict:
    def final() -> dict | None:
        view = job_view(client, job_id)
        return view if view["status"] in ("succeeded", "failed", "canceled") else None

    return wait(final, f"job {job_id} to end", timeout, every=0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--at-step", type=int, default=40, help="the step that raises")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help="Postgres + own redis-server")
    parser.add_argument("--redis-port", type=int, default=6393)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    redis = None
    if args.postgres:
        stack = Stack(postgres=True, broker_url=f"redis://127.0.0.1:{args.redis_port}/3")
        redis = start_redis(args.redis_port, stack.home / "redis.log")
    else:
        stack = Stack()
    spec = {**TINY_JOB, "method": "clean", "burn_in_epochs": 0, "epochs": args.epochs}
    spec.pop("hparams")
    report: dict = {
        "scenario": "the worker's training step raises",
        "backend": "postgres+redis" if args.postgres else "sqlite",
        "raises_at_step": args.at_step,
        "epochs": args.epochs,
    }
    try:
        stack.start_api()
        launcher = [sys.executable, str(HERE / "step_fault_worker.py")]
        stack.start_worker(launcher, DYART_FAULT_RAISE_AT_STEP=str(args.at_step))
        with stack.client() as client:
            created = client.post("/api/v1/jobs", json={**spec, "name": "raises"})
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            report["after_the_fault"] = wait_final(client, job_id, args.timeout)
            log = client.get(f"/api/v1/jobs/{job_id}/log", params={"tail": 500}).json()
            lines = log["lines"]
            report["log_errors"] = [
                line["message"].splitlines()[0]
                + (" [+ traceback]" if "\n" in line["message"] else "")
                for line in lines
                if line["level"] == "ERROR"
            ]
            report["offered_after_the_fault"] = offered(client, job_id)
            report["checkpoints_on_disk_after_the_fault"] = stack.checkpoint_audit()
            resumed = client.post(f"/api/v1/jobs/{job_id}/resume")
            report["resume"] = {"status": resumed.status_code, "job": job_view(client, job_id)}
            report["after_resume"] = wait_final(client, job_id, args.timeout)
            log = client.get(f"/api/v1/jobs/{job_id}/log", params={"tail": 500}).json()
            report["resume_log"] = [
                line["message"]
                for line in log["lines"]
                if line["message"].startswith(("attempt", "resum", "train epoch"))
            ]
            metrics = client.get(f"/api/v1/jobs/{job_id}/metrics").json()["items"]
            per_epoch = Counter((m["stage"], m["epoch"]) for m in metrics)
            report["metric_rows"] = len(metrics)
            report["epochs_with_two_rows"] = sorted(str(k) for k, n in per_epoch.items() if n > 1)
            report["offered_after_resume"] = offered(client, job_id)
        jobs = stack.jobs()
        report.update(summarize(stack, jobs))
        # A failed run and the resumed run each end the job: two final results is
        # the expected count here, not a job trained twice.
        report.pop("trained_to_the_end_more_than_once")
        report["task_runs"] = {o: n for (_, o), n in sorted(stack.run_results().items())}
    finally:
        stack.close()
        if redis is not None:
            redis.stop()
        cleanup_home(stack, args.keep)
    print(json.dumps(report, indent=2, default=str))
    after = report.get("after_the_fault", {})
    ok = after.get("status") == "failed" and "CUDA error" in (after.get("error") or "")
    ok = ok and report.get("after_resume", {}).get("status") == "succeeded"
    ok = ok and all(c["download_complete"] for c in report.get("offered_after_resume", []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
