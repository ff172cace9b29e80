"""One CIFAR-10-shaped epoch of DyART on WideResNet-28-10 (SiLU), synthetic data.

Seconds per epoch and the fraction of the device's dense bf16 peak the training
reaches. The step is the trainer's own (``dyart.train.train_step``: the method's loss
under the run's ``precision``, backward, gradient clipping, SGD-Nesterov, EMA update)
with the ``cifar10_bn`` recipe's model, batch size and DyART settings (20
boundary-search iterations); the data are random uint8 CIFAR-shaped images on the
device, cropped and flipped there by the trainer's loader. Each run is a precision
(``bf16``, ``fp32``), optionally with ``+cl``: model and batches in channels-last
memory format, which the trainer does not use, to show what it would give.

The labels are the untrained model's own predictions on each augmented batch (in
eval mode, as the boundary search decides which points are correct, with BatchNorm
statistics first set from these batches and the last layer scaled x50 for clear
margins), and the learning rate is 0 so the weights, and with them those
predictions, stay put through the epoch: the boundary search runs on nearly every
point of every batch, the costly case, as late in training, and every step costs
what the counted ones did. A step's arithmetic is the same at any learning rate. The
table gives the share of points the search ran on.

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over
a few real steps (every forward and backward pass the method runs, the boundary
search's included); the achieved rate is that count per step times the steps of the
epoch over the epoch's wall time, and the peak is the device's dense bf16 figure
from its data sheet (``--peak-tflops`` to give another). cuDNN's autotuner is off,
as in the trainer: the boundary search's batch sizes change from step to step, and
the autotuner would time its algorithms again for every new size.

    PYTHONPATH=. .venv/bin/python bench/gpu_epoch.py                 # on a CUDA device
    PYTHONPATH=. .venv/bin/python bench/gpu_epoch.py --device cpu --arch wide_resnet_16_4_silu \\
        --n 256 --batch-size 32 --iterations 2 --runs fp32 --results /tmp/gpu.md  # a smoke run
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyart.catalog import PRECISIONS  # noqa: E402
from dyart.data import BatchLoader  # noqa: E402
from dyart.ema import EMA  # noqa: E402
from dyart.methods import get_method  # noqa: E402
from dyart.models import build_model  # noqa: E402
from dyart.schedule import build_optimizer  # noqa: E402
from dyart.train import train_step  # noqa: E402

RECIPE = ROOT / "dyart" / "configs" / "cifar10_bn.yaml"
# dense bf16 tensor-core peaks from the data sheets, in TFLOP/s (SXM parts)
PEAKS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=None, help="default: the recipe's (wide_resnet_28_10_silu)")
    p.add_argument("--n", type=int, default=50_000 - 1_024, help="training images (CIFAR-10's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (256)")
    p.add_argument("--iterations", type=int, default=None, help="boundary-search iterations")
    p.add_argument(
        "--runs", nargs="+", type=run_spec, default=["bf16", "fp32"],
        help="one epoch each: a precision (bf16, fp32), +cl for channels-last",
    )  # fmt: skip
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--count-steps", type=int, default=3, help="steps whose FLOPs are counted")
    p.add_argument(
        "--steps", type=int, default=None,
        help="time only the epoch's first N steps and scale to the whole epoch",
    )  # fmt: skip
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "gpu.md"))
    return p.parse_args(argv)


def run_spec(text: str) -> str:
    precision, _, layout = text.partition("+")
    if precision not in PRECISIONS or layout not in ("", "cl"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a precision ({', '.join(PRECISIONS)}), optionally +cl"
        )
    return text


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = False  # as the trainer
    rows = []
    for spec in args.runs:
        rows.append(one_epoch(args, spec, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the last run's tensors are gone with its frame
    write_results(args, rows)
    print(Path(args.results).read_text())
    return rows


def one_epoch(args: argparse.Namespace, spec: str, device: torch.device) -> dict:
    """Warm up, count FLOPs, then time one epoch of the run ``spec``."""
    precision, _, layout = spec.partition("+")
    channels_last = layout == "cl"
    recipe = yaml.safe_load(RECIPE.read_text())
    arch = args.arch or recipe["architecture"]
    batch = args.batch_size or recipe["batch_size"]
    hparams = dict(recipe["hparams"])
    if args.iterations is not None:
        hparams["iterations"] = args.iterations
    clock = Clock(device, spec)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3, image_size=32).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last.weight.mul_(50)
        last.bias.mul_(50)
    x_all = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, device=device)
    y_all = torch.zeros(args.n, dtype=torch.long, device=device)
    loader = BatchLoader(x_all, y_all, batch, augment=True, flip=True, pad=4, seed=0)
    labels = own_predictions(model, loader)
    clock.say(f"{arch} built, {args.n:,} images labelled by the model")
    method = get_method("dyart", dataset="cifar10", **hparams)
    optimizer = build_optimizer(
        model, lr=0.0, momentum=recipe["momentum"], weight_decay=recipe["weight_decay"]
    )
    ema = EMA(model, decay=recipe["ema_decay"], total_steps=len(loader))
    layout_of = torch.channels_last if channels_last else torch.contiguous_format

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, metrics = train_step(
            model, method, optimizer, ema, x.contiguous(memory_format=layout_of), y,
            grad_clip=recipe["grad_clip"], precision=precision,
        )  # fmt: skip
        return metrics["frac_correct"].detach()

    model.train()
    loader.set_epoch(1)
    batches = iter(loader)
    for i in range(args.warmup_steps):
        step(next(batches)[0], labels[i])
    clock.say(f"{args.warmup_steps} warm-up steps")
    flops = []
    for i in range(args.warmup_steps, args.warmup_steps + args.count_steps):
        with global_flop_counter() as counter:
            step(next(batches)[0], labels[i])
        flops.append(counter.get_total_flops())
    flops_per_step = sum(flops) / len(flops)
    clock.say(f"{args.count_steps} steps counted: {flops_per_step / 1e12:.2f} TFLOP per step")

    loader.set_epoch(1)
    epoch_steps = len(loader)
    steps = min(args.steps or epoch_steps, epoch_steps)
    sync(device)
    started = time.perf_counter()
    searched = []
    for i, (x, _) in enumerate(loader):
        searched.append(step(x, labels[i]))
        if len(searched) % 20 == 0:
            clock.say(f"epoch: {len(searched)}/{steps} steps")
        if len(searched) == steps:
            break
    sync(device)
    seconds = time.perf_counter() - started

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    achieved = flops_per_step * steps / seconds / 1e12
    return {
        "run": spec, "precision": precision, "channels_last": channels_last,
        "arch": arch, "batch": batch, "images": epoch_steps * batch, "steps": epoch_steps,
        "timed_steps": steps, "seconds": seconds * epoch_steps / steps,
        "tflop_per_step": flops_per_step / 1e12,
        "achieved_tflops": achieved, "peak_tflops": peak,
        "fraction": achieved / peak if peak else None, "device": name,
        "iterations": hparams["iterations"],
        "searched": torch.stack(searched).float().mean().item(),
    }  # fmt: skip


@torch.no_grad()
def own_predictions(model: nn.Module, loader: BatchLoader) -> list[torch.Tensor]:
    """The model's predicted class of every image of each batch of the loader's epoch
    1, in eval mode as the boundary search sees it, after BatchNorm's running
    statistics are set to those of these batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    model.train()
    loader.set_epoch(1)
    for x, _ in loader:
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    loader.set_epoch(1)
    labels = [model(x).argmax(1) for x, _ in loader]
    model.train()
    return labels


class _NoModuleTracking:
    parents = {"Global"}

    def __enter__(self) -> _NoModuleTracking:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def global_flop_counter() -> FlopCounterMode:
    """A FlopCounterMode counting totals only: its per-module tracking hooks break
    ``autograd.grad`` with respect to a leaf, which the boundary search calls."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    return counter


class Clock:
    """Prints each phase's wall time as it ends, so a run cut short still tells."""

    def __init__(self, device: torch.device, run: str) -> None:
        self.device, self.run = device, run
        self.start = self.last = time.perf_counter()

    def say(self, what: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        print(
            f"[{self.run} {now - self.start:6.1f} s] {what} (+{now - self.last:.1f} s)", flush=True
        )
        self.last = now


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_results(args: argparse.Namespace, rows: list[dict]) -> None:
    first = rows[0]
    command = "PYTHONPATH=. .venv/bin/python bench/gpu_epoch.py " + shlex.join(sys.argv[1:])
    timed = (
        f"Each run was timed over its epoch's first {first['timed_steps']} of "
        f"{first['steps']} steps and scaled to the whole epoch. "
        if first["timed_steps"] < first["steps"]
        else ""
    )
    lines = [
        f"# GPU throughput: DyART on {first['arch']}, CIFAR-10-shaped batches",
        "",
        f"One epoch of DyART ({first['iterations']} boundary-search iterations) on "
        f"{first['images']:,} synthetic 32x32 images in batches of {first['batch']} on "
        f"{first['device']}, with the trainer's own step. {timed}FLOPs counted by torch's "
        "FlopCounterMode over real steps (forward and backward passes, the boundary "
        "search's included); peak: the device's dense bf16 data-sheet figure. "
        "Channels-last (cl) is not what the trainer does; it shows what it would give.",
        "",
        "| run | seconds per epoch | steps per second | TFLOP per step | achieved TFLOP/s "
        "| fraction of bf16 peak | points searched |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        fraction = f"{row['fraction']:.1%}" if row["fraction"] is not None else "n/a (no peak)"
        name = row["precision"] + (" autocast" if row["precision"] == "bf16" else "")
        name += ", channels-last" if row["channels_last"] else ""
        lines.append(
            f"| {name} | {row['seconds']:.1f} | {row['steps'] / row['seconds']:.2f} "
            f"| {row['tflop_per_step']:.2f} | {row['achieved_tflops']:.1f} | {fraction} "
            f"| {row['searched']:.0%} |"
        )
    peak = f"{first['peak_tflops']:g} TFLOP/s" if first["peak_tflops"] else "unknown"
    lines += [
        "",
        f"bf16 peak: {peak}. Machine: {platform.machine()}, torch {torch.__version__}.",
        "",
        f"Command: `{command}`",
        "",
    ]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
