"""bench/robustness.py's AutoAttack ledger: chunks add up, and processes may share it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "robustness.py"
_spec = importlib.util.spec_from_file_location("bench_robustness", _PATH)
robustness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(robustness)


def _chunk(n: int, clean: float, robust: float, seconds: float) -> dict:
    return {
        "eps": 0.3, "n": n, "clean_acc": clean, "robust_acc": robust, "seconds": seconds,
        "per_attack": {"apgd-ce": (clean + robust) / 2, "square": robust},
    }  # fmt: skip


def test_chunks_add_up_weighted_by_their_images(tmp_path):
    ledger = tmp_path / "ledger.json"
    key = robustness.chunk_key
    robustness.record_chunk(
        ledger, "w1", "dyart", key("standard", 0.3, 0, 250), _chunk(250, 1.0, 0.8, 10)
    )
    robustness.record_chunk(
        ledger, "w1", "dyart", key("standard", 0.3, 250, 300), _chunk(50, 0.8, 0.2, 5)
    )

    result = robustness.ledger_result(ledger, "w1", "standard", 0.3, n=300, size=250)

    assert result["n"] == 300
    assert result["clean_acc"] == pytest.approx((250 * 1.0 + 50 * 0.8) / 300)
    assert result["robust_acc"] == pytest.approx((250 * 0.8 + 50 * 0.2) / 300)
    assert result["per_attack"]["apgd-ce"] == pytest.approx((250 * 0.9 + 50 * 0.5) / 300)
    assert result["seconds"] == 15


def test_only_the_chunks_from_the_first_image_on_count(tmp_path):
    ledger = tmp_path / "ledger.json"
    key = robustness.chunk_key
    robustness.record_chunk(
        ledger, "w1", "dyart", key("standard", 0.3, 0, 250), _chunk(250, 1.0, 0.8, 10)
    )
    robustness.record_chunk(
        ledger, "w1", "dyart", key("standard", 0.3, 500, 750), _chunk(250, 1.0, 0.0, 10)
    )

    result = robustness.ledger_result(ledger, "w1", "standard", 0.3, n=1000, size=250)

    assert (result["n"], result["robust_acc"]) == (250, 0.8)  # 250-500 is missing
    assert robustness.ledger_result(ledger, "w2", "standard", 0.3, n=1000, size=250) is None
    assert robustness.ledger_result(ledger, "w1", "standard", 0.2, n=1000, size=250) is None


def _record_many(ledger: str, digest: str) -> None:
    for i in range(20):
        key = robustness.chunk_key("standard", 0.3, i * 10, i * 10 + 10)
        robustness.record_chunk(ledger, digest, digest, key, _chunk(10, 1.0, 0.5, 1))


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    ledger = str(tmp_path / "ledger.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(ledger, d)) for d in ("wa", "wb")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    entries = robustness.read_ledger(ledger)

    assert {d: len(entries[d]["chunks"]) for d in ("wa", "wb")} == {"wa": 20, "wb": 20}


def _table_only(
    tmp_path: Path, *extra: str, mode: str = "--table-only"
) -> subprocess.CompletedProcess:
    root = _PATH.parents[1]
    return subprocess.run(
        [sys.executable, str(_PATH), mode, "--methods", "clean", "--eps", "0.3",
         "--work-dir", str(tmp_path / "work"), "--results", str(tmp_path / "table.md"), *extra],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_table_only_builds_the_table_from_the_kept_model_and_the_ledger(tmp_path):
    kept = _PATH.parent / "results" / "robustness-models" / "clean" / "model-best.safetensors"
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()
    ledger = tmp_path / "ledger.json"
    key = robustness.chunk_key("standard", 0.3, 0, 250)
    robustness.record_chunk(ledger, digest, "clean", key, _chunk(250, 0.96, 0.012, 13))
    robustness.record_chunk(ledger, "other-weights", "clean", key, _chunk(250, 0.5, 0.5, 1))

    done = _table_only(tmp_path, "--ledger", str(ledger))

    assert done.returncode == 0, done.stderr
    row = next(line for line in (tmp_path / "table.md").read_text().splitlines()
               if line.startswith("| clean |"))  # fmt: skip
    assert "| 0.960 (250) | 0.012 (250) |" in row  # these weights' chunk, not the other's


def test_table_only_without_a_trained_model_says_which_and_where(tmp_path):
    done = _table_only(tmp_path, "--models", str(tmp_path / "none"))

    assert done.returncode != 0
    assert "--table-only: clean has no trained model" in done.stderr
    assert str(tmp_path / "none" / "clean") in done.stderr
    assert "Traceback" not in done.stderr


def test_train_only_reuses_the_kept_model_and_leaves_the_table_alone(tmp_path):
    table = tmp_path / "table.md"
    table.write_text("the committed table\n")

    done = _table_only(tmp_path, mode="--train-only")

    assert done.returncode == 0, done.stderr
    assert table.read_text() == "the committed table\n"
    reused = tmp_path / "work" / "clean" / "model-best.safetensors"
    kept = _PATH.parent / "results" / "robustness-models" / "clean" / "model-best.safetensors"
    assert reused.read_bytes() == kept.read_bytes()  # not trained again
    assert f"clean: {reused}" in done.stdout
    assert f"{table} left as it was" in done.stdout


def _timed_row(tmp_path: Path, method: str, machine: str, epochs: list[float]) -> dict:
    out = tmp_path / method
    out.mkdir()
    lines = [{"stage": "burn_in", "seconds": 1.0, "val_pgd_acc": 0.0}]
    lines += [
        {"stage": "train", "seconds": s, "val_pgd_acc": 0.1 * i} for i, s in enumerate(epochs)
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (out / "model-best.safetensors").write_bytes(method.encode())
    return {"method": method, "machine": machine, "train_seconds": sum(epochs), "out_dir": str(out)}


def test_cost_table_compares_fastest_epochs_only_within_one_machine(tmp_path):
    rows = [
        _timed_row(tmp_path, "clean", "cpu A", [4.0, 3.0]),
        _timed_row(tmp_path, "pgd_at", "cpu A", [30.0, 24.0]),
        _timed_row(tmp_path, "dyart", "cpu A", [33.0, 30.0, 31.0]),
        _timed_row(tmp_path, "mart", "cpu B", [20.0]),
    ]
    path = tmp_path / "cost.md"

    robustness.write_cost_table(path, rows, "the command", threads=1)

    cells = [line.split(" | ") for line in path.read_text().splitlines() if line.startswith("| ")]
    table = {c[0][2:]: c for c in cells[2:]}  # after the heading and the rule
    assert table["pgd_at"][1:7] == ["cpu A", "2", "54", "24.0", "8.0x", "1.00x"]
    assert table["dyart"][1:7] == ["cpu A", "3", "94", "30.0", "10.0x", "1.25x"]
    assert table["dyart"][7] == "0.200"  # best validation epoch
    assert table["mart"][5:7] == ["n/a (other machine)", "n/a (other machine)"]
    assert table["clean"][8] == hashlib.sha256(b"clean").hexdigest()[:8] + " |"
    assert "Command: `the command`" in path.read_text()


def test_train_only_with_a_cost_table_times_the_kept_rows(tmp_path):
    kept = _PATH.parent / "results" / "robustness-models" / "clean"
    row = json.loads((kept / "bench_row.json").read_text())
    cost = tmp_path / "cost.md"

    done = _table_only(tmp_path, "--cost-table", str(cost), mode="--train-only")

    assert done.returncode == 0, done.stderr
    line = next(x for x in cost.read_text().splitlines() if x.startswith("| clean |"))
    digest = hashlib.sha256((kept / "model-best.safetensors").read_bytes()).hexdigest()[:8]
    assert f"| {row['train_seconds']:.0f} |" in line and f"| {digest} |" in line
    assert "| 1.0x | n/a |" in line  # no PGD-AT row to compare with


def test_a_chunk_is_attacked_by_one_live_process_at_a_time(tmp_path):
    ledger = tmp_path / "ledger.json"
    key = robustness.chunk_key("standard", 0.3, 0, 250)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claims = {f"w1/{key}": {"pid": holder.pid, "since": 0.0}}
        (tmp_path / "ledger.json.claims").write_text(json.dumps(claims))
        assert not robustness.claim_chunk(ledger, "w1", key)  # a live process holds it
    finally:
        holder.kill()
        holder.wait()
    assert robustness.claim_chunk(ledger, "w1", key)  # its holder has ended: taken over
    assert robustness.claim_chunk(ledger, "w1", key)  # this process's own claim

    robustness.record_chunk(ledger, "w1", "dyart", key, _chunk(250, 1.0, 0.8, 10))

    assert not robustness.claim_chunk(ledger, "w1", key)  # done
    assert robustness.read_ledger(tmp_path / "ledger.json.claims") == {}


@pytest.mark.parametrize(
    ("flag", "value", "field", "recipe_value"),
    [("--batch-size", "64", "batch_size", 128), ("--architecture", "madry_cnn", "architecture",
     "small_cnn")],
)  # fmt: skip
def test_batch_size_and_model_apply_to_every_method_and_to_the_burn_in_they_share(
    flag, value, field, recipe_value
):
    """A run at another batch size, or with another model, trains its own burn-in: the
    kept recipe one (and the models trained from it) must not be reused for it."""
    recipe = {m: robustness.base_config(robustness.parse_args([]), m) for m in ("dyart", "mart")}
    other_args = robustness.parse_args([flag, value])
    wanted = type(recipe_value)(value)
    for method, config in recipe.items():
        other = robustness.base_config(other_args, method)
        assert (getattr(config, field), getattr(other, field)) == (recipe_value, wanted)
        assert other.burn_in_key() != config.burn_in_key()
        assert other.lr == config.lr and other.hparams == config.hparams
    assert (
        robustness.base_config(other_args, "dyart").burn_in_key()
        == robustness.base_config(other_args, "mart").burn_in_key()
    )


def test_cost_relative_to_clean_only_for_rows_timed_on_clean_s_machine():
    fastest = {"clean": 4.0, "pgd_at": 40.0, "dyart": 30.0}
    clean = {"method": "clean"}  # rows from before the machine was recorded: one run
    assert robustness.relative_cost({"method": "pgd_at"}, clean, fastest) == "10.0x"
    moved = {"method": "dyart", "machine": "another CPU"}
    assert robustness.relative_cost(moved, clean, fastest) == "n/a (other machine)"
    here = {"method": "clean", "machine": "another CPU"}
    assert robustness.relative_cost(moved, here, fastest) == "7.5x"
    assert robustness.relative_cost(moved, None, fastest) == "n/a"
