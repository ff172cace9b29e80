"""DyART settings on MNIST-10k, compared by validation robust accuracy.

Trains DyART the way bench/robustness.py does (its recipe, seed, one torch thread,
burn-in then 6 epochs), once per variant, each variant a set of overrides of a
base (the recipe, or the recipe with ``--base`` overrides), and writes per variant
the validation clean and PGD-CW accuracy per epoch, the fraction of boundary points
kept, the median margin found and the fastest epoch. It is the cheap screen that
decides which setting is worth a full AutoAttack evaluation; ``--autoattack EPS
--attack`` then runs that evaluation for the variants named (AutoAttack standard, all
2,000 test images, in bench/robustness.py's chunks and ledger), and ``--autoattack
EPS`` alone adds the results found in the ledger to the table.

    PYTHONPATH=. .venv/bin/python bench/dyart_tuning.py \\
        --variant base --variant alpha=0.3 --variant lam_robust=3000 \\
        --variant alpha=0.3,r0=0.9 --variant alpha=0.3,iterations=20
    PYTHONPATH=. .venv/bin/python bench/dyart_tuning.py --base lr=0.1,alpha=3.0,r0=0.6 \\
        --variant base --variant lr=0.2      # around the paper's settings, not the recipe's
    PYTHONPATH=. .venv/bin/python bench/dyart_tuning.py --variant lr=0.3 \\
        --autoattack 0.3 --attack --train-only     # in two processes, one per core

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

from dyart import catalog  # noqa: E402
from dyart.config import TrainConfig  # noqa: E402
from dyart.train import Trainer  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--variant", action="append", required=True, type=_overrides,
        help="KEY=VALUE[,KEY=VALUE...] over the base (hparams or top-level settings), "
        "or 'base' for the base as it is",
    )  # fmt: skip
    p.add_argument(
        "--base", type=_overrides, default=("recipe", {}), metavar="KEY=VALUE[,...]",
        help="overrides of the DyART recipe that every variant starts from (default: none)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, default=None, help="DyART epochs (default: recipe)")
    p.add_argument("--work-dir", default="/tmp/dyart-bench-tuning")
    p.add_argument("--results", default="bench/results/dyart_tuning.md")
    p.add_argument(
        "--autoattack", type=float, nargs="+", default=[], metavar="EPS",
        help="add the AutoAttack standard accuracy at these eps, on all 2,000 test images, "
        "from --ledger (where bench/robustness.py keeps its results)",
    )  # fmt: skip
    p.add_argument(
        "--attack", action="store_true",
        help="attack the --autoattack chunks still missing for every variant named (chunks "
        "are shared through the ledger, so several processes can share the work); without "
        "it the table only reads the ledger",
    )  # fmt: skip
    p.add_argument(
        "--ledger", default="bench/results/robustness-autoattack.json",
        help="AutoAttack results per weights sha256 and chunk (shared with bench/robustness.py: "
        "a variant that reproduces a robustness model's weights reuses its results)",
    )  # fmt: skip
    p.add_argument("--train-only", action="store_true", help="train (and attack), write no table")
    p.add_argument(
        "--title", default="", help="what this screen asks, for the table's heading (optional)"
    )
    return p.parse_args()


def _overrides(text: str) -> tuple[str, dict]:
    if text in ("base", "recipe"):  # no overrides ('recipe': the name before --base)
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


def variant_config(
    name: str, overrides: dict, epochs: int | None, base: tuple[str, dict] = ("recipe", {})
) -> TrainConfig:
    """The recipe, with the base's overrides, then the variant's (which win)."""
    args = robustness.parse_args([] if epochs is None else ["--epochs", str(epochs)])
    spec = robustness.base_config(args, "dyart").to_dict()
    for flag, label, changes in (("--base", base[0], base[1]), ("--variant", name, overrides)):
        for key, value in changes.items():
            if key in spec["hparams"]:
                spec["hparams"][key] = value
            elif key in spec and key != "hparams":
                spec[key] = value
            else:
                raise SystemExit(f"{flag} {label}: {key!r} is neither a DyART hparam nor a setting")
    spec["eval_eps"] = []  # the screen attacks nothing
    return TrainConfig.from_dict(spec)


def train_variant(name: str, config: TrainConfig, work_dir: Path) -> list[dict]:
    out = work_dir / _dir_name(name)
    stamp = out / "variant.json"
    wanted = config.to_dict()
    made = stamp.is_file() and catalog.with_new_defaults(json.loads(stamp.read_text()))
    if made != wanted:
        if out.exists():
            raise SystemExit(f"{out} holds another run; remove it or pass another --work-dir")
        Trainer(config, out, device="cpu").run(("burn_in", "train"))
        stamp.write_text(json.dumps(wanted, indent=1))
    return robustness._train_epochs({"out_dir": out})


def attack_variant(
    name: str, config: TrainConfig, work_dir: Path, eps_list: list[float], ledger: str,
    attack: bool,
) -> dict[float, dict | None]:  # fmt: skip
    """AutoAttack on the variant's best model, per eps, through bench/robustness.py's ledger.

    Results are keyed by the sha256 of the weights, so a variant whose training
    reproduces a model bench/robustness.py attacked, bit for bit, finds its chunks
    there. Without ``attack`` nothing is attacked and only the chunks already in the
    ledger count.
    """
    args = robustness.parse_args(["--ledger", ledger] + ([] if attack else ["--table-only"]))
    row = {
        "method": f"dyart {name}",
        "out_dir": str(work_dir / _dir_name(name)),
        "config": config.to_dict(),
        "results": {},
    }
    for eps in eps_list:
        robustness.evaluate_method(args, row, eps, limit=args.eval_n)
    return row["results"]


def _dir_name(name: str) -> str:
    return name.replace("=", "-").replace(",", "_")


def _number(value: float | None, digits: int) -> str:
    """A figure, or '—' where the epoch had none (no boundary point kept all epoch)."""
    return "—" if value is None or value != value else f"{value:.{digits}f}"


def _aa_cell(result: dict | None, total: int) -> str:
    if result is None:
        return "—"
    cell = f"{result['robust_acc']:.3f}"
    return cell if result["n"] == total else f"{cell} ({result['n']})"


def write_table(
    path: str,
    variants: list[tuple[str, TrainConfig, list[dict]]],
    command: str,
    attacked: dict[str, dict[float, dict | None]] | None = None,
    eps_list: tuple[float, ...] = (),
    base: tuple[str, dict] = ("recipe", {}),
    title: str = "",
):
    attacked = attacked or {}
    head = (
        "| variant | val PGD acc per epoch | best | val clean (best epoch) | kept (last) "
        "| median margin (last) | fastest epoch (s) |"
        + "".join(f" AA acc @ {eps:g} |" for eps in eps_list)
        + "\n"
        + "| --- " * (7 + len(eps_list))
        + "|\n"
    )
    total = robustness.parse_args([]).eval_n
    lines = []
    for name, _, epochs in variants:
        best = max(epochs, key=lambda e: (e["val_pgd_acc"], -e["epoch"]))
        trail = " ".join(f"{e['val_pgd_acc']:.3f}" for e in epochs)
        lines.append(
            f"| {name} | {trail} | {best['val_pgd_acc']:.3f} | {best['val_clean_acc']:.3f} "
            f"| {epochs[-1]['frac_kept']:.2f} | {_number(epochs[-1]['margin_q50'], 3)} "
            f"| {min(e['seconds'] for e in epochs):.1f} |"
            + "".join(f" {_aa_cell(attacked.get(name, {}).get(eps), total)} |" for eps in eps_list)
            + "\n"
        )
    recipe = variant_config("base", {}, variants[0][1].epochs, base).to_dict()
    val = recipe["val_size"]
    what = f"the recipe with {base[0]}" if base[1] else "the recipe"
    text = (
        f"# DyART settings on MNIST-10k{': ' + title if title else ''} "
        f"(validation screen, base: {what})\n\n"
        f"DyART trained as in bench/robustness.py, once per variant (overrides of the base "
        f"below). Validation: {val} held-out images, PGD-{recipe['val_pgd_steps']} with the "
        "CW loss at eps 0.3, on the EMA model after each epoch; one standard error near 0.75 "
        f'is about {(0.75 * 0.25 / val) ** 0.5:.3f}. "kept": fraction of the batch whose '
        "boundary point passed the optimality filter (ALGORITHM.md §4), last epoch. "
        + (
            "AA acc: AutoAttack standard on all 2,000 test images, on the best checkpoint's "
            "EMA model (a count in brackets: on only the first that many so far); '—': not "
            "attacked (the screen attacks only the settings worth it).\n\n"
            if eps_list
            else "No AutoAttack here.\n\n"
        )
        + head
        + "".join(lines)
        + "\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work, "
        f"{torch.get_num_threads()} torch thread, torch {torch.__version__}.\n\n"
        f"Command: `{command}`\n\nBase ({what}):\n\n```json\n{json.dumps(recipe, indent=1)}\n```\n"
    )
    Path(path).write_text(text)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    command = "PYTHONPATH=. .venv/bin/python " + shlex.join(sys.argv)
    variants, attacked = [], {}
    for name, overrides in args.variant:
        config = variant_config(name, overrides, args.epochs, args.base)
        epochs = train_variant(name, config, Path(args.work_dir))
        best = max(e["val_pgd_acc"] for e in epochs)
        print(f"{name}: best val PGD acc {best:.3f}", flush=True)
        variants.append((name, config, epochs))
    for name, config, _ in variants if args.autoattack else ():
        attacked[name] = attack_variant(
            name, config, Path(args.work_dir), args.autoattack, args.ledger, args.attack
        )
    if not args.train_only:
        write_table(
            args.results, variants, command, attacked, tuple(args.autoattack), args.base,
            args.title,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
