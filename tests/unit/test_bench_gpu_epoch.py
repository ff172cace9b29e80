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


# bf16 runs on the small CNN: on a CPU without bf16 instructions (AVX512-BF16) a bf16
# WideResNet step is 15-20x slower than fp32, minutes for this test alone
@pytest.mark.parametrize(
    ("arch", "run", "title", "precision", "channels_last"),
    [
        ("wide_resnet_16_4_silu", "fp32", "fp32", "fp32", False),
        ("small_cnn", "bf16+cl", "bf16 autocast, channels-last", "bf16", True),
    ],
)
def test_one_epoch_counts_every_pass_and_writes_the_table(
    tmp_path, arch, run, title, precision, channels_last
):
    results = tmp_path / "gpu.md"
    argv = [
        "--device", "cpu", "--arch", arch, "--n", "64",
        "--batch-size", "16", "--iterations", "2", "--runs", run,
        "--warmup-steps", "1", "--count-steps", "1", "--peak-tflops", "2",
        "--results", str(results),
    ]  # fmt: skip
    (row,) = gpu_epoch.main(argv)

    model = build_model(arch, num_classes=10, in_channels=3, image_size=32)
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(16, 3, 32, 32))
    forward = counter.get_total_flops() / 1e12
    # a clean step alone is forward + backward (3 forwards); DyART adds the search
    assert row["tflop_per_step"] > 3 * forward * 1.5
    assert (row["steps"], row["timed_steps"], row["images"]) == (4, 4, 64)
    # the labels are the model's own predictions on each augmented batch, and the
    # weights stay put: the search runs on (nearly) every point
    assert row["searched"] > 0.9
    assert row["fraction"] == row["achieved_tflops"] / 2
    assert (row["precision"], row["channels_last"]) == (precision, channels_last)
    text = results.read_text()
    assert "| run | seconds per epoch |" in text
    assert f"| {title} | {row['seconds']:.1f} |" in text


def test_a_partial_epoch_is_scaled_and_says_so(tmp_path):
    results = tmp_path / "gpu.md"
    argv = [
        "--device", "cpu", "--arch", "mlp", "--n", "64", "--batch-size", "16",
        "--iterations", "1", "--runs", "fp32", "--steps", "2", "--warmup-steps", "1",
        "--count-steps", "1", "--results", str(results),
    ]  # fmt: skip
    (row,) = gpu_epoch.main(argv)
    assert (row["steps"], row["timed_steps"]) == (4, 2)
    assert "timed over its epoch's first 2 of 4 steps and scaled" in results.read_text()


def test_a_bad_run_names_what_it_expected(capsys):
    with pytest.raises(SystemExit):
        gpu_epoch.parse_args(["--runs", "fp16"])
    assert "'fp16': expected a precision (fp32, bf16), optionally +cl" in capsys.readouterr().err
