"""One CIFAR-10-shaped epoch of DyART on WideResNet-28-10 (SiLU), bf16, synthetic data.

Seconds per epoch and the fraction of the device's dense bf16 peak the training
reaches. The step is the trainer's (method loss under bf16 autocast, backward,
gradient clipping, SGD-Nesterov, EMA update) with the ``cifar10_bn`` recipe's model,
batch size and DyART settings (20 boundary-search iterations); the data are random
uint8 CIFAR-shaped images on the device, cropped and flipped there by the
trainer's loader. Their labels are the untrained model's own predictions (in eval
mode, as the boundary search decides which points are correct, with BatchNorm
statistics first set from these images and the last layer scaled x50 for clear
margins), so nearly every point is correctly classified and the boundary search runs
on nearly the whole batch: the costly case, as late in training. The table gives the share of
points the search ran on.

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over
a few real steps (every forward and backward pass the method runs, the boundary
search's included); the achieved rate is that count per step times the steps of the
epoch over the epoch's wall time, and the peak is the device's dense bf16 figure
from its data sheet (``--peak-tflops`` to give another).

    PYTHONPATH=. .venv/bin/python bench/gpu_epoch.py                 # on a CUDA device
    PYTHONPATH=. .venv/bin/python bench/gpu_epoch.py --device cpu --arch wide_resnet_16_4_silu \\
        --n 256 --batch-size 32 --iterations 2 --results /tmp/gpu.md     # a smoke run
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

from dyart.data import BatchLoader  # noqa: E402
from dyart.ema import EMA  # noqa: E402
from dyart.methods import get_method  # noqa: E402
from dyart.models import build_model  # noqa: E402
from dyart.schedule import build_optimizer  # noqa: E402

RECIPE = ROOT / "dyart" / "configs" / "cifar10_bn.yaml"
# dense bf16 tensor-core peaks from the data sheets, in TFLOP/s (SXM parts)
PEAKS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=None, help="default: the recipe's (wide_resnet_28_10_silu)")
    p.add_argument("--n", type=int, default=50_000 - 1_024, help="training images (CIFAR-10's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (256)")
    p.add_argument("--iterations", type=int, default=None, help="boundary-search iterations")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--count-steps", type=int, default=3, help="steps whose FLOPs are counted")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "gpu.md"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    recipe = yaml.safe_load(RECIPE.read_text())
    arch = args.arch or recipe["architecture"]
    batch = args.batch_size or recipe["batch_size"]
    hparams = dict(recipe["hparams"])
    if args.iterations is not None:
        hparams["iterations"] = args.iterations
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = build_model(arch, num_classes=10, in_channels=3, image_size=32).to(device)
    model = model.to(memory_format=torch.channels_last)
    x_all = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, device=device)
    with torch.no_grad():
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last.weight.mul_(50)
        last.bias.mul_(50)
    y_all = own_predictions(model, x_all, batch)
    loader = BatchLoader(x_all, y_all, batch, augment=True, flip=True, pad=4, seed=0)
    method = get_method("dyart", dataset="cifar10", **hparams)
    optimizer = build_optimizer(
        model, lr=recipe["lr"], momentum=recipe["momentum"], weight_decay=recipe["weight_decay"]
    )
    ema = EMA(model, decay=recipe["ema_decay"], total_steps=len(loader))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast:
            loss, metrics = method(model, x.contiguous(memory_format=torch.channels_last), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()
        ema.update(model)
        return metrics["frac_correct"].detach()

    model.train()
    batches = iter(loader)
    for _ in range(args.warmup_steps):
        step(*next(batches))
    flops = []
    for _ in range(args.count_steps):
        with global_flop_counter() as counter:
            step(*next(batches))
        flops.append(counter.get_total_flops())
    flops_per_step = sum(flops) / len(flops)

    loader.set_epoch(1)
    sync(device)
    started = time.perf_counter()
    kept = []
    for x, y in loader:
        kept.append(step(x, y))
    sync(device)
    seconds = time.perf_counter() - started
    steps = len(kept)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    achieved = flops_per_step * steps / seconds / 1e12
    row = {
        "arch": arch, "batch": batch, "images": steps * batch, "steps": steps,
        "seconds": seconds, "tflop_per_step": flops_per_step / 1e12,
        "achieved_tflops": achieved, "peak_tflops": peak,
        "fraction": achieved / peak if peak else None, "device": name, "dtype": args.dtype,
        "iterations": hparams["iterations"],
        "searched": torch.stack(kept).float().mean().item(),
    }  # fmt: skip
    write_results(args, row)
    print(Path(args.results).read_text())
    return row


@torch.no_grad()
def own_predictions(model: nn.Module, x_all: torch.Tensor, batch: int) -> torch.Tensor:
    """The model's predicted class of every image, in eval mode as the boundary search
    sees it, after BatchNorm's running statistics are set to those of these images."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    model.train()
    for x in x_all.split(batch):
        model(x.float() / 255)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    labels = [model(x.float() / 255).argmax(1) for x in x_all.split(batch)]
    model.train()
    return torch.cat(labels)


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_results(args: argparse.Namespace, row: dict) -> None:
    fraction = f"{row['fraction']:.1%}" if row["fraction"] is not None else "n/a (no peak known)"
    peak = f"{row['peak_tflops']:g}" if row["peak_tflops"] else "n/a"
    command = "PYTHONPATH=. .venv/bin/python bench/gpu_epoch.py " + shlex.join(sys.argv[1:])
    text = (
        f"# GPU throughput: DyART on {row['arch']}, CIFAR-10-shaped batches\n\n"
        f"One epoch of DyART ({row['iterations']} boundary-search iterations) on "
        f"{row['images']:,} synthetic 32x32 images in batches of {row['batch']}, "
        f"{row['dtype']} autocast, on {row['device']}. FLOPs counted by torch's "
        "FlopCounterMode over real steps (forward and backward passes, the boundary "
        "search's included); peak: the device's dense bf16 data-sheet figure.\n\n"
        "| seconds per epoch | steps per second | TFLOP per step | achieved TFLOP/s "
        "| peak TFLOP/s | fraction of peak | points searched |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        f"| {row['seconds']:.1f} | {row['steps'] / row['seconds']:.2f} "
        f"| {row['tflop_per_step']:.2f} | {row['achieved_tflops']:.1f} | {peak} | {fraction} "
        f"| {row['searched']:.0%} |\n\n"
        f"Machine: {platform.machine()}, torch {torch.__version__}.\n\n"
        f"Command: `{command}`\n"
    )
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)


if __name__ == "__main__":
    main()
