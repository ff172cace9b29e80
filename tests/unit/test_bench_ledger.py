"""bench/robustness.py's AutoAttack ledger: chunks add up, and processes may share it."""

from __future__ import annotations

import importlib.util
import multiprocessing
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
