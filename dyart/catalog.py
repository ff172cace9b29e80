"""What this library can train: datasets, architectures, methods and every knob.

Torch-free on purpose: the API process imports this module to validate job
requests and to build the dashboard's form, and the trainer imports it to fill
defaults, so the two can never disagree about a default or a range.

Eps-like values are on the [0, 1] pixel scale. A method hyperparameter whose
``eps_scale`` is set has no fixed default: it defaults to ``eps_scale`` times
the dataset's threat-model eps (ALGORITHM.md §6: r0 ≈ 2·eps, eps_fab ≈ eps,
PGD step = eps/4), so the same method card serves MNIST and CIFAR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, default and allowed values."""

    name: str
    type: str  # "float" | "int" | "bool" | "choice" | "float_list"
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    eps_scale: float | None = None  # default = eps_scale * dataset.eps
    max_items: int | None = None  # float_list: the most values it takes
    above_min: bool = False  # min itself is refused (an AutoAttack radius of 0 attacks nothing)

    def public(self) -> dict[str, Any]:
        """A JSON-able description, as the API's catalog serves it."""
        return {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "help": self.help,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices),
            "eps_scale": self.eps_scale,
            "max_items": self.max_items,
            "above_min": self.above_min,
        }


@dataclass(frozen=True)
class DatasetCard:
    """A dataset: image shape, classes, threat model and where its files live."""

    name: str
    title: str
    channels: int
    image_size: int
    num_classes: int
    eps: float  # the usual L-inf threat-model eps on this dataset
    eval_eps: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bundled: bool
    files: tuple[str, ...] = ()  # relative to the data directory, for on-disk sets
    description: str = ""
    n_train: int = 0  # training images before the validation part is held out
    val_size: int = 1024  # the default validation part
    # version of how the files become train / validation / test: a run or a burn-in
    # made on another version is not continued (its validation images were trained on)
    split: int = 1
    # images in the test set every published number uses; None: no such set (only a
    # standard-preset AutoAttack on all of them is a leaderboard-grade result)
    test_size: int | None = None

    def missing_files(self, data_dir: str | Path) -> list[str]:
        """Files this dataset needs under ``data_dir`` that are not there."""
        if self.bundled:
            return []
        root = Path(data_dir)
        return [f for f in self.files if not (root / f).exists()]

    def public(self, data_dir: str | Path | None = None) -> dict[str, Any]:
        out = {
            "name": self.name,
            "title": self.title,
            "channels": self.channels,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "eps": self.eps,
            "eval_eps": list(self.eval_eps),
            "bundled": self.bundled,
            "files": list(self.files),
            "description": self.description,
            "n_train": self.n_train,
            "val_size": self.val_size,
            "test_size": self.test_size,
        }
        if data_dir is not None:
            out["available"] = not self.missing_files(data_dir)
        return out


@dataclass(frozen=True)
class ArchitectureCard:
    """A model family entry: which images it takes."""

    name: str
    title: str
    min_image_size: int
    max_image_size: int
    params_millions: float
    description: str = ""

    def fits(self, dataset: DatasetCard) -> str | None:
        """None if the architecture takes the dataset's images, else why not."""
        size = dataset.image_size
        if size < self.min_image_size:
            return (
                f"architecture {self.name!r} needs images of at least "
                f"{self.min_image_size}x{self.min_image_size}; dataset "
                f"{dataset.name!r} has {size}x{size}"
            )
        if size > self.max_image_size:
            return (
                f"architecture {self.name!r} takes images of at most "
                f"{self.max_image_size}x{self.max_image_size}; dataset "
                f"{dataset.name!r} has {size}x{size}"
            )
        return None

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "min_image_size": self.min_image_size,
            "max_image_size": self.max_image_size,
            "params_millions": self.params_millions,
            "description": self.description,
        }


@dataclass(frozen=True)
class MethodCard:
    """A training method, its hyperparameters and the paper that introduced it.

    ``paper_title``, ``authors``, ``link`` and ``venue`` are written as RobustBench's
    model entries write them (its ``name``, ``authors``, ``link`` and ``venue``).
    """

    name: str
    title: str
    paper: str
    params: tuple[Param, ...] = field(default_factory=tuple)
    paper_title: str = ""
    authors: str = ""
    link: str = ""
    venue: str = ""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "paper": self.paper,
            "params": [p.public() for p in self.params],
        }


_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)

DATASETS: dict[str, DatasetCard] = {
    d.name: d
    for d in (
        DatasetCard(
            "mnist10k",
            "MNIST-10k (the real MNIST test set, split 8,000 train / 2,000 test)",
            1,
            28,
            10,
            0.3,
            (0.1, 0.2, 0.3),
            _MNIST_MEAN,
            _MNIST_STD,
            bundled=True,
            n_train=8000,
            test_size=2000,
            val_size=1024,
            description=(
                "The 10,000 images of the original MNIST test split, bundled with the "
                "library, split stratified by class with seed 0 into 8,000 training "
                "and 2,000 test images."
            ),
        ),
        DatasetCard(
            "digits",
            "scikit-learn digits (8x8 grey, 1,797 images)",
            1,
            8,
            10,
            0.1,
            (0.05, 0.1, 0.2),
            (0.3,),
            (0.35,),
            bundled=True,
            n_train=1437,
            test_size=360,
            val_size=256,
            description="scikit-learn's 8x8 handwritten digits, split 80/20 with seed 0.",
        ),
        DatasetCard(
            "synthetic",
            "synthetic (random class-dependent patterns, for tests)",
            1,
            8,
            4,
            0.1,
            (0.1,),
            (0.5,),
            (0.25,),
            bundled=True,
            n_train=384,
            val_size=64,
            description="Generated on the fly from a seed: 4 classes of noisy prototypes.",
        ),
        DatasetCard(
            "cifar10",
            "CIFAR-10",
            3,
            32,
            10,
            8 / 255,
            tuple(k / 255 for k in (2, 4, 8, 12, 16)),
            _CIFAR_MEAN,
            _CIFAR_STD,
            bundled=False,
            n_train=50000,
            test_size=10000,
            val_size=1024,
            files=tuple(
                f"cifar-10-batches-py/{f}"
                for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
            ),
            description="torchvision's python-pickle layout under the data directory.",
        ),
        DatasetCard(
            "cifar100",
            "CIFAR-100",
            3,
            32,
            100,
            8 / 255,
            tuple(k / 255 for k in (2, 4, 8, 12, 16)),
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            bundled=False,
            n_train=50000,
            test_size=10000,
            val_size=1024,
            files=("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        ),
        DatasetCard(
            "svhn",
            "SVHN",
            3,
            32,
            10,
            8 / 255,
            tuple(k / 255 for k in (2, 4, 8, 12, 16)),
            (0.4377, 0.4438, 0.4728),
            (0.1980, 0.2010, 0.1970),
            bundled=False,
            n_train=73257,
            test_size=26032,
            val_size=1024,
            files=("svhn/train_32x32.mat", "svhn/test_32x32.mat"),
        ),
        DatasetCard(
            "tiny_imagenet",
            "Tiny-ImageNet-200",
            3,
            64,
            200,
            8 / 255,
            tuple(k / 255 for k in (2, 4, 8, 12, 16)),
            (0.4802, 0.4481, 0.3975),
            (0.2302, 0.2265, 0.2262),
            bundled=False,
            n_train=100000,
            test_size=10000,
            val_size=1024,
            split=2,  # 2: the training images in one shuffled order
            files=("tiny-imagenet-200/wnids.txt", "tiny-imagenet-200/val/val_annotations.txt"),
        ),
    )
}

_NO_NORM = "no normalisation layers: norm_layer and freeze_bn do not apply"

ARCHITECTURES: dict[str, ArchitectureCard] = {
    a.name: a
    for a in (
        ArchitectureCard(
            "mlp",
            "MLP (2 hidden layers of 256)",
            4,
            32,
            0.27,
            _NO_NORM,
        ),
        ArchitectureCard(
            "small_cnn",
            "small CNN (2 conv + 2 fc)",
            8,
            32,
            0.33,
            _NO_NORM,
        ),
        ArchitectureCard(
            "madry_cnn",
            "MNIST CNN of Madry et al. (2 conv of 32 and 64 + fc 1024)",
            8,
            32,
            3.27,
            _NO_NORM,
        ),
        ArchitectureCard("preact_resnet18", "PreAct ResNet-18", 16, 64, 11.2),
        ArchitectureCard("resnet18", "ResNet-18", 16, 64, 11.2),
        ArchitectureCard("wide_resnet_28_10", "WideResNet-28-10 (ReLU)", 16, 64, 36.5),
        ArchitectureCard("wide_resnet_34_10", "WideResNet-34-10 (ReLU)", 16, 64, 46.2),
        ArchitectureCard("wide_resnet_28_10_silu", "WideResNet-28-10 (SiLU)", 16, 64, 36.5),
        ArchitectureCard("wide_resnet_34_10_silu", "WideResNet-34-10 (SiLU)", 16, 64, 46.2),
        ArchitectureCard("wide_resnet_16_4_silu", "WideResNet-16-4 (SiLU, small)", 8, 64, 2.7),
    )
}


def _names(names) -> str:
    """'a, b and c'."""
    *rest, last = names
    return f"{', '.join(rest)} and {last}" if rest else last


_WITHOUT_NORM = [name for name, card in ARCHITECTURES.items() if card.description == _NO_NORM]


_ATTACK = (
    Param("eps", "float", None, "attack radius (L-inf, pixel scale)", 0.0, 1.0, eps_scale=1.0),
    Param("step_size", "float", None, "PGD step size", 0.0, 1.0, eps_scale=0.25),
    Param("steps", "int", 10, "PGD iterations", 1, 200),
    Param(
        "eps_ramp",
        "float",
        0.0,
        "fraction of training over which eps and step size rise linearly from 0",
        0.0,
        1.0,
    ),
)

METHODS: dict[str, MethodCard] = {
    m.name: m
    for m in (
        MethodCard(
            "clean",
            "Clean training (cross-entropy)",
            "",
            (Param("label_smoothing", "float", 0.0, "label smoothing of the CE", 0.0, 0.5),),
        ),
        MethodCard(
            "dyart",
            "DyART (Dynamics-Aware Robust Training)",
            "Xu et al., ICLR 2023, arXiv:2302.03015",
            (
                Param(
                    "norm",
                    "choice",
                    "linf",
                    "threat-model norm (training jobs validate and attack in L-inf; "
                    "the library's DyART class also takes l2)",
                    choices=("linf",),
                ),
                Param("temperature", "float", 5.0, "β of the soft margin φ", 0.1, 100.0),
                Param("iterations", "int", 20, "boundary-search iterations", 1, 200),
                Param("restarts", "int", 1, "boundary-search restarts", 1, 10),
                Param("eps_fab", "float", None, "search start radius", 0.0, 2.0, eps_scale=1.0),
                Param("alpha_max", "float", 0.1, "max mixing weight towards x0", 0.0, 1.0),
                Param("eta", "float", 1.05, "overshoot of the projection step", 1.0, 2.0),
                Param("beta_back", "float", 0.9, "backward step after crossing", 0.0, 1.0),
                Param("r0", "float", None, "margins ≥ r0 get no push", 0.0, 4.0, eps_scale=2.0),
                Param(
                    "alpha",
                    "float",
                    3.0,
                    "α of h'(R)=exp(-α·R) (raised to 0.01 if below)",
                    0.0,
                    100.0,
                ),
                Param("lam_robust", "float", 1000.0, "λ, weight of the boundary term", 0.0, 1e5),
                Param("freeze_bn", "bool", False, "boundary term with BN statistics frozen"),
                Param(
                    "fused_check",
                    "bool",
                    False,
                    "check the search's crossings in its next gradient pass (no separate "
                    "forward; not in the paper's search)",
                ),
            ),
            paper_title=(
                "Exploring and Exploiting Decision Boundary Dynamics for Adversarial Robustness"
            ),
            authors="Yuancheng Xu, Yanchao Sun, Micah Goldblum, Tom Goldstein, Furong Huang",
            link="https://arxiv.org/abs/2302.03015",
            venue="ICLR 2023",
        ),
        MethodCard(
            "pgd_at",
            "PGD adversarial training",
            "Madry et al., ICLR 2018",
            _ATTACK + (Param("random_start", "bool", True, "uniform random start"),),
            paper_title="Towards Deep Learning Models Resistant to Adversarial Attacks",
            authors=(
                "Aleksander Madry, Aleksandar Makelov, Ludwig Schmidt, Dimitris Tsipras, "
                "Adrian Vladu"
            ),
            link="https://arxiv.org/abs/1706.06083",
            venue="ICLR 2018",
        ),
        MethodCard(
            "trades",
            "TRADES",
            "Zhang et al., ICML 2019",
            _ATTACK
            + (
                Param("beta", "float", 6.0, "weight of the KL term", 0.0, 100.0),
                Param("label_smoothing", "float", 0.0, "label smoothing of the CE", 0.0, 0.5),
            ),
            paper_title="Theoretically Principled Trade-off between Robustness and Accuracy",
            authors=(
                "Hongyang Zhang, Yaodong Yu, Jiantao Jiao, Eric P. Xing, Laurent El Ghaoui, "
                "Michael I. Jordan"
            ),
            link="https://arxiv.org/abs/1901.08573",
            venue="ICML 2019",
        ),
        MethodCard(
            "mart",
            "MART",
            "Wang et al., ICLR 2020",
            _ATTACK + (Param("beta", "float", 6.0, "weight of the KL term", 0.0, 100.0),),
            paper_title=(
                "Improving Adversarial Robustness Requires Revisiting Misclassified Examples"
            ),
            authors="Yisen Wang, Difan Zou, Jinfeng Yi, James Bailey, Xingjun Ma, Quanquan Gu",
            link="https://openreview.net/forum?id=rklOg6EFwS",
            venue="ICLR 2020",
        ),
    )
}

SCHEDULES = ("onecycle", "cosine", "step", "constant")
NORMS = ("bn", "gn")
PRECISIONS = ("fp32", "bf16")
EVAL_PRESETS = ("standard", "custom", "fast")
ONECYCLE_MIN_EPOCHS = 3  # fewer, and the per-epoch onecycle spends them at a tiny lr
MAX_EPS = 20  # the most eps one AutoAttack run takes (a job's eval_eps, an evaluation's eps)

# Run-level settings shared by every method: name -> Param.
TRAIN_PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("epochs", "int", 10, "training epochs of the chosen method", 1, 2000),
        Param("batch_size", "int", 128, "batch size", 1, 4096),
        Param("lr", "float", 0.1, "peak learning rate", 1e-6, 10.0),
        Param("momentum", "float", 0.9, "SGD momentum (Nesterov)", 0.0, 0.999),
        Param("weight_decay", "float", 5e-4, "weight decay (not on norm layers, biases)", 0.0, 0.1),
        Param("schedule", "choice", "onecycle", "learning-rate schedule", choices=SCHEDULES),
        Param("warmup_frac", "float", 0.025, "warm-up fraction of the schedule", 0.0, 0.5),
        Param("grad_clip", "float", 0.0, "gradient-norm clip (0 = off)", 0.0, 1e4),
        Param("ema_decay", "float", 0.995, "EMA decay of the evaluated model", 0.0, 0.99999),
        Param(
            "norm_layer",
            "choice",
            "bn",
            f"normalisation layer ({_names(_WITHOUT_NORM)} have none)",
            choices=NORMS,
        ),
        Param("augment", "bool", True, "random crop with padding (+ flip on colour sets)"),
        Param(
            "val_size",
            "int",
            None,
            "training images held out for validation (default: the dataset's)",
            0,
            50000,
        ),
        Param("val_pgd_steps", "int", 40, "PGD steps of the per-epoch validation", 1, 200),
        Param("seed", "int", 0, "random seed", 0, 2**31 - 1),
        Param(
            "burn_in_epochs", "int", 2, "clean burn-in epochs before the method (0 = none)", 0, 500
        ),
        Param("burn_in_lr", "float", 0.1, "burn-in learning rate (step schedule)", 1e-6, 10.0),
        Param("eval_preset", "choice", "standard", "AutoAttack preset", choices=EVAL_PRESETS),
        Param(
            "eval_eps",
            "float_list",
            None,
            "AutoAttack eps list (empty = no evaluation)",
            0.0,
            1.0,
            max_items=MAX_EPS,
            above_min=True,
        ),
        Param(
            "eval_n", "int", 1000, "test images for AutoAttack (leaderboards use all)", 1, 100000
        ),
        Param(
            "extra_data_frac", "float", 0.0, "fraction of each batch from generated data", 0.0, 0.95
        ),
        Param(
            "precision",
            "choice",
            "fp32",
            "arithmetic of the training steps: fp32, or bf16 autocast (GPUs with bf16 tensor "
            "cores); validation and AutoAttack always run in fp32",
            choices=PRECISIONS,
        ),
    )
}


def with_new_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A run config stored earlier, with the default of every setting added since, the
    method's hyperparameters included: a run made before a setting existed ran with its
    default."""
    full = {**{n: p.default for n, p in TRAIN_PARAMS.items() if n not in stored}, **stored}
    hparams = stored.get("hparams")
    if (
        isinstance(hparams, dict)
        and stored.get("method") in METHODS
        and stored.get("dataset") in DATASETS
    ):
        full["hparams"] = {**method_defaults(stored["method"], stored["dataset"]), **hparams}
    return full


def leaderboard_grade(dataset: str, preset: str, n: int) -> bool:
    """Whether an AutoAttack result may stand beside published numbers: the standard
    preset on the dataset's whole published test set, nothing less."""
    card = DATASETS.get(dataset)
    full = card.test_size if card is not None else None
    return preset == "standard" and full is not None and n >= full


def resolve_default(param: Param, dataset: DatasetCard) -> Any:
    """A parameter's default on a dataset (eps-scaled values are scaled)."""
    if param.eps_scale is not None:
        return param.eps_scale * dataset.eps
    if param.name == "eval_eps":
        return list(dataset.eval_eps)
    if param.name == "val_size":
        return dataset.val_size
    return param.default


def method_defaults(method: str, dataset: str) -> dict[str, Any]:
    """Every hyperparameter of ``method`` with its default on ``dataset``."""
    card, data = METHODS[method], DATASETS[dataset]
    return {p.name: resolve_default(p, data) for p in card.params}


def train_defaults(dataset: str) -> dict[str, Any]:
    """Every run-level setting with its default on ``dataset``."""
    data = DATASETS[dataset]
    return {name: resolve_default(p, data) for name, p in TRAIN_PARAMS.items()}


def check_eps(values: Any, where: str) -> tuple[Any, str | None]:
    """Check AutoAttack radii as a job's ``eval_eps`` is checked (range, each once, at most
    ``MAX_EPS``), for every door a radius list comes in by."""
    return check_value(TRAIN_PARAMS["eval_eps"], values, where)


def check_value(param: Param, value: Any, where: str) -> tuple[Any, str | None]:
    """Coerce ``value`` to ``param``'s type; return (value, error or None)."""
    kind = param.type
    if kind == "bool":
        if isinstance(value, bool):
            return value, None
        return value, f"{where}: expected true or false, got {value!r}"
    if kind == "choice":
        if value in param.choices:
            return value, None
        return value, f"{where}: {value!r} is not one of {', '.join(param.choices)}"
    if kind == "float_list":
        if not isinstance(value, (list, tuple)):
            return value, f"{where}: expected a list of numbers, got {value!r}"
        if param.max_items is not None and len(value) > param.max_items:
            return value, f"{where}: at most {param.max_items} values are allowed, got {len(value)}"
        out, seen = [], {}
        for i, item in enumerate(value):
            item, err = _check_number(param, item, f"{where}[{i}]", float)
            if err:
                return value, err
            # values equal to 6 significant digits share one result (and one folder of
            # AutoAttack progress): one would be reported for the other
            key = f"{item:.6g}"
            if key in seen:
                twice = f"{item:g} is given twice (as {seen[key]:g})"
                return value, f"{where}[{i}]: {twice}; list each value once"
            seen[key] = item
            out.append(item)
        return out, None
    return _check_number(param, value, where, int if kind == "int" else float)


def _check_number(param: Param, value: Any, where: str, kind: type) -> tuple[Any, str | None]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value, f"{where}: expected a number, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return value, f"{where}: expected a finite number, got {value!r}"
    if kind is int and value != int(value):
        return value, f"{where}: expected an integer, got {value!r}"
    value = kind(value)
    if param.min is not None and param.above_min and value <= param.min:
        return value, f"{where}: {value} must be above {param.min}"
    if param.min is not None and value < param.min:
        return value, f"{where}: {value} is below the minimum {param.min}"
    if param.max is not None and value > param.max:
        return value, f"{where}: {value} is above the maximum {param.max}"
    return value, None


def validate_job(
    spec: dict[str, Any], data_dir: str | Path | None = None, *, stored: bool = False
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Check a job request and fill every default.

    Args:
        spec: ``dataset``, ``architecture``, ``method``, optional ``hparams``
            (method hyperparameters) and any of ``TRAIN_PARAMS`` at the top level.
        data_dir: if given, on-disk datasets must have their files there.
        stored: ``spec`` is the config of a job accepted earlier (a worker starting,
            resuming or evaluating it): the rules for new submissions only (sizes
            against the dataset, onecycle's epochs, generated data on disk) are not
            applied again, so an upgrade does not fail jobs it already took.

    Returns:
        ``(resolved, errors)``: the complete spec with defaults filled in, and a
        list of ``(field, message)``; the spec is valid when the list is empty.
    """
    errors: list[tuple[str, str]] = []
    known = {"dataset", "architecture", "method", "hparams", *TRAIN_PARAMS}
    for key in spec:
        if key not in known:
            errors.append((key, f"unknown field {key!r}"))
    names = {}
    for key, table in (("dataset", DATASETS), ("architecture", ARCHITECTURES), ("method", METHODS)):
        value = spec.get(key)
        if value is None:
            errors.append((key, f"required: one of {', '.join(table)}"))
        elif value not in table:
            errors.append((key, f"{value!r} is not one of {', '.join(table)}"))
        else:
            names[key] = value
    if len(names) < 3:
        return dict(spec), errors
    data = DATASETS[names["dataset"]]
    misfit = ARCHITECTURES[names["architecture"]].fits(data)
    if misfit:
        errors.append(("architecture", misfit))
    if data_dir is not None and data.missing_files(data_dir):
        missing = ", ".join(data.missing_files(data_dir))
        errors.append(
            (
                "dataset",
                f"dataset {data.name!r} is not installed: expected {missing} under {data_dir}",
            )
        )
    resolved: dict[str, Any] = dict(names)
    for name, param in TRAIN_PARAMS.items():
        value = spec.get(name)
        if value is None:
            resolved[name] = resolve_default(param, data)
            continue
        resolved[name], err = check_value(param, value, name)
        if err:
            errors.append((name, err))
    hparams = spec.get("hparams") or {}
    if not isinstance(hparams, dict):
        errors.append(("hparams", f"expected an object, got {hparams!r}"))
        hparams = {}
    resolved["hparams"] = _resolve_hparams(METHODS[names["method"]], data, hparams, errors)
    if not stored:
        _check_new_submission(resolved, data, data_dir, errors)
    return resolved, errors


def _check_new_submission(
    resolved: dict[str, Any],
    data: DatasetCard,
    data_dir: str | Path | None,
    errors: list[tuple[str, str]],
) -> None:
    """What a new job must satisfy beyond each field's range (see ``stored``)."""
    _check_sizes(resolved, data, errors)
    if (
        resolved["schedule"] == "onecycle"
        and isinstance(resolved["epochs"], int)
        and resolved["epochs"] < ONECYCLE_MIN_EPOCHS
        and not any(f in ("schedule", "epochs") for f, _ in errors)
    ):
        errors.append(
            (
                "schedule",
                f"onecycle is stepped once per epoch and needs at least {ONECYCLE_MIN_EPOCHS} "
                f"epochs (got {resolved['epochs']}): its last epoch runs at lr/250000; use "
                "cosine (stepped per batch) for short runs",
            )
        )
    if data_dir is not None and isinstance(resolved["extra_data_frac"], float):
        generated = Path(data_dir) / "generated" / f"{data.name}.npz"
        if resolved["extra_data_frac"] > 0 and not generated.is_file():
            errors.append(
                (
                    "extra_data_frac",
                    f"{resolved['extra_data_frac']} asks for generated data, but there is no "
                    f"{generated} (arrays 'image' uint8 NHWC and 'label')",
                )
            )


def _check_sizes(
    resolved: dict[str, Any], data: DatasetCard, errors: list[tuple[str, str]]
) -> None:
    """The validation part and one batch must fit in the dataset's training images."""
    val, batch = resolved["val_size"], resolved["batch_size"]
    if not data.n_train or any(f in ("val_size", "batch_size") for f, _ in errors):
        return  # each is told once: an out-of-range value first
    if val >= data.n_train:
        errors.append(
            (
                "val_size",
                f"{val} leaves no training images: {data.name} has {data.n_train}; "
                f"choose at most {data.n_train - 1}",
            )
        )
    elif batch > data.n_train - val:
        errors.append(
            (
                "batch_size",
                f"{batch} is more than the {data.n_train - val} training images left after "
                f"val_size {val} on {data.name}; an epoch needs one full batch",
            )
        )


def _resolve_hparams(
    card: MethodCard, data: DatasetCard, given: dict[str, Any], errors: list[tuple[str, str]]
) -> dict[str, Any]:
    out = {}
    for key in given:
        if card.param(key) is None:
            allowed = ", ".join(p.name for p in card.params)
            errors.append(
                (
                    f"hparams.{key}",
                    f"method {card.name!r} has no hyperparameter {key!r}; allowed: {allowed}",
                )
            )
    for param in card.params:
        value = given.get(param.name)
        if value is None:
            out[param.name] = resolve_default(param, data)
            continue
        out[param.name], err = check_value(param, value, f"hparams.{param.name}")
        if err:
            errors.append((f"hparams.{param.name}", err))
    return out


def public_catalog(data_dir: str | Path | None = None) -> dict[str, Any]:
    """Everything above as JSON, for the API's ``/catalog``."""
    return {
        "datasets": [d.public(data_dir) for d in DATASETS.values()],
        "architectures": [a.public() for a in ARCHITECTURES.values()],
        "methods": [m.public() for m in METHODS.values()],
        "train_params": [p.public() for p in TRAIN_PARAMS.values()],
    }
