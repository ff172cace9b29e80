"""The demo job of ``dyart-service serve --demo``: submitted over HTTP like any job.

On a service with no job named ``demo`` yet, it posts the ``mnist10k_dyart``
recipe (clean burn-in, DyART, AutoAttack on MNIST-10k), prints each stage and
each finished epoch's validation as the worker reports them, and ends by printing
where the checkpoint and the results are. It only talks to the API, so it shows
exactly what a user sees.
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
        lines.extend(f"    warning: {w}" for w in ev.get("warnings") or [])
    lines.append(f"  dashboard: {url}/#/jobs/{job['id']}")
    return "\n".join(lines)


def epoch_line(row: dict[str, Any]) -> str:
    """One finished epoch, from its own metrics row."""
    line = f"{row['stage']} epoch {row['epoch']} done"
    if row.get("val_clean_acc") is not None:
        line += f": validation clean {row['val_clean_acc']:.3f}"
        if row.get("val_pgd_acc") is not None:
            line += f", PGD {row['val_pgd_acc']:.3f}"
    return line


def follow(client: DemoClient, job_id: str, artifacts: Path, url: str, poll: float = 5.0) -> None:
    """Print the job's stage changes and every finished epoch until it ends, then its results.

    Epochs are printed from the job's metrics rows, each with its own figures, so a
    poll that comes late neither skips an epoch nor pairs one epoch with another's
    validation.
    """
    seen, printed = None, set()
    while True:
        job = client.call("GET", f"/jobs/{job_id}")
        for row in client.call("GET", f"/jobs/{job_id}/metrics")["items"]:
            if (row["stage"], row["epoch"]) not in printed:
                printed.add((row["stage"], row["epoch"]))
                print(f"demo: {epoch_line(row)}", flush=True)
        now = (job["status"], job["stage"])
        if now != seen:
            seen = now
            print(f"demo: {job['status']} {job['stage'] or 'starting'}", flush=True)
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
