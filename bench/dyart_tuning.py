"""DyART settings on MNIST-10k, compared by validation robust accuracy.

Trains DyART the way bench/robustness.py does (its recipe, seed, one torch thread,
burn-in then 6 epochs), once per variant, each variant a set of overrides of the
recipe, and writes per variant the validation clean and PGD-CW accuracy per epoch,
the fraction of boundary points kept, the median margin found and the fastest
epoch. It attacks nothing with AutoAttack: it is the cheap screen that decides
which setting is worth a full evaluation in bench/robustness.py.

    PYTHONPATH=. .venv/bin/python bench/dyart_tuning.py \\
        --variant recipe --variant alpha=0.3 --variant lam_robust=3000 \\
        --variant alpha=0.3,r0=0.9 --variant alpha=0.3,iterations=20

A variant already trained under ``--work-dir`` with the same settings is read back,
not trained again, so variants can be trained in separate processes (one per core)
and the table written by a last run naming all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustness  # noqa: E402  (bench/robustness.py: the recipe the table uses)

from dyart.config import TrainConfig  # noqa: E402
from dyart.train import Trainer  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--variant", action="append", required=True, type=_overrides,
        help="KEY=VALUE[,KEY=VALUE...] over the DyART recipe (hparams or top-level), "
        "or 'recipe' for the recipe as it is",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="DyART epochs (default: recipe)")
    p.add_argument("--work-dir", default="/tmp/dyart-bench-tuning")
    p.add_argument("--results", default="bench/results/dyart_tuning.md")
    p.add_argument("--train-only", action="store_true", help="train, write no table")
    return p.parse_args()


def _overrides(text: str) -> tuple[str, dict]:
    if text == "recipe":
        return text, {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {part!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(f"{key}: {value!r} is not a number") from None
    return text, out


def variant_config(name: str, overrides: dict, epochs: int | None) -> TrainConfig:
    args = robustness.parse_args([] if epochs is None else ["--epochs", str(epochs)])
    spec = robustness.base_config(args, "dyart").to_dict()
    for key, value in overrides.items():
        if key in spec["hparams"]:
            spec["hparams"][key] = value
        elif key in spec and key != "hparams":
            spec[key] = value
        else:
            raise SystemExit(f"--variant {name}: {key!r} is neither a DyART hparam nor a setting")
    spec["eval_eps"] = []  # the screen attacks nothing
    return TrainConfig.from_dict(spec)


def train_variant(name: str, config: TrainConfig, work_dir: Path) -> list[dict]:
    out = work_dir / name.replace("=", "-").replace(",", "_")
    stamp = out / "variant.json"
    wanted = config.to_dict()
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted):
        if out.exists():
            raise SystemExit(f"{out} holds another run; remove it or pass another --work-dir")
        Trainer(config, out, device="cpu").run(("burn_in", "train"))
        stamp.write_text(json.dumps(wanted, indent=1))
    return robustness._train_epochs({"out_dir": out})


def write_table(path: str, variants: list[tuple[str, TrainConfig, list[dict]]], command: str):
    head = (
        "| variant | val PGD acc per epoch | best | val clean (best epoch) | kept (last) "
        "| median margin (last) | fastest epoch (s) |\n" + "| --- " * 7 + "|\n"
    )
    lines = []
    for name, _, epochs in variants:
        best = max(epochs, key=lambda e: (e["val_pgd_acc"], -e["epoch"]))
        trail = " ".join(f"{e['val_pgd_acc']:.3f}" for e in epochs)
        lines.append(
            f"| {name} | {trail} | {best['val_pgd_acc']:.3f} | {best['val_clean_acc']:.3f} "
            f"| {epochs[-1]['frac_kept']:.2f} | {epochs[-1]['margin_q50']:.3f} "
            f"| {min(e['seconds'] for e in epochs):.1f} |\n"
        )
    recipe = variants[0][1].to_dict()
    val = recipe["val_size"]
    text = (
        "# DyART settings on MNIST-10k (validation screen)\n\n"
        f"DyART trained as in bench/robustness.py, once per variant (overrides of the recipe "
        f"below). Validation: {val} held-out images, PGD-{recipe['val_pgd_steps']} with the "
        "CW loss at eps 0.3, on the EMA model after each epoch; one standard error near 0.75 "
        f'is about {(0.75 * 0.25 / val) ** 0.5:.3f}. "kept": fraction of the batch whose '
        "boundary point passed the optimality filter (ALGORITHM.md §4), last epoch. No "
        "AutoAttack here.\n\n" + head + "".join(lines) + "\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work, "
        f"{torch.get_num_threads()} torch thread, torch {torch.__version__}.\n\n"
        f"Command: `{command}`\n\nRecipe:\n\n```json\n{json.dumps(recipe, indent=1)}\n```\n"
    )
    Path(path).write_text(text)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    command = "PYTHONPATH=. .venv/bin/python " + shlex.join(sys.argv)
    variants = []
    for name, overrides in args.variant:
        config = variant_config(name, overrides, args.epochs)
        epochs = train_variant(name, config, Path(args.work_dir))
        best = max(e["val_pgd_acc"] for e in epochs)
        print(f"{name}: best val PGD acc {best:.3f}", flush=True)
        variants.append((name, config, epochs))
    if not args.train_only:
        write_table(args.results, variants, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
