"""Cost of one training step of each method, and the boundary search's quality.

For a small CNN on MNIST-shaped batches and PreAct ResNet-18 on CIFAR-shaped batches,
measured side by side in one run (warm-up, then the median of several repeats):

* each method's step (loss + metrics + backward) over a clean step of the same batch;
* a DyART step over the time of only the model passes it needs (20 × (forward +
  backward to the input, forward), the final gradient, the two loss forwards and
  the backward) — the search's bookkeeping must stay under a tenth of the step;
* likewise PGD-AT-10 over its passes (clean-accuracy forward, 10 forward+backward,
  loss forward and backward);
* the DyART step with ``fused_check`` (crossings checked in the next gradient pass,
  no separate forward: ``iterations + 1`` forward+backward passes) over the DyART
  step and over the PGD-AT-10 step;
* the search's median margin R and fractions found/kept for 5, 10, 20, 40
  iterations, with and without ``fused_check``, on the small CNN briefly trained on
  real MNIST (the bundled MNIST-10k).

CPU timings use one thread by default (``--threads``): on a shared 2-core machine
two OpenMP threads stall at every small operation whenever another process holds
a core, which swamps what is being measured. With one thread the clock is that
thread's CPU time, so time given to other processes is not counted either.

The small CNN's batch is real MNIST with its labels (after the brief training
nearly every point is correct). PreAct ResNet-18 is untrained on random images, so
its labels are its own predictions with the last layer scaled x50: nearly every
point is then correct and the search runs on the whole batch, its worst case.

    PYTHONPATH=. .venv/bin/python bench/step_cost.py            # writes bench/results/step_cost.md
    PYTHONPATH=. .venv/bin/python bench/step_cost.py --quick    # a fast smoke run
"""

from __future__ import annotations

import argparse
import gzip
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyart.methods import find_boundary, get_method  # noqa: E402
from dyart.methods.base import eval_mode  # noqa: E402
from dyart.methods.boundary import phi_and_grad, phi_only, search_mode  # noqa: E402

METHODS = ("clean", "dyart", "pgd_at", "trades", "mart")


def clock(fn, device: torch.device) -> float:
    """Seconds of one ``fn()``: GPU wall time (synchronised), or on the CPU the
    CPU time of this thread when torch runs on one thread.

    With one torch thread all the work happens on the calling thread, so its CPU
    time is the step's cost, and time the scheduler gives to other processes on a
    shared machine does not count; with more threads, wall time.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    now = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    start = now()
    fn()
    return now() - start


def timed_together(fns: dict, device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Times of each function, run in turn within each repeat after one warm-up each.

    Interleaving keeps slow drifts of a shared machine out of the ratios.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(clock(fn, device))
    return times


def paired_ratio(times: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over repeats of time[top] / time[bottom] measured in the same repeat."""
    return statistics.median(a / b for a, b in zip(times[top], times[bottom], strict=True))


def method_step(model: nn.Module, method, x, y, record: dict | None = None):
    """One step as the trainer runs it, minus the optimizer: loss, metrics, backward."""
    model.zero_grad(set_to_none=True)
    loss, metrics = method(model, x, y)
    loss.backward()
    if record is not None:
        record.setdefault("kept", []).append(float(metrics.get("frac_kept", 0.0)))
        record.setdefault("correct", []).append(float(metrics.get("frac_correct", 1.0)))


def dyart_passes(model: nn.Module, x, y, xs, ys, x_kept, iterations: int = 20):
    """Only the model passes of a DyART step: the clean forward, the search's
    ``iterations`` x (forward+backward to the input, forward) and its final
    gradient on the searched points ``xs``, the forward on the kept boundary
    points ``x_kept``, and the backward of the loss.

    The search passes run on boundary points, not on the clean images: a model's
    passes cost more on perturbed images than on clean MNIST digits (mostly exact
    zeros, up to 30% cheaper on the small CNN), and the search never sees clean ones.
    """
    model.zero_grad(set_to_none=True)
    logits = model(x)
    with search_mode(model):
        for _ in range(iterations):
            phi_and_grad(model, xs, ys, 5.0)
            phi_only(model, xs, ys, 5.0)
        phi_and_grad(model, xs, ys, 5.0)
    loss = F.cross_entropy(logits, y)
    if len(x_kept):
        loss = loss + model(x_kept).sum() * 1e-3
    loss.backward()


def pgd_passes(model: nn.Module, x, y, x_start, steps: int = 10):
    """Only the model passes of a PGD-AT step: clean forward, PGD steps, loss pass;
    the attack and loss passes on perturbed images (``x_start``), as PGD's are."""
    model.zero_grad(set_to_none=True)
    with eval_mode(model):
        with torch.no_grad():
            model(x)
        for _ in range(steps):
            xa = x_start.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
    F.cross_entropy(model(x_start), y).backward()


def step_costs(
    model: nn.Module, x, y, dataset: str, repeats: int, device, iterations: int | None = None
) -> dict:
    """Ratios of each method's step to the clean step, and DyART/PGD-AT to their passes.

    ``iterations``: DyART's search iterations (default: the method's own, 20).
    """
    record: dict = {}
    search = {} if iterations is None else {"iterations": iterations}
    methods = {name: get_method(name, dataset=dataset) for name in METHODS}
    methods["dyart"] = get_method("dyart", dataset=dataset, **search)
    for _ in range(3):
        method_step(model, methods["dyart"], x, y, record)
    n = x.shape[0]
    h = methods["dyart"].hparams
    found = find_boundary(
        model, x, y, norm=h["norm"], iterations=h["iterations"], eps=h["eps_fab"],
        temperature=h["temperature"],
    )  # fmt: skip
    xs, ys, x_kept = found.x_hat[found.correct], y[found.correct], found.x_hat[found.kept]
    n_search, n_kept = len(xs), len(x_kept)
    eps = methods["pgd_at"].hparams["eps"]
    x_start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    fns = {name: (lambda m=m: method_step(model, m, x, y)) for name, m in methods.items()}
    fused = get_method("dyart", dataset=dataset, fused_check=True, **search)
    fns["dyart_fused"] = lambda: method_step(model, fused, x, y)
    fns["dyart_passes"] = lambda: dyart_passes(model, x, y, xs, ys, x_kept, h["iterations"])
    fns["pgd_passes"] = lambda: pgd_passes(model, x, y, x_start)
    times = timed_together(fns, device, repeats)
    out = {f"{name}_s": statistics.median(t) for name, t in times.items()}
    out.update({f"{name}_ratio": paired_ratio(times, name, "clean") for name in METHODS})
    out["dyart_over_passes"] = paired_ratio(times, "dyart", "dyart_passes")
    out["pgd_over_passes"] = paired_ratio(times, "pgd_at", "pgd_passes")
    out["fused_over_dyart"] = paired_ratio(times, "dyart_fused", "dyart")
    out["fused_over_pgd"] = paired_ratio(times, "dyart_fused", "pgd_at")
    out.update(frac_correct=n_search / n, frac_kept=n_kept / n)
    return out


def search_quality(model: nn.Module, x, y, iterations_list, eps: float) -> list[dict]:
    """Median R over kept points and fractions found/kept, per iteration count, for
    the search of ALGORITHM.md §3 and with ``fused_check``."""
    rows = []
    for fused, iterations in [(f, i) for f in (False, True) for i in iterations_list]:
        torch.manual_seed(0)
        res = find_boundary(model, x, y, iterations=iterations, eps=eps, fused_check=fused)
        kept = res.margin[res.kept]
        rows.append(
            {
                "search": "fused check" if fused else "§3",
                "iterations": iterations,
                "median_R": float(kept.median()) if kept.numel() else float("nan"),
                "frac_correct": float(res.correct.float().mean()),
                "frac_found": float(res.found.float().mean()),
                "frac_kept": float(res.kept.float().mean()),
            }
        )
    return rows


class SmallCNN(nn.Sequential):
    """2 conv + 2 fc (0.33M parameters), used when dyart.models is not importable."""

    def __init__(self, channels: int = 1, size: int = 28, classes: int = 10):
        flat = 32 * (size // 4) ** 2
        super().__init__(
            nn.Conv2d(channels, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(flat, 200), nn.ReLU(), nn.Linear(200, classes),
        )  # fmt: skip


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = (
            None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = x if self.short is None else self.short(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al., 2016), used when dyart.models is not importable."""

    def __init__(self, channels: int = 3, classes: int = 10):
        super().__init__()
        widths, blocks, cin = (64, 128, 256, 512), [], 64
        for i, width in enumerate(widths):
            blocks += [PreActBlock(cin, width, 1 if i == 0 else 2), PreActBlock(width, width, 1)]
            cin = width
        self.stem = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.blocks, self.bn = nn.Sequential(*blocks), nn.BatchNorm2d(512)
        self.head = nn.Linear(512, classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


def make_model(arch: str, channels: int, size: int) -> tuple[nn.Module, str]:
    """The library's model when dyart.models exists, else the bench's own copy."""
    try:
        from dyart.models import build_model

        return build_model(
            arch, num_classes=10, in_channels=channels, image_size=size
        ), "dyart.models"
    except ImportError:
        local = SmallCNN(channels, size) if arch == "small_cnn" else PreActResNet18(channels)
        return local, "bench copy"


def mnist_batches() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """MNIST-10k as floats in [0,1]: (train_x, train_y, test_x, test_y, description)."""
    try:
        from dyart.data import load_dataset

        s = load_dataset("mnist10k")
        return (
            s.train_x.float() / 255,
            s.train_y,
            s.test_x.float() / 255,
            s.test_y,
            "dyart.data mnist10k",
        )
    except ImportError:
        files = ROOT / "dyart" / "data" / "files"
        with gzip.open(files / "t10k-images-idx3-ubyte.gz") as f:
            x = torch.frombuffer(bytearray(f.read()[16:]), dtype=torch.uint8).view(-1, 1, 28, 28)
        with gzip.open(files / "t10k-labels-idx1-ubyte.gz") as f:
            y = torch.frombuffer(bytearray(f.read()[8:]), dtype=torch.uint8).long()
        x = x.float() / 255
        return x[:8000], y[:8000], x[8000:], y[8000:], "bundled MNIST test set (first 8,000 train)"


def clean_train(model: nn.Module, x, y, steps: int, device) -> None:
    """A brief clean training run (SGD, batch 128) so margins are meaningful."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (128,), generator=gen)
        loss = F.cross_entropy(model(x[rows].to(device)), y[rows].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()


def build(arch, dataset, batch, device, train_x, train_y, quick: bool):
    """Model and a batch on which nearly every point is correct; and how it was made."""
    if arch == "small_cnn":
        model, source = make_model(arch, 1, 28)
        model.to(device)
        steps = 20 if quick else 200
        clean_train(model, train_x, train_y, steps, device)
        x, y = train_x[:batch].to(device), train_y[:batch].to(device)
        return model.train(), x, y, f"{source}, {steps} clean SGD steps on MNIST-10k"
    model, source = make_model(arch, 3, 32)
    model.to(device).train()
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        for _ in range(5 if quick else 20):  # settle BN running statistics on this batch
            model(x)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        head.weight.mul_(50.0)
        y = model(x).argmax(1)  # train mode: the step's correctness uses train-mode logits
    return model, x, y, f"{source}, random images, labels = predictions, head scaled x50"


def machine() -> str:
    """CPU model name, torch version and thread count (and the GPU if there is one)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    text = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def cost_table(results: dict[tuple[str, str], dict]) -> str:
    head = (
        "| device | model (batch) | clean step s | dyart | pgd_at | trades | mart "
        "| dyart / its passes | pgd_at / its passes | correct / kept "
        "| dyart fused check / dyart | dyart fused check / pgd_at |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    lines = []
    for (device, model), r in results.items():
        lines.append(
            f"| {device} | {model} | {r['clean_s']:.4f} | {r['dyart_ratio']:.1f}x "
            f"| {r['pgd_at_ratio']:.1f}x | {r['trades_ratio']:.1f}x | {r['mart_ratio']:.1f}x "
            f"| **{r['dyart_over_passes']:.3f}** | **{r['pgd_over_passes']:.3f}** "
            f"| {r['frac_correct']:.2f} / {r['frac_kept']:.2f} "
            f"| {r['fused_over_dyart']:.2f} | {r['fused_over_pgd']:.2f} |"
        )
    return head + "\n".join(lines) + "\n"


def quality_table(rows: list[dict]) -> str:
    head = "| search | iterations | median R (kept) | correct | found | kept |\n"
    head += "| --- | --- | --- | --- | --- | --- |\n"
    return (
        head
        + "\n".join(
            f"| {r['search']} | {r['iterations']} | {r['median_R']:.4f} | {r['frac_correct']:.3f} "
            f"| {r['frac_found']:.3f} | {r['frac_kept']:.3f} |"
            for r in rows
        )
        + "\n"
    )


def run(args) -> str:
    torch.manual_seed(0)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    repeats = 1 if args.quick else args.repeats
    if args.quick:
        args.mnist_batch, args.cifar_batch = 32, 4
    train_x, train_y, test_x, test_y, source = mnist_batches()
    results, quality = {}, []
    for device in devices:
        specs = [
            ("small_cnn", "mnist10k", args.mnist_batch),
            ("preact_resnet18", "cifar10", args.cifar_batch),
        ]
        for arch, dataset, batch in specs:
            if args.only and arch != args.only:
                continue
            model, x, y, note = build(
                arch, dataset, batch, device, train_x, train_y, quick=args.quick
            )
            print(f"[{device}] {arch} batch {batch} ({note})", flush=True)
            results[(device.type, f"{arch} ({batch})")] = step_costs(
                model, x, y, dataset, repeats, device, args.iterations
            )
            if arch == "small_cnn" and device.type == "cpu":
                n = 32 if args.quick else 512
                qx, qy = test_x[:n].to(device), test_y[:n].to(device)
                quality = search_quality(model.eval(), qx, qy, (5, 10, 20, 40), eps=0.3)
                model.train()
    command = "PYTHONPATH=. .venv/bin/python " + " ".join(sys.argv)
    return (
        "# Step cost of the training methods"
        + (f" at {args.iterations} search iterations" if args.iterations else "")
        + "\n\n"
        f"Command: `{command}`  \nMachine: {machine()}  \nData: {source}\n\n"
        "Each method's step (loss, metrics, backward; no optimizer step) relative to a clean "
        "step of the same model and batch; then the DyART step and the PGD-AT-10 step over "
        "the time of only the model passes they need (target ≤ 1.10). Median of "
        f"{repeats} repeats after a warm-up. The reference passes run on the inputs the "
        "method's own passes see (the search's boundary points; PGD's randomly started "
        "points): on clean MNIST digits, mostly exact zeros, the same passes cost up to 30% "
        "less, which would flatter the reference. With one CPU thread the clock is that "
        "thread's CPU time, so other processes on a shared machine do not count. DyART's "
        f"search: {args.iterations or 20} iterations.\n\n"
        + cost_table(results)
        + "\nBoundary search quality on the small CNN (MNIST-10k test images, eps_fab 0.3, "
        "temperature 5, L-inf):\n\n" + quality_table(quality)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny batches, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mnist-batch", type=int, default=128)
    parser.add_argument("--cifar-batch", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (0: torch default); 1 by default because on a shared machine "
        "OpenMP threads wait on a busy core at every small op and the timings lose meaning",
    )
    parser.add_argument(
        "--iterations", type=int, default=None,
        help="DyART's search iterations (default: the method's 20; the MNIST recipe's is 10)",
    )  # fmt: skip
    parser.add_argument("--only", choices=("small_cnn", "preact_resnet18"), help="one model only")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "step_cost.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    print(report)
    if not args.quick:
        Path(args.out).write_text(report)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
