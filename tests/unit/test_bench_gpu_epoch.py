"""bench/gpu_epoch.py, the GPU throughput bench, on a tiny CPU configuration."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dyart.models import build_model

_PATH = Path(__file__).resolve().parents[2] / "bench" / "gpu_epoch.py"
_spec = importlib.util.spec_from_file_location("bench_gpu_epoch", _PATH)
gpu_epoch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_epoch)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_epoch_counts_every_pass_and_writes_the_table(tmp_path):
    results = tmp_path / "gpu.md"
    argv = [
        "--device", "cpu", "--arch", "wide_resnet_16_4_silu", "--n", "64",
        "--batch-size", "16", "--iterations", "2", "--dtype", "fp32",
        "--warmup-steps", "1", "--count-steps", "1", "--peak-tflops", "2",
        "--results", str(results),
    ]  # fmt: skip
    row = gpu_epoch.main(argv)

    model = build_model("wide_resnet_16_4_silu", num_classes=10, in_channels=3, image_size=32)
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(16, 3, 32, 32))
    forward = counter.get_total_flops() / 1e12
    # a clean step alone is forward + backward (3 forwards); DyART adds the search
    assert row["tflop_per_step"] > 3 * forward * 1.5
    assert (row["steps"], row["images"]) == (4, 64)
    assert row["searched"] > 0.5  # labels the search sees as correct: it runs on most points
    assert row["fraction"] == row["achieved_tflops"] / 2
    text = results.read_text()
    assert "| seconds per epoch |" in text
    assert f"{row['seconds']:.1f}" in text
