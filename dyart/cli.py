"""The command line: ``dyart train`` and ``dyart eval``.

    dyart train --recipe mnist10k_dyart --out runs/demo
    dyart train --config my.yaml --epochs 50 --hparam lam_robust=500 --out runs/x
    dyart eval runs/demo/model-best.safetensors --eps 0.1 0.3 --preset standard --n 1000

Every ``TrainConfig`` field is a flag (``--batch-size``, ``--eval-eps 0.1 0.3``...),
method hyperparameters are ``--hparam KEY=VALUE``. A bad setting prints one
line, ``error: <field>: <message>``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from dyart import catalog
from dyart.callbacks import Callback
from dyart.errors import (
    CheckpointError,
    ConfigError,
    ConfigErrors,
    DatasetCorruptError,
    DatasetMissingError,
    DyartError,
    InputError,
    NonFiniteLossError,
    StopRequested,
)
from dyart.files import exclusive_use, writable_folder

RECIPES_DIR = Path(__file__).parent / "configs"
_INPUT_ERRORS = {
    DatasetMissingError: "dataset",
    DatasetCorruptError: "dataset",
    CheckpointError: "checkpoint",
    InputError: "input",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error: <flag>: <message>`` line."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument "):
            message = message[len("argument ") :]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def recipes() -> list[str]:
    """Names of the bundled recipes (``dyart/configs/*.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dyart", description="DyART robust training from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train a model (burn-in, method, AutoAttack)")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--config", help="a YAML or JSON file of TrainConfig fields")
    source.add_argument("--recipe", help=f"a bundled recipe: {', '.join(recipes())}")
    for name, choices in (
        ("dataset", catalog.DATASETS),
        ("architecture", catalog.ARCHITECTURES),
        ("method", catalog.METHODS),
    ):
        train.add_argument(f"--{name}", choices=list(choices), default=argparse.SUPPRESS)
    for param in catalog.TRAIN_PARAMS.values():
        _add_param_flag(train, param)
    train.add_argument(
        "--hparam", action="append", default=[], metavar="KEY=VALUE",
        help="a method hyperparameter (repeatable), e.g. --hparam lam_robust=500",
    )  # fmt: skip
    train.add_argument("--out", help="output folder (default runs/<dataset>-<method>)")
    _add_run_flags(train)
    train.add_argument(
        "--stages", default="burn_in,train,evaluate", help="comma-separated subset of stages"
    )
    train.add_argument("--init-from", help="burn_in.pt of an earlier run to reuse")
    ev = commands.add_parser("eval", help="AutoAttack a saved model; prints JSON")
    ev.add_argument("checkpoint", help="model-<kind>.safetensors or its .json card")
    ev.add_argument("--eps", type=float, nargs="+", help="radii (default: the dataset's)")
    ev.add_argument(
        "--preset", choices=list(catalog.EVAL_PRESETS), default="standard",
        help="AutoAttack preset: standard (the leaderboards' four attacks), custom (apgd-ce, "
        "apgd-t, fab-t, as the DyART paper ran) or fast (apgd-ce only, for tests; not an "
        "evaluation); default standard",
    )  # fmt: skip
    ev.add_argument("--n", type=int, default=1000, help="first N test images (default 1000)")
    ev.add_argument(
        "--batch-size", type=int, default=500,
        help="images attacked at once; lower it if the device runs out of memory (default 500)",
    )  # fmt: skip
    ev.add_argument("--state-dir", help="folder for progress files; a rerun resumes")
    ev.add_argument("--output", help="also write the JSON to this file")
    _add_run_flags(ev)
    return parser


def _add_param_flag(parser: argparse.ArgumentParser, param: catalog.Param) -> None:
    flag = "--" + param.name.replace("_", "-")
    kwargs: dict[str, Any] = {"dest": param.name, "default": argparse.SUPPRESS, "help": param.help}
    if param.type == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif param.type == "choice":
        kwargs["choices"] = list(param.choices)
    elif param.type == "float_list":
        kwargs.update(type=float, nargs="*")
    else:
        kwargs["type"] = int if param.type == "int" else float
    parser.add_argument(flag, **kwargs)


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", default=os.environ.get("DYART_DATA_DIR") or None,
        help="folder of on-disk datasets (CIFAR, SVHN...); default: $DYART_DATA_DIR",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def load_config(args: argparse.Namespace) -> Any:
    """The TrainConfig from ``--config``/``--recipe`` plus the flags that override it."""
    from dyart.config import TrainConfig

    overrides = {
        k: getattr(args, k)
        for k in ("dataset", "architecture", "method", *catalog.TRAIN_PARAMS)
        if hasattr(args, k)
    }
    hparams = _parse_hparams(args.hparam)
    path = args.config
    if args.recipe:
        if args.recipe not in recipes():
            raise ConfigError("recipe", f"{args.recipe!r} is not one of {', '.join(recipes())}")
        path = RECIPES_DIR / f"{args.recipe}.yaml"
    if path is None:
        return TrainConfig.from_dict({**overrides, "hparams": hparams}, args.data_dir)
    import yaml

    try:
        config = TrainConfig.from_file(path, **overrides, hparams=hparams)
    except (ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError("config", f"cannot read {path}: {exc}") from exc
    label = f"recipe {args.recipe}" if args.recipe else str(path)
    _warn_tuned_for_another_dataset(path, label, config, overrides, hparams)
    return config


def _warn_tuned_for_another_dataset(
    path: Path, label: str, config: Any, overrides: dict[str, Any], hparams: dict[str, Any]
) -> None:
    """A --dataset on top of a file made for another one keeps the file's radii and sizes,
    tuned for its dataset: say which, so they are overridden or chosen knowingly."""
    from dyart.config import read_spec

    spec = read_spec(path)
    theirs = spec.get("dataset")
    if "dataset" not in overrides or theirs == config.dataset:
        return
    sized = ("eval_eps", "eval_n", "val_size")
    kept = [f"{k}={spec[k]}" for k in sized if k in spec and k not in overrides]
    params = {p.name: p for p in catalog.METHODS[config.method].params}
    kept += [
        f"{k}={v}" for k, v in (spec.get("hparams") or {}).items()
        if k not in hparams and getattr(params.get(k), "eps_scale", None) is not None
    ]  # fmt: skip
    if kept:
        logging.getLogger("dyart").warning(
            "warning: %s was made for %s; kept from it, tuned for %s: %s (override them with "
            "flags or --hparam, or start from a config for %s)",
            label, theirs, theirs, ", ".join(kept), config.dataset,
        )  # fmt: skip


def _parse_hparams(items: list[str]) -> dict[str, Any]:
    """``--hparam KEY=VALUE`` flags as a mapping; a key given twice or without a value
    is refused (an empty value would silently mean the default)."""
    hparams: dict[str, Any] = {}
    for item in items:
        key, value = _parse_hparam(item)
        if key in hparams:
            raise ConfigError(
                f"hparams.{key}", f"given twice ({hparams[key]!r} and {value!r}); give it once"
            )
        if value is None:
            raise ConfigError(
                f"hparams.{key}",
                f"no value in {item!r}; give {key}=VALUE, or leave it out for the default",
            )
        hparams[key] = value
    return hparams


def _parse_hparam(item: str) -> tuple[str, Any]:
    import yaml

    from dyart.config import load_yaml

    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("hparam", f"expected KEY=VALUE, got {item!r}")
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def cmd_train(args: argparse.Namespace) -> int:
    from dyart.callbacks import ConsoleCallback
    from dyart.train import Trainer

    config = load_config(args)
    out = writable_folder(args.out or f"runs/{config.dataset}-{config.method}", "out")
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    interrupt = _InterruptStop()
    trainer = Trainer(
        config, out, device=args.device, data_dir=args.data_dir,
        callbacks=[ConsoleCallback(), interrupt], init_from=args.init_from,
    )  # fmt: skip
    with exclusive_use(out, "out", "dyart train"), interrupt.installed():
        summary = trainer.run(stages)
    _print_summary(summary, _no_results_reason(config, stages))
    return 0


def _no_results_reason(config: Any, stages: tuple[str, ...]) -> str:
    """Why a run has no results.json, as the summary says it."""
    if not config.eval_eps:
        return "(no evaluation: eval_eps is empty)"
    if "evaluate" not in stages:
        return "(no evaluation: the evaluate stage was not run; add it to --stages)"
    return "(no evaluation)"


def _print_summary(summary: dict[str, Any], no_results: str) -> None:
    checkpoints = summary["checkpoints"]
    chosen = next((checkpoints[k] for k in ("best", "final", "burn_in") if k in checkpoints), None)
    if chosen:
        print(f"checkpoint: {chosen}")
        print(f"model card: {Path(chosen).with_suffix('.json')}")
    print(f"results:    {summary['results'] or no_results}")
    evaluation = summary["evaluation"] or {}
    if evaluation:
        grade = (
            "leaderboard-grade: the standard preset on the whole test set"
            if evaluation.get("leaderboard_grade")
            else "a quick evaluation, not a leaderboard figure: leaderboards use the "
            "standard preset on the whole test set"
        )
        print(
            f"AutoAttack: preset {evaluation['preset']}, {evaluation['n']} test images, "
            f"{evaluation['norm']}, checkpoint {evaluation.get('checkpoint', '?')} ({grade})"
        )
    for row in evaluation.get("results", []):
        print(
            f"  eps {row['eps']:.4g}: clean {row['clean_acc']:.4f} robust {row['robust_acc']:.4f}"
        )
    for message in evaluation.get("warnings", []):
        print(f"  warning: {message}")


def cmd_eval(args: argparse.Namespace) -> int:
    from dyart.checkpoint import load_model, read_card
    from dyart.data import load_dataset
    from dyart.evaluate import autoattack_eval, pixels
    from dyart.train import resolve_device

    _check_eval_flags(args)
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device=device)
    path = Path(args.checkpoint)
    card = read_card(path if path.suffix == ".json" else path.with_suffix(".json"))
    dataset = _card_dataset(card, path)
    eps = _checked_eps(args.eps or list(catalog.DATASETS[dataset].eval_eps))
    config = card.get("config", {})
    data = load_dataset(dataset, args.data_dir, val_size=config.get("val_size", 1024),
                        seed=config.get("seed", 0), device=device)  # fmt: skip
    n = min(args.n, len(data.test_x))
    x = pixels(data.test_x[:n], device)
    result = autoattack_eval(
        model, x, data.test_y[:n].to(device), eps_list=eps, preset=args.preset,
        norm=card.get("threat_model", {}).get("norm", "linf"), batch_size=args.batch_size,
        state_dir=args.state_dir,
    )  # fmt: skip
    result.update(checkpoint=str(path), sha256=card.get("sha256"), dataset=dataset)
    result.update(stage=card.get("stage"), epoch=card.get("epoch"))
    result["leaderboard_grade"] = catalog.leaderboard_grade(dataset, args.preset, n)
    text = json.dumps(result, indent=2)
    print(text)  # first: the results are on screen whatever happens to the file
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


def _check_eval_flags(args: argparse.Namespace) -> None:
    """Refuse bad flags before the model and the data are loaded."""
    if args.batch_size < 1:
        raise ConfigError("batch-size", f"expected at least 1 image, got {args.batch_size}")
    if args.n < 1:
        raise ConfigError("n", f"expected at least 1 image, got {args.n}")
    if args.eps:
        _checked_eps(args.eps)
    if args.output:
        _check_writable(Path(args.output))
    if args.state_dir:
        writable_folder(args.state_dir, "state-dir")


def _checked_eps(eps: list[float]) -> list[float]:
    """The radii, checked as a job's eval_eps is: in (0, 1], each once, at most MAX_EPS."""
    checked, error = catalog.check_eps(eps, "eps")
    if error:
        raise ConfigError(error.partition(":")[0], error)
    return list(checked)


def _card_dataset(card: dict[str, Any], path: Path) -> str:
    """The dataset the model card names, which decides the test images and the radii."""
    dataset = card.get("dataset")
    if not isinstance(dataset, str) or dataset not in catalog.DATASETS:
        said = "names no dataset" if dataset is None else f"names dataset {dataset!r}"
        raise CheckpointError(
            f"checkpoint: the model card of {path} {said}: its field dataset should be one of "
            f"{', '.join(catalog.DATASETS)}"
        )
    return str(dataset)


def _check_writable(path: Path) -> None:
    """Refuse, before an evaluation that may take hours, an --output it cannot write."""
    if path.is_dir():
        raise ConfigError("output", f"{path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise ConfigError("output", f"folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError("output", f"folder {path.parent} is not writable")


class _InterruptStop(Callback):
    """First Ctrl-C asks the trainer to save and stop; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    def should_stop(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("stopping after this step (Ctrl-C again to abort)...", file=sys.stderr)

    def installed(self) -> Any:
        import contextlib

        @contextlib.contextmanager
        def handler() -> Any:
            previous = signal.signal(signal.SIGINT, self._handle)
            try:
                yield
            finally:
                signal.signal(signal.SIGINT, previous)

        return handler()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dyart`` console script; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        return cmd_train(args) if args.command == "train" else cmd_eval(args)
    except ConfigError as exc:
        print(f"error: {_config_message(exc)}", file=sys.stderr)
    except (DatasetMissingError, DatasetCorruptError, CheckpointError, InputError) as exc:
        print(f"error: {_with_field(exc)}", file=sys.stderr)
    except StopRequested as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopped: {_interrupted(args)}", file=sys.stderr)
        return 130
    except (NonFiniteLossError, DyartError) as exc:
        print(f"error: {_with_field(exc, 'training')}", file=sys.stderr)
        return 1
    return 2


def _interrupted(args: argparse.Namespace) -> str:
    """What a Ctrl-C that ended the command leaves behind, in one line."""
    if args.command == "train":
        out = args.out or "the out folder"
        return (
            f"aborted; {out}/state keeps the state saved at the last epoch end: run the same "
            "command to resume from it"
        )
    if args.state_dir:
        return (
            f"interrupted; the attacks finished so far are kept in {args.state_dir}: run the "
            "same command to resume"
        )
    return "interrupted; nothing was kept (give --state-dir to keep progress across runs)"


def _config_message(exc: ConfigError) -> str:
    """``field: message`` for each bad field, on one line."""
    pairs = exc.errors if isinstance(exc, ConfigErrors) else [(exc.field, str(exc))]
    parts = [m if m.startswith((f"{f}:", f"{f}[")) else f"{f}: {m}" for f, m in pairs]
    return " ".join("; ".join(parts).split())


def _with_field(exc: Exception, default: str = "") -> str:
    field = next((f for t, f in _INPUT_ERRORS.items() if isinstance(exc, t)), default)
    text = " ".join(str(exc).split())  # one line
    return text if text.startswith(f"{field}:") else f"{field}: {text}"


if __name__ == "__main__":
    sys.exit(main())
