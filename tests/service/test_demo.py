"""The demo job's console output (``make run``), against a real API and worker.

The demo follows its job over HTTP and prints each finished epoch: every epoch
once, with that epoch's own validation figures, then where the results are.
"""

import json
import re
from pathlib import Path

from api import demo
from tests.worker.conftest import TINY_JOB

# named as the demo's, so the demo adopts it instead of posting the MNIST recipe
SMALL = {**TINY_JOB, "name": demo.DEMO_NAME}


def test_the_demo_prints_each_epoch_once_with_its_own_figures(
    live_server, worker_process, settings, capsys
):
    token = live_server.headers["Authorization"].removeprefix("Bearer ")
    client = demo.DemoClient(live_server.url, token)
    posted = client.call("POST", "/jobs", SMALL)

    job, created = demo.submit_once(client)
    assert (job["id"], created) == (posted["id"], False)  # found by name, not posted again

    artifacts = Path(settings.artifacts_dir)
    demo.follow(client, job["id"], artifacts, live_server.url, poll=0.2)
    out = capsys.readouterr().out

    rows = client.call("GET", f"/jobs/{job['id']}/metrics")["items"]
    epochs = [("train", e) for e in range(1, SMALL["epochs"] + 1)]
    assert [(r["stage"], r["epoch"]) for r in rows] == [("burn_in", 1), *epochs]
    printed = re.findall(r"^demo: (\w+) epoch (\d+) done: (.*)$", out, re.MULTILINE)
    assert [(stage, int(epoch)) for stage, epoch, _ in printed] == [
        (r["stage"], r["epoch"]) for r in rows
    ]
    for (_, _, figures), row in zip(printed, rows, strict=True):
        expected = f"validation clean {row['val_clean_acc']:.3f}, PGD {row['val_pgd_acc']:.3f}"
        assert figures == expected, json.dumps(row)
    assert f"demo job {job['id']} succeeded" in out
    assert f"checkpoints and results: {artifacts / 'jobs' / job['id']}" in out
    assert f"AutoAttack fast on {SMALL['eval_n']} test images (quick evaluation):" in out
    assert re.search(r"final checkpoint: http://\S+/download\?format=safetensors", out), out
