"""The demo job of ``dyart-service serve --demo``: submitted over HTTP like any job.

On a service with no job named ``demo`` yet, it posts the ``mnist10k_dyart``
recipe (clean burn-in, DyART, AutoAttack on MNIST-10k), prints each stage and
epoch as the worker reports it, and ends by printing where the checkpoint and
the results are. It only talks to the API, so it shows exactly what a user sees.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

RECIPE = Path(__file__).resolve().parents[1] / "dyart" / "configs" / "mnist10k_dyart.yaml"
DEMO_NAME = "demo: mnist10k, burn-in + DyART + AutoAttack"
FINAL = ("succeeded", "failed", "canceled")


def demo_spec() -> dict[str, Any]:
    """The job request of the demo: the recipe file, with its name."""
    spec = yaml.safe_load(RECIPE.read_text())
    return {"name": DEMO_NAME, **spec}


class DemoClient:
    """A tiny JSON client of the API on loopback (the embedded mode needs no token)."""

    def __init__(self, base: str, token: str | None = None):
        self.base = base.rstrip("/") + "/api/v1"
        self.headers = {"content-type": "application/json"}
        if token:
            self.headers["authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=self.headers
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def _wait_healthy(client: DemoClient, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.call("GET", "/health")
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False


def submit_once(client: DemoClient) -> tuple[dict[str, Any], bool]:
    """The demo job: the existing one, or a new one. Returns (job, created)."""
    page = client.call("GET", "/jobs?limit=200")
    for job in page["items"]:
        if job["name"] == DEMO_NAME:
            return job, False
    return client.call("POST", "/jobs", demo_spec()), True


def describe_end(client: DemoClient, job: dict[str, Any], artifacts: Path, url: str) -> str:
    """What to print when the demo job has ended: status, files, AutoAttack table."""
    error = f": {job['error']}" if job["error"] else ""
    lines = [f"demo job {job['id']} {job['status']}{error}"]
    if job["status"] != "succeeded":
        return "\n".join(lines)
    folder = artifacts / "jobs" / job["id"]
    lines.append(f"  checkpoints and results: {folder}")
    for ckpt in client.call("GET", f"/jobs/{job['id']}/checkpoints")["items"]:
        if ckpt["kind"] in ("best", "final"):
            lines.append(f"  {ckpt['kind']} checkpoint: {url}{ckpt['files']['safetensors']}")
    for ev in client.call("GET", f"/jobs/{job['id']}/evaluations")["items"]:
        grade = "leaderboard-grade" if ev["leaderboard_grade"] else "quick evaluation"
        lines.append(f"  AutoAttack {ev['preset']} on {ev['n']} test images ({grade}):")
        for row in ev["results"]:
            lines.append(
                f"    eps {row['eps']:.3g}: clean {row['clean_acc']:.3f}, "
                f"robust {row['robust_acc']:.3f}"
            )
    lines.append(f"  dashboard: {url}/#/jobs/{job['id']}")
    return "\n".join(lines)


def follow(client: DemoClient, job_id: str, artifacts: Path, url: str, poll: float = 5.0) -> None:
    """Print stage/epoch changes of the job until it ends, then where its results are."""
    seen = None
    while True:
        job = client.call("GET", f"/jobs/{job_id}")
        now = (job["status"], job["stage"], job["epoch"])
        if now != seen:
            seen = now
            acc = job["latest_metrics"]
            extra = ""
            if acc.get("val_clean_acc") is not None:
                extra = f" (validation clean {acc['val_clean_acc']:.3f}"
                if acc.get("val_pgd_acc") is not None:
                    extra += f", PGD {acc['val_pgd_acc']:.3f}"
                extra += ")"
            stage = job["stage"]
            where = f"{stage} epoch {job['epoch'] or 0}" if stage in ("burn_in", "train") else ""
            where = where or (stage or "starting")
            print(f"demo: {job['status']} {where}{extra}", flush=True)
        if job["status"] in FINAL:
            print(describe_end(client, job, artifacts, url), flush=True)
            return
        time.sleep(poll)


def start(url: str, artifacts: Path) -> threading.Thread:
    """Submit (once) and follow the demo job in a daemon thread beside the server."""

    def run() -> None:
        client = DemoClient(url)
        try:
            if not _wait_healthy(client):
                print("demo: the API did not come up; no demo job submitted", flush=True)
                return
            job, created = submit_once(client)
            verb = "submitted" if created else "already there:"
            page = f"{url}/#/jobs/{job['id']}"
            print(f"demo: {verb} job {job['id']} — watch it at {page}", flush=True)
            follow(client, job["id"], artifacts, url)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
            print(f"demo: stopped following the demo job ({e})", flush=True)

    thread = threading.Thread(target=run, name="demo", daemon=True)
    thread.start()
    return thread
