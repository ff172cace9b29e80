"""bench/search_quality.py: the figures it reports, and the error for a missing model."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "bench" / "search_quality.py"
_spec = importlib.util.spec_from_file_location("bench_search_quality", _PATH)
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)


def test_recall_counts_only_the_broken_points_the_search_finds_within_eps():
    # six points: the last is misclassified and must not count anywhere
    correct = torch.tensor([True, True, True, True, True, False])
    broken = torch.tensor([True, True, False, False, True, False])
    found = torch.tensor([True, True, True, False, True, True])
    margin = torch.tensor([0.1, 0.5, 0.2, math.inf, 0.29, 0.05])
    kept = torch.tensor([True, False, True, False, False, True])
    got = quality.summarise(correct, broken, found, margin, kept, eps=0.3)
    assert got["r_within"] == pytest.approx(3 / 5)  # points 0, 2, 4
    assert got["recall"] == pytest.approx(2 / 3)  # of 0, 1, 4: 0 and 4
    assert got["kept"] == pytest.approx(2 / 5)
    assert got["median_r"] == pytest.approx(0.2)  # of 0.1, 0.2, 0.29, 0.5 (lower median)


def test_recall_is_nan_when_the_attack_breaks_nothing():
    ones = torch.ones(3, dtype=torch.bool)
    got = quality.summarise(ones, ~ones, ones, torch.tensor([0.1, 0.4, 0.5]), ones, eps=0.3)
    assert math.isnan(got["recall"]) and got["r_within"] == pytest.approx(1 / 3)


def test_a_method_without_a_trained_model_names_the_file_and_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--models", str(tmp_path), "--methods", "dyart"])
    err = capsys.readouterr().err
    assert f"--methods dyart: no {tmp_path / 'dyart' / 'model-best.safetensors'}" in err
    assert "bench/robustness.py --train-only" in err
