"""The whole service, end to end: a real uvicorn and a real Celery worker.

Submit a small ``digits`` DyART job over HTTP, follow its live events through
burn-in, training and AutoAttack evaluation until ``end``, read its metrics and
AutoAttack results, download the checkpoint (safetensors + card) and load it
with ``dyart.load_model``. Runs on SQLite with the serverless broker, and on
Postgres with Redis when DYART_TEST_BACKEND=postgres.
"""

import hashlib
import json

import httpx

JOB = {
    "name": "end-to-end",
    "dataset": "digits",
    "architecture": "mlp",
    "method": "dyart",
    "burn_in_epochs": 1,
    "epochs": 2,
    "schedule": "cosine",
    "batch_size": 64,
    "val_size": 128,
    "val_pgd_steps": 3,
    "eval_preset": "fast",
    "eval_eps": [0.1],
    "eval_n": 100,
    "hparams": {"iterations": 5},
}


def follow_events(client, job_id, timeout=400.0):
    """Every (event, data) of the job's SSE stream until ``end``."""
    events, kind = [], None
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
                if kind == "end":
                    break
    return events


def download(client, url, path):
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert hashlib.sha256(response.content).hexdigest() == response.headers["x-checksum-sha256"]
    path.write_bytes(response.content)
    return path


def test_job_runs_end_to_end_over_http(live_server, worker_process, tmp_path):
    with httpx.Client(base_url=live_server.url, headers=live_server.headers, timeout=60) as client:
        _end_to_end(client, tmp_path)


def _end_to_end(client: httpx.Client, tmp_path) -> None:
    created = client.post("/api/v1/jobs", json=JOB)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    events = follow_events(client, job_id)
    last_job = [data for kind, data in events if kind == "job"][-1]
    assert events[-1] == ("end", {"status": "succeeded"}), last_job["error"]
    # Stages are seen through their rows (a 0.5 s poll may miss a short stage's job state).
    metric_stages = [data["stage"] for kind, data in events if kind == "metric"]
    assert metric_stages[0] == "burn_in" and metric_stages[-1] == "train", metric_stages
    evaluated = [data for kind, data in events if kind == "evaluation"]
    assert evaluated and evaluated[-1]["status"] == "succeeded"

    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["error"] is None
    metrics = client.get(f"/api/v1/jobs/{job_id}/metrics").json()["items"]
    assert [(m["stage"], m["epoch"]) for m in metrics if m["stage"] == "train"][-1][1] >= 2
    assert {"burn_in", "train"} <= {m["stage"] for m in metrics}

    [evaluation] = client.get(f"/api/v1/jobs/{job_id}/evaluations").json()["items"]
    assert evaluation["status"] == "succeeded" and evaluation["preset"] == "fast"
    assert evaluation["leaderboard_grade"] is False  # a quick evaluation, not a leaderboard number
    [result] = evaluation["results"]
    assert result["eps"] == 0.1 and 0.0 <= result["robust_acc"] <= result["clean_acc"] <= 1.0

    checkpoints = client.get(f"/api/v1/jobs/{job_id}/checkpoints").json()["items"]
    final = next(c for c in checkpoints if c["kind"] == "final")
    weights = download(client, final["files"]["safetensors"], tmp_path / "model.safetensors")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == final["sha256"]
    download(client, final["files"]["card"], tmp_path / "model.json")

    import torch

    import dyart

    model = dyart.load_model(weights)
    with torch.no_grad():
        logits = model(torch.rand(3, 1, 8, 8))
    assert logits.shape == (3, 10) and not model.training
