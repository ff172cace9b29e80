"""Does DyART's boundary search see the points an attack breaks? (MNIST-10k, robust models)

For each model bench/robustness.py trained (kept in bench/results/robustness-models/),
on the first training images of MNIST-10k (the images DyART's search runs on while
training): PGD-20 with the CW loss at eps 0.3 marks the correct points it breaks; the
boundary search of ALGORITHM.md §3 (DyART's recipe settings, a few iteration counts)
then reports, among the correct points,

* "R < eps": the fraction whose boundary point it finds within eps (a certificate
  that the point is not robust; PGD's figure is a lower bound of the truth);
* "recall": of the points PGD breaks, the fraction the search also finds within eps;
* "kept": the fraction that passes the optimality filter of §4;
* the median margin R of the points found;

for the search as ALGORITHM.md §3 gives it and, with ``--search fused``, with the
crossing checked in the next gradient pass (``fused_check``).

A search that finds few of the breakable points within eps pushes the boundary at
points farther away than the closest, and weights them as if they were robust.

    PYTHONPATH=. .venv/bin/python bench/search_quality.py   # writes bench/results/search_quality.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import dyart
from dyart.attacks import pgd_attack
from dyart.config import TrainConfig
from dyart.data import load_dataset
from dyart.methods.boundary import find_boundary

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=str(ROOT / "bench/results/robustness-models"))
    p.add_argument("--methods", nargs="+", default=["pgd_at", "mart", "dyart"])
    p.add_argument("--n", type=int, default=512, help="training images searched")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--iterations", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument(
        "--alpha-max", type=float, nargs="+", default=[0.1, 0.5],
        help="FAB's largest mixing weight towards the step from x0 (recipe 0.1)",
    )  # fmt: skip
    p.add_argument(
        "--search", nargs="+", default=["§3"], choices=["§3", "fused"],
        help="the search of ALGORITHM.md §3, and/or with fused_check (crossings checked in "
        "the next gradient pass)",
    )  # fmt: skip
    p.add_argument("--results", default=str(ROOT / "bench/results/search_quality.md"))
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    if not args.eps > 0:
        p.error(f"--eps must be positive, got {args.eps}")
    for method in args.methods:
        if not (Path(args.models) / method / "model-best.safetensors").is_file():
            p.error(
                f"--methods {method}: no {Path(args.models) / method / 'model-best.safetensors'}"
                "; train it with bench/robustness.py --train-only first"
            )
    return args


def summarise(
    correct: torch.Tensor, broken: torch.Tensor, found: torch.Tensor,
    margin: torch.Tensor, kept: torch.Tensor, eps: float,
) -> dict[str, float]:  # fmt: skip
    """The table's figures from per-point masks (``broken``: PGD breaks a correct point)."""
    within = found & (margin < eps) & correct
    n_correct = max(int(correct.sum()), 1)
    n_broken = int((broken & correct).sum())
    return {
        "r_within": int(within.sum()) / n_correct,
        "recall": int((within & broken).sum()) / n_broken if n_broken else float("nan"),
        "kept": int((kept & correct).sum()) / n_correct,
        "median_r": float(margin[found & correct].median()) if bool((found & correct).any())
        else float("nan"),
    }  # fmt: skip


def measure(args: argparse.Namespace) -> list[dict]:
    splits = load_dataset("mnist10k", val_size=256)
    x = splits.train_x[: args.n].float().div(255)
    y = splits.train_y[: args.n].long()
    recipe = _dyart_recipe()
    rows = []
    for method in args.methods:
        path = Path(args.models) / method / "model-best.safetensors"
        model = dyart.load_model(path).eval()
        torch.manual_seed(0)
        x_adv = pgd_attack(model, x, y, eps=args.eps, step_size=args.eps / 4, steps=20, loss="cw")
        with torch.no_grad():
            correct = model(x).argmax(1) == y
            broken = correct & (model(x_adv).argmax(1) != y)
        base = {
            "method": method,
            "clean": float(correct.float().mean()),
            "pgd": float((correct & ~broken).float().mean()),
        }
        settings = [
            (search, alpha_max, iterations)
            for search in args.search
            for alpha_max in args.alpha_max
            for iterations in args.iterations
        ]
        for search, alpha_max, iterations in settings:
            torch.manual_seed(0)
            started = time.process_time()
            found = find_boundary(
                model, x, y, norm="linf", iterations=iterations, eps=recipe["eps_fab"],
                temperature=recipe["temperature"], restarts=1, alpha_max=alpha_max,
                eta=recipe["eta"], beta_back=recipe["beta_back"], fused_check=search == "fused",
            )  # fmt: skip
            row = base | summarise(correct, broken, found.found, found.margin, found.kept, args.eps)
            row |= {"search": search, "iterations": iterations, "alpha_max": alpha_max}
            row["seconds"] = time.process_time() - started
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _dyart_recipe() -> dict:
    """The search settings of the DyART recipe (with the defaults it leaves unset)."""
    return TrainConfig.from_file(ROOT / "dyart/configs/mnist10k_dyart.yaml").hparams


def write_table(path: str, rows: list[dict], args: argparse.Namespace, command: str) -> None:
    head = (
        "| model | clean | PGD-20 | search | α_max | iterations | R < eps | recall of PGD's "
        "| kept | median R | search s |\n" + "| --- " * 11 + "|\n"
    )
    lines = [
        f"| {r['method']} | {r['clean']:.3f} | {r['pgd']:.3f} | {r.get('search', '§3')} "
        f"| {r['alpha_max']:g} "
        f"| {r['iterations']} | {r['r_within']:.3f} | {r['recall']:.3f} | {r['kept']:.3f} "
        f"| {r['median_r']:.3f} | {r['seconds']:.1f} |\n"
        for r in rows
    ]
    text = (
        "# Boundary search on robust MNIST models\n\n"
        f"The first {args.n} training images of MNIST-10k, L-inf, eps {args.eps:g}. "
        "Models: the best checkpoints bench/robustness.py trained (EMA weights). "
        '"clean", "PGD-20": accuracy, PGD-20 with the CW loss, step eps/4, random start. '
        'Among the correct points: "R < eps", the fraction the boundary search '
        "(ALGORITHM.md §3; eps_fab, temperature, η and β_b as DyART trained) places within "
        'eps of the boundary; "recall of PGD\'s", the fraction of the points PGD breaks '
        'that the search also finds within eps; "kept", the fraction passing the filter of '
        '§4; "median R", of the points found. "search s": CPU time of the search on one '
        'thread. "search": §3 as ALGORITHM.md gives it, or "fused", each crossing checked '
        "in the next gradient pass (hparams.fused_check). The DyART recipe searches with "
        "α_max 0.1 and 10 iterations.\n\n"
        + head
        + "".join(lines)
        + f"\nMachine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch thread, torch {torch.__version__}.\n\n"
        f"Command: `{command}`\n"
    )
    Path(path).write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    command = "PYTHONPATH=. .venv/bin/python " + shlex.join(sys.argv)
    rows = measure(args)
    write_table(args.results, rows, args, command)
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
