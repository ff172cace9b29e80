"""Fault: the artifact disk fills up while a job writes its checkpoints.

Mounts a small tmpfs (``--size``, default 16 MiB; needs root) as the artifact
folder of a fresh service (SQLite, the serverless broker, the API and one worker).
Three cases, each with its own tiny job:

* ``full-at-start``: the disk is filled (all but 8 KiB) before the job is submitted,
  so its first checkpoint write fails part-way;
* ``full-mid-run``: the disk is filled as soon as the job's first checkpoint row
  appears, so a later write (training state, best/final model) fails part-way;
* ``full-at-burn-in-reuse``: as the first, for a job with the first job's burn-in
  settings, whose first write is the copy of that job's ``burn_in.pt``.

For each: what the user sees (status, error), whether any checkpoint offered for
download is incomplete (size or sha256 differs from its row) and whether temporary
files are left behind; then the space is freed and the job is resumed through the
API, and the script reports whether it then ends ``succeeded``.

    sudo .venv/bin/python bench/faults/disk_full.py
    .venv/bin/python bench/faults/disk_full.py --size 32m
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FINAL, Stack, cleanup_home, wait

FREE_LEFT = 8 * 1024
# (name, fill once the first checkpoint row appears?, seed). The third job has the
# first one's burn-in settings, so it starts by copying that job's burn_in.pt.
CASES = (
    ("full-at-start", False, 0),
    ("full-mid-run", True, 7),
    ("full-at-burn-in-reuse", False, 0),
)


def fill(folder: Path, leave: int = FREE_LEFT) -> Path:
    """Write a filler file so that only about ``leave`` bytes stay free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    filler = folder / "filler.bin"
    with filler.open("wb") as f:
        left = max(0, free - leave)
        while left > 0:
            try:
                left -= f.write(b"\0" * min(left, 1 << 20))
            except OSError:
                break
    return filler


def job_view(client, job_id: str) -> dict:
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    listed = client.get(f"/api/v1/jobs/{job_id}/checkpoints").json()["items"]
    return {
        "status": job["status"],
        "stage": job["stage"],
        "attempts": job["attempts"],
        "error": job["error"],
        "checkpoints_listed": [c["kind"] for c in listed],
    }


def wait_final(client, job_id: str, timeout: float) -> dict:
    def done() -> dict | None:
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        return view if view["status"] in FINAL else None

    return wait(done, f"job {job_id} to end", timeout, every=0.5)


def files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def case(
    stack: Stack, client, mount: Path, name: str, mid_run: bool, seed: int, timeout: float
) -> dict:
    filler = None if mid_run else fill(mount)
    created = stack.submit(client, name, seed=seed)
    job_id = created.json()["id"]
    if mid_run:
        wait(
            lambda: stack.rows("SELECT 1 FROM checkpoint WHERE job_id = :j", j=job_id),
            "the first checkpoint row", timeout, every=0.05,
        )  # fmt: skip
        filler = fill(mount)
    wait_final(client, job_id, timeout)
    result = {"while_full": job_view(client, job_id), "audit_full": stack.checkpoint_audit()}
    result["files_while_full"] = files(mount / "jobs" / job_id)
    filler.unlink()
    resumed = client.post(f"/api/v1/jobs/{job_id}/resume")
    result["resume_status"] = resumed.status_code
    if resumed.status_code == 202:
        wait_final(client, job_id, timeout)
    result["after_resume"] = job_view(client, job_id)
    result["audit_after"] = stack.checkpoint_audit()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="16m", help="tmpfs size")
    parser.add_argument("--timeout", type=float, default=600.0, help="per job")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = parser.parse_args()
    mount = Path(tempfile.mkdtemp(prefix="dyart-artifacts-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={args.size}", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        print(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); run as root")
        return 2
    report: dict = {"scenario": "artifact disk full during checkpoint writes", "tmpfs": args.size}
    stack = Stack(artifacts_dir=mount)
    try:
        stack.start_api()
        stack.start_worker()
        with stack.client() as client:
            for name, mid_run, seed in CASES:
                start = time.monotonic()
                report[name] = case(stack, client, mount, name, mid_run, seed, args.timeout)
                report[name]["seconds"] = round(time.monotonic() - start)
        report["api_alive"] = stack.api.alive()
    finally:
        stack.close()
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()
        cleanup_home(stack, args.keep)
    print(json.dumps(report, indent=2))
    cases = [report[name] for name, _, _ in CASES]
    clean = all(
        not c[a].get("damaged") and not c[a].get("missing") and not c[a].get("temp_files_left")
        for c in cases
        for a in ("audit_full", "audit_after")
    )
    resumed = all(c["after_resume"]["status"] == "succeeded" for c in cases)
    told = all(
        (c["while_full"]["error"] or "").startswith("artifact disk full: no space left in")
        for c in cases
    )
    return 0 if clean and resumed and told else 1


if __name__ == "__main__":
    sys.exit(main())
