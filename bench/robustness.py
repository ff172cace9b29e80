"""Robustness of each training method on MNIST-10k, measured side by side in one run.

Trains clean, pgd_at, trades, mart and dyart with the same model, epochs and
seed — one shared burn-in, then each method from the burn-in's EMA weights, as
the service does with burn-in reuse, each at the learning rate of its own
``mnist10k_<method>`` recipe (the better of 0.05 and 0.1 on validation) —
evaluates each best checkpoint with AutoAttack, and writes a markdown table
(clean and robust accuracy per eps, training time relative to clean).

    PYTHONPATH=. .venv/bin/python bench/robustness.py            # the full run
    PYTHONPATH=. .venv/bin/python bench/robustness.py --epochs 1 --eval-n 100 --preset fast

All methods are trained first, then evaluated one eps at a time (largest first), in
chunks of test images taken in turn across the methods; the table is rewritten after
every chunk round, so a long run shows partial results. Every finished chunk is kept in
the ledger (bench/results/robustness-autoattack.json) under the sha256 of the weights it
attacked, and each method's evaluated model is kept beside it (bench/results/
robustness-models/), so a stopped run goes on where it stopped, on this machine or
another (`--retrain` trains afresh). Several processes may share the ledger: each
claims a chunk before attacking it and skips chunks another live process holds, so two
processes, one per core, split the work (on two cores about 1.25x faster than one
process on two threads). `make bench` trains in two processes, then evaluates in two:

    ... robustness.py --train-only --methods clean pgd_at trades &
    ... robustness.py --train-only --methods mart dyart; wait
    ... robustness.py --results /tmp/a.md & ... robustness.py --results /tmp/b.md; wait
    ... robustness.py --table-only    # the whole table from the ledger

Training runs on one thread by default, so two runs train the same weights bit for
bit; on more threads they do not (RELIABILITY.md). The evaluated models may come from
different machines, so for the cost question alone every method is timed afresh on one:

    ... robustness.py --retrain --train-only --work-dir /tmp/cost --models /tmp/cost/models \\
        --cost-table bench/results/training_cost.md
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from dyart import catalog
from dyart.checkpoint import file_sha256, load_model
from dyart.config import TrainConfig
from dyart.data import load_dataset
from dyart.evaluate import autoattack_eval
from dyart.train import Trainer

RECIPE = Path(__file__).resolve().parents[1] / "dyart" / "configs" / "mnist10k_dyart.yaml"
METHODS = ("clean", "pgd_at", "trades", "mart", "dyart")
# what a trained method leaves for the table: its row, epochs and evaluated model
KEPT = ("bench_row.json", "metrics.jsonl", "model-best.safetensors", "model-best.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="method epochs (default: recipe)")
    p.add_argument("--burn-in-epochs", type=int, default=None)
    p.add_argument(
        "--batch-size", type=int, default=None,
        help="every method's batch size, the burn-in's too (default: recipe)",
    )  # fmt: skip
    p.add_argument(
        "--architecture", default=None,
        help="every method's model, the burn-in's too (default: recipe's small_cnn)",
    )  # fmt: skip
    p.add_argument("--eval-n", type=int, default=2000, help="test images (2,000 = all)")
    p.add_argument("--chunk", type=int, default=250, help="test images per AutoAttack chunk")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--preset", default="standard")
    p.add_argument(
        "--eps-ramp", type=float, default=0.3,
        help="baselines: fraction of training over which the attack eps rises from 0",
    )  # fmt: skip
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument(
        "--lr", nargs="+", default=[], metavar="METHOD=LR", type=_method_lr,
        help="a method's peak learning rate (default: its mnist10k_<method> recipe's)",
    )  # fmt: skip
    p.add_argument("--work-dir", default="/tmp/dyart-bench-robustness")
    p.add_argument(
        "--models", default="bench/results/robustness-models",
        help="each method's evaluated model, row and epochs, kept with the results",
    )  # fmt: skip
    p.add_argument(
        "--train-only", action="store_true", help="train (or reuse) the models, attack nothing"
    )
    p.add_argument(
        "--table-only", action="store_true",
        help="write the table from the kept models and the ledger; train and attack nothing",
    )  # fmt: skip
    p.add_argument(
        "--retrain", action="store_true",
        help="train every method afresh instead of reusing the kept models",
    )  # fmt: skip
    p.add_argument("--results", default="bench/results/robustness.md")
    p.add_argument(
        "--cost-table", default=None, metavar="PATH",
        help="also write each method's training time beside the others' to PATH (with "
        "--retrain --train-only: every method timed on this machine, one after another)",
    )  # fmt: skip
    p.add_argument(
        "--notes", default="bench/results/robustness-notes.md",
        help="a hand-written reading of the results, put in the table's page if it exists",
    )  # fmt: skip
    p.add_argument(
        "--ledger", default="bench/results/robustness-autoattack.json",
        help="AutoAttack results per weights sha256 and chunk; the table is built from it",
    )  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (the kept models were trained on 1; another count trains others)",
    )  # fmt: skip
    return p.parse_args(argv)


def _method_lr(text: str) -> tuple[str, float]:
    method, sep, value = text.partition("=")
    if not sep or method not in METHODS:
        raise argparse.ArgumentTypeError(f"expected METHOD=LR with METHOD in {METHODS}")
    try:
        return method, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None


def base_config(args: argparse.Namespace, method: str) -> TrainConfig:
    """The DyART recipe with the method and its recipe's learning rate swapped in."""
    spec = yaml.safe_load(RECIPE.read_text())
    spec.update(eval_eps=args.eps, eval_n=args.eval_n, eval_preset=args.preset)
    if args.epochs is not None:
        spec["epochs"] = args.epochs
    if args.burn_in_epochs is not None:
        spec["burn_in_epochs"] = args.burn_in_epochs
    if args.batch_size is not None:
        spec["batch_size"] = args.batch_size
    if args.architecture is not None:
        spec["architecture"] = args.architecture
    if method in dict(args.lr):
        spec["lr"] = dict(args.lr)[method]
    else:  # each method's tuned lr, from its own recipe
        spec["lr"] = yaml.safe_load(RECIPE.with_name(f"mnist10k_{method}.yaml").read_text())["lr"]
    if method == "clean":
        spec.update(method=method, grad_clip=0.0, hparams={})
    elif method != "dyart":
        # ALGORITHM.md §6: baselines use the same optimizer, EMA and schedule, no
        # clipping; on MNIST at eps 0.3 they need an eps warm-up, or they collapse to
        # predicting one class within the first epoch
        spec.update(method=method, grad_clip=0.0, hparams={"eps_ramp": args.eps_ramp})
    return TrainConfig.from_dict(spec)


def train_method(args: argparse.Namespace, method: str, burn_in: Path | None) -> dict:
    """Burn-in (or reuse the shared one), then the method; returns the timings.

    A method already trained — in ``work_dir``, or kept in ``--models`` by an earlier
    run — with the same training settings is not trained again: its row, with the
    training times measured then, is reused, so a later run can evaluate at other eps
    or on more images, on the very weights the ledger's results are for. (Training
    repeats bit for bit only on the same number of torch threads, which split the
    sums the same way, so the weights themselves are kept.)
    """
    config = base_config(args, method)
    out = Path(args.work_dir) / method
    kept = Path(args.models) / method
    cached = out / "bench_row.json"
    if args.retrain and out.exists():
        _set_aside(out)
    elif not cached.is_file() and (kept / "bench_row.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            shutil.copy2(kept / name, out / name)
    if cached.is_file():
        row = json.loads(cached.read_text())
        if _training_part(row["config"]) == _training_part(config.to_dict()):
            return {**row, "config": config.to_dict(), "out_dir": str(out), "results": {}}
        _set_aside(out)  # trained with other settings: keep that run aside, train afresh
    if args.table_only:
        raise SystemExit(
            f"--table-only: {method} has no trained model with these settings in {out} "
            f"or {kept}; run without --table-only to train it"
        )
    if burn_in is not None and not burn_in.is_file():
        burn_in = None  # the first method's model was kept, not its burn-in: train one
    trainer = Trainer(config, out, device=args.device, init_from=burn_in)
    started = time.perf_counter()
    trainer.run(("burn_in",))
    burn_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trainer.run(("burn_in", "train"))
    row = {
        "method": method,
        "config": config.to_dict(),
        "machine": cpu_name(args.device),
        "burn_in_seconds": burn_seconds,
        "train_seconds": time.perf_counter() - started,
        "out_dir": str(out),
        "results": {},  # eps -> AutoAttack row
    }
    cached.write_text(json.dumps(row, indent=1))
    kept.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        shutil.copy2(out / name, kept / name)
    return row


def cpu_name(device: str = "cpu") -> str:
    """The processor the timings were taken on (and the GPU when training ran on one)."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    if device.startswith("cuda") and torch.cuda.is_available():
        name += f", GPU {torch.cuda.get_device_name()}"
    return name


def relative_cost(row: dict, ref: dict | None, fastest: dict[str, float], digits: int = 1) -> str:
    """The row's fastest epoch over the reference row's, when both were timed on one machine.

    A row without a ``machine`` was trained before rows recorded it, in the same run as
    the others without one; a row timed on another machine than the reference's gets
    "n/a": machines differ by more than the methods do.
    """
    if ref is None or not fastest.get(ref["method"]):
        return "n/a"
    if row.get("machine") != ref.get("machine"):
        return "n/a (other machine)"
    return f"{fastest[row['method']] / fastest[ref['method']]:.{digits}f}x"


def write_cost_table(path: str | Path, rows: list[dict], command: str, threads: int) -> str:
    """Each method's training time beside the others', from rows timed on one machine.

    The robustness table keeps each method's evaluated model, wherever it was trained;
    this table is for the cost question alone: methods trained one after another in one
    process (``--retrain --train-only``), so the ratios compare like with like.
    """
    epochs, fastest = _epochs_and_fastest(rows)
    by_method = {r["method"]: r for r in rows}
    lines = []
    for r in rows:
        val = _best_val(epochs[r["method"]])
        weights = Path(r["out_dir"]) / "model-best.safetensors"
        digest = file_sha256(weights)[:8] if weights.is_file() else "—"
        lines.append(
            f"| {r['method']} | {r.get('machine', 'not recorded')} | {len(epochs[r['method']])} "
            f"| {r['train_seconds']:.0f} | {fastest[r['method']]:.1f} "
            f"| {relative_cost(r, by_method.get('clean'), fastest)} "
            f"| {relative_cost(r, by_method.get('pgd_at'), fastest, digits=2)} "
            f"| {val:.3f} | {digest} |\n"
        )
    text = (
        "# Training cost of each method on one machine\n\n"
        "Each method trained on MNIST-10k with the settings of the robustness table, one "
        f"after another in one process, {threads} torch thread(s). Train time is the method "
        "stage's wall time (the shared burn-in not counted); the fastest epoch (training "
        "plus validation) is the fairer cost, as other work only slows an epoch down. "
        "Ratios are between fastest epochs, and only between rows timed on one machine. "
        '"best val PGD acc": held-out validation accuracy under PGD-CW at eps 0.3, the best '
        "epoch; these models are not attacked here, and weights trained on another "
        "processor differ from the robustness table's (compare the sha256 prefixes with "
        "its ledger).\n\n"
        "| method | machine | epochs | train time (s) | fastest epoch (s) | relative to clean "
        "| relative to PGD-AT | best val PGD acc | weights (sha256) |\n"
        + "| --- " * 9
        + "|\n"
        + "".join(lines)
        + f"\nTorch {torch.__version__}.\n\nCommand: `{command}`\n"
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text


def _set_aside(out: Path) -> None:
    out.rename(out.with_name(f"{out.name}-replaced-{time.strftime('%Y%m%d-%H%M%S')}"))


def _training_part(config: dict) -> dict:
    """The fields that decide what was trained (not how it is evaluated); a model
    trained before a setting existed was trained with its default."""
    full = catalog.with_new_defaults(config)
    return {k: v for k, v in full.items() if not k.startswith("eval_")}


def evaluate_method(args: argparse.Namespace, row: dict, eps: float, limit: int) -> None:
    """AutoAttack on the best checkpoint's EMA model at one eps, up to image ``limit``.

    The test images are attacked in chunks of ``--chunk`` (AutoAttack treats every
    image on its own, so chunks add up to the whole). Each finished chunk goes into
    the ledger (``--ledger``, kept with the results) under the sha256 of the weights
    it attacked, with the time it took: a rerun, here or on another machine whose
    training reproduces the same weights bit for bit, attacks only the chunks still
    missing, and the table is rebuilt from the ledger.
    """
    out = Path(row["out_dir"])
    weights = out / "model-best.safetensors"
    digest = row.setdefault("weights_sha256", file_sha256(weights))
    test_x, test_y = _test_set(row["config"]["val_size"])
    n = min(args.eval_n, len(test_x))
    model = None
    for start in range(0, min(limit, n), args.chunk):
        end = min(start + args.chunk, n)
        key = chunk_key(args.preset, eps, start, end)
        if key in read_ledger(args.ledger).get(digest, {}).get("chunks", {}):
            continue
        if args.table_only:
            break
        if not claim_chunk(args.ledger, digest, key):
            continue  # another process is attacking it
        if model is None:
            model = load_model(weights, device=args.device)
        print(f"[{time.strftime('%H:%M:%S')}] {row['method']}: {key}", flush=True)
        x, y = test_x[start:end].float() / 255, test_y[start:end]
        started = time.perf_counter()
        result = autoattack_eval(
            model, x.to(args.device), y.to(args.device), eps_list=[eps], preset=args.preset,
            state_dir=out / "bench-autoattack" / f"{start}-{end}",
        )  # fmt: skip
        chunk = {**result["results"][0], "n": result["n"]}
        chunk["seconds"] = time.perf_counter() - started
        record_chunk(args.ledger, digest, row["method"], key, chunk)
    row["results"][eps] = ledger_result(args.ledger, digest, args.preset, eps, n, args.chunk)


@functools.cache
def _test_set(val_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-10k's test images and labels, loaded (and md5-checked) once per process."""
    data = load_dataset("mnist10k", val_size=val_size, seed=0)
    return data.test_x, data.test_y


def chunk_key(preset: str, eps: float, start: int, end: int) -> str:
    return f"{preset}/eps {eps:g}/images {start}-{end}"


def read_ledger(path: str | Path) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the ledger's lock: several bench processes may share the ledger."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def claim_chunk(path: str | Path, digest: str, key: str) -> bool:
    """Claim a chunk for this process: False if it is done, or another live process
    on this machine holds it (a claim from a process that has ended is taken over;
    AutoAttack's progress files let the new owner skip the attacks already run)."""
    path = Path(path)
    claims_path = path.with_name(path.name + ".claims")
    with _locked(path):
        if key in read_ledger(path).get(digest, {}).get("chunks", {}):
            return False
        claims = read_ledger(claims_path)
        holder = claims.get(f"{digest}/{key}")
        if holder and holder["pid"] != os.getpid() and _alive(holder["pid"]):
            return False
        claims[f"{digest}/{key}"] = {"pid": os.getpid(), "since": time.time()}
        _write_json(claims_path, claims)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_chunk(path: str | Path, digest: str, method: str, key: str, chunk: dict) -> None:
    """Add one chunk's result to the ledger and drop its claim."""
    path = Path(path)
    claims_path = path.with_name(path.name + ".claims")
    with _locked(path):
        ledger = read_ledger(path)
        entry = ledger.setdefault(digest, {"method": method, "chunks": {}})
        entry["chunks"][key] = chunk
        _write_json(path, ledger)
        claims = read_ledger(claims_path)
        if claims.pop(f"{digest}/{key}", None) is not None:
            _write_json(claims_path, claims)


def ledger_result(
    path: str | Path, digest: str, preset: str, eps: float, n: int, size: int
) -> dict | None:
    """The chunks done so far, from the first image on, added up into one result.

    ``n`` is the number of images they cover (fewer than asked while chunks are
    missing); accuracies are weighted by each chunk's images; ``seconds`` is the sum.
    """
    chunks = read_ledger(path).get(digest, {}).get("chunks", {})
    done = []
    for start in range(0, n, size):
        key = chunk_key(preset, eps, start, min(start + size, n))
        if key not in chunks:
            break
        done.append(chunks[key])
    if not done:
        return None
    total = sum(c["n"] for c in done)

    def mean(get) -> float:
        return sum(get(c) * c["n"] for c in done) / total

    return {
        "eps": eps,
        "n": total,
        "clean_acc": mean(lambda c: c["clean_acc"]),
        "robust_acc": mean(lambda c: c["robust_acc"]),
        "per_attack": {a: mean(lambda c, a=a: c["per_attack"][a]) for a in done[0]["per_attack"]},
        "seconds": sum(c["seconds"] for c in done),
    }


def write_table(args: argparse.Namespace, rows: list[dict], command: str) -> str:
    eps_list = args.eps
    epochs, fastest = _epochs_and_fastest(rows)
    clean_row = next((r for r in rows if r["method"] == "clean"), None)
    target = min(args.eval_n, 2000)
    head = "| method | lr | clean acc | " + " | ".join(f"AA acc @ {e:g}" for e in eps_list)
    head += " | best val PGD acc | train time (s) | fastest epoch (s) | relative to clean |\n"
    head += "| --- " * (7 + len(eps_list)) + "|\n"
    lines = []
    for r in rows:
        res = {e: v for e, v in r["results"].items() if v}
        accs = " | ".join(_cell(res.get(e), target) for e in eps_list)
        val = _best_val(epochs[r["method"]])
        rel = relative_cost(r, clean_row, fastest)
        widest = max(res.values(), key=lambda v: v["n"], default=None)  # clean acc: most images
        clean = _cell(widest and {**widest, "robust_acc": widest["clean_acc"]}, target)
        lines.append(
            f"| {r['method']} | {r['config']['lr']:g} | {clean} | {accs} | {val:.3f} "
            f"| {r['train_seconds']:.0f} | {fastest[r['method']]:.1f} | {rel} |\n"
        )
    first = rows[0]
    own = ("method", "hparams", "lr", "grad_clip")  # per method, listed with its hparams
    config = {k: v for k, v in first["config"].items() if k not in own}
    per_attack = "\n".join(f"* {r['method']}: {_attack_trail(r)}" for r in rows)
    counts = {v["n"] for r in rows for v in r["results"].values() if v}
    scope = (
        "on all 2,000 MNIST-10k test images"
        if target == 2000
        else f"on the first {target:,} of the 2,000 MNIST-10k test images"
    ) + f", L-inf, in chunks of {args.chunk} images."
    if counts != {target}:
        scope += (
            " A figure with a count in brackets is so far on only that many images (the "
            "first ones): the evaluation is under way or was stopped before it finished."
        )
    burn_in = max(r["burn_in_seconds"] for r in rows)
    text = (
        "# Robustness on MNIST-10k: clean, PGD-AT, TRADES, MART, DyART\n\n"
        f"AutoAttack `{args.preset}` {scope} "
        "Each method: the shared clean burn-in, then the method from the burn-in's "
        "EMA weights; the evaluated model is the best checkpoint's EMA model (by validation "
        'PGD-CW accuracy). "pending": not evaluated yet. Train time is the method stage\'s '
        f"wall time (the burn-in of {burn_in:.0f} s is shared); other work on the machine only "
        "slows an epoch down, so the fastest epoch (training plus validation) is the fairer "
        'cost, and "relative to clean" compares fastest epochs timed on one machine '
        '("n/a (other machine)": this method was trained on another machine than clean; '
        "each row's bench_row.json names it; `--cost-table` times every method's training "
        "on one machine). bench/step_cost.py compares the methods' "
        'step costs alone. "best val PGD acc": the held-out '
        "validation accuracy under PGD-CW at the training eps of the checkpoint evaluated "
        "(the best epoch). The baselines "
        "ramp their attack's eps up over the first `eps_ramp` of training (see each method's "
        "settings below).\n\n"
        + head
        + "".join(lines)
        + "\nAccuracy after each attack (in AutoAttack's order) and evaluation time:\n\n"
        + per_attack
        + "\n\n"
        + (Path(args.notes).read_text().strip() + "\n\n" if Path(args.notes).is_file() else "")
        + f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work, "
        f"{torch.get_num_threads()} torch threads, device {args.device}, torch "
        f"{torch.__version__}.\n\n"
        + (
            "Results from the ledger (bench/results/robustness-autoattack.json), written "
            f"by `make bench`'s evaluation processes; this table by `{command}`.\n\n"
            if args.table_only
            else f"Command: `{command}`\n\n"
        )
        + "Shared settings:\n\n```json\n"
        + json.dumps(config, indent=1)
        + "\n```\n\n"
        "Each method's learning rate, gradient clipping and hyperparameters:\n\n```json\n"
        + json.dumps({r["method"]: {k: r["config"][k] for k in own[1:]} for r in rows}, indent=1)
        + "\n```\n"
    )
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)
    return text


def _train_epochs(row: dict) -> list[dict]:
    """The method stage's per-epoch rows, from the run's metrics.jsonl."""
    lines = (Path(row["out_dir"]) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == "train"]


def _epochs_and_fastest(rows: list[dict]) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Each method's per-epoch rows, and its fastest epoch in seconds."""
    epochs = {r["method"]: _train_epochs(r) for r in rows}
    return epochs, {m: min(e["seconds"] for e in rows_) for m, rows_ in epochs.items()}


def _best_val(epochs: list[dict]) -> float:
    """The best validation PGD accuracy over a method's epochs."""
    return max(e["val_pgd_acc"] or 0.0 for e in epochs)


def _cell(result: dict | None, target: int) -> str:
    """An accuracy, with its image count when that is short of the target."""
    if not result:
        return "pending"
    if result["n"] == target:
        return f"{result['robust_acc']:.3f}"
    return f"{result['robust_acc']:.3f} ({result['n']:,})"


def _attack_trail(row: dict) -> str:
    parts = []
    for eps, res in sorted(row["results"].items()):
        if not res:
            continue
        accs = ", ".join(f"{a} {v:.3f}" for a, v in res["per_attack"].items())
        parts.append(f"eps {eps:g}: {accs} ({res['n']:,} images, {res['seconds']:.0f} s)")
    return "; ".join(parts) or "pending"


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    command = "PYTHONPATH=. .venv/bin/python " + shlex.join(sys.argv)
    rows: list[dict] = []
    burn_in = None
    for method in args.methods:  # all training first, so every method gets some evaluation
        print(f"[{time.strftime('%H:%M:%S')}] {method}: training", flush=True)
        row = train_method(args, method, burn_in)
        burn_in = burn_in or Path(row["out_dir"]) / "burn_in.pt"
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
        if not args.train_only:  # a partial table would overwrite the committed one
            write_table(args, rows, command)
    # eps 0.3, the MNIST threat model, first; within an eps, chunk by chunk across the
    # methods, so a run stopped early leaves every method evaluated on as many images
    for eps in sorted(args.eps, reverse=True) if not args.train_only else ():
        for limit in range(args.chunk, args.eval_n + args.chunk, args.chunk):
            for row in rows:
                evaluate_method(args, row, eps, limit)
                print(row["method"], json.dumps(row["results"][eps]), flush=True)
            write_table(args, rows, command)
    if args.cost_table:
        print(write_cost_table(args.cost_table, rows, command, args.threads))
    if args.train_only:
        for row in rows:
            print(f"{row['method']}: {Path(row['out_dir']) / 'model-best.safetensors'}")
        print(f"--train-only: {args.results} left as it was; --table-only builds it")
    else:
        print(Path(args.results).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
