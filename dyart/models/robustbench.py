"""RobustBench export of a WideResNet-SiLU: the state dict its ``DMWideResNet`` loads,
the constructor arguments that rebuild the model, and a model entry in the layout of
RobustBench's ``model_info/<dataset>/<threat model>/<name>.json``.

``WideResNetSiLU`` names its modules as ``DMWideResNet`` does, so the state dict is
the inner network's tensors, renamed nothing. RobustBench keeps the input mean/std
as constructor arguments, not in the state dict, and defaults them to CIFAR-10's:
the entry's ``model_args`` carries them (with depth, width, classes and activation)
so that ``DMWideResNet(**model_args)`` gives this model's logits.

What RobustBench's class can load decides which runs are exported (:func:`fits`):
it has BatchNorm only (a GroupNorm model has no running statistics to give it) and
pools with a fixed ``avg_pool2d(out, 8)``, which is a global pool on 32x32 images
only; its CIFAR leaderboards are CIFAR-10 and CIFAR-100. It ranks L-inf (8/255,
CIFAR-10 and CIFAR-100) and L2 (0.5, CIFAR-10 only) models; the entry records the
run's own norm and eps.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dyart import catalog
from dyart.files import atomic_write, file_sha256
from dyart.models.wide_resnet import WideResNetSiLU

DATASETS = ("cifar10", "cifar100")
IMAGE_SIZE = 32  # DMWideResNet's avg_pool2d(out, 8) is global only at 32x32
_THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
_PENDING = (
    "clean_acc and autoattack_acc are filled once AutoAttack's standard preset has run "
    "on the full test set."
)


def to_robustbench_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The tensors of ``model`` (a ``Classifier`` around a ``WideResNetSiLU``) keyed
    as RobustBench's ``DMWideResNet`` expects them."""
    return dict(_silu_net(model).state_dict())


def model_args(model: nn.Module) -> dict[str, Any]:
    """``DMWideResNet``'s constructor arguments that rebuild ``model``, mean/std included
    (``activation_fn`` names RobustBench's ``Swish``, its SiLU)."""
    net = _silu_net(model)
    mean = getattr(model, "mean", torch.zeros(net.init_conv.in_channels))
    std = getattr(model, "std", torch.ones(net.init_conv.in_channels))
    return {
        "num_classes": net.logits.out_features,
        "depth": net.depth,
        "width": net.width,
        "activation_fn": "Swish",
        "mean": _floats(mean),
        "std": _floats(std),
        "num_input_channels": net.init_conv.in_channels,
    }


def fits(config: Any) -> str | None:
    """None if ``config``'s model can go to RobustBench as it is, else why not."""
    card, name = config.dataset_card, config.architecture
    if not (name.startswith("wide_resnet") and name.endswith("_silu")):
        return f"{config.architecture} is not a WideResNet-SiLU"
    if config.norm_layer != "bn":
        return f"norm_layer {config.norm_layer!r}: RobustBench's WideResNet has BatchNorm only"
    if config.dataset not in DATASETS:
        return f"dataset {config.dataset!r}: RobustBench's leaderboards here are {DATASETS}"
    if card.image_size != IMAGE_SIZE:
        return f"{card.image_size}x{card.image_size} images: RobustBench's WideResNet takes 32x32"
    return None


def entry(config: Any, model: nn.Module, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model entry, in RobustBench's key order, plus ``threat_model``, ``method``
    and ``model_args``; ``result`` is the AutoAttack result, when there is one."""
    method = catalog.METHODS[config.method]
    return {
        "link": method.link or "https://github.com/RobustBench/robustbench/",
        "name": method.paper_title or method.title,
        "authors": method.authors,
        "additional_data": False,  # generated images do not count (RobustBench's rule)
        "number_forward_passes": 1,
        "dataset": config.dataset,
        "venue": method.venue or "N/A",
        "architecture": _architecture(model),
        "eps": _eps_text(config.dataset_card.eps, _norm(config)),
        **_result_fields(config, result),
        "threat_model": _THREAT_MODELS[_norm(config)],
        "method": config.method,
        "model_args": model_args(model),
    }


def with_results(old: dict[str, Any], config: Any, result: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the numbers of an AutoAttack ``result`` — only a leaderboard-grade one
    at the run's norm and eps; otherwise the numbers stay null and the footnote says why."""
    return {**old, **_result_fields(config, result)}


def save(path: str | Path, model: nn.Module, info: dict[str, Any]) -> Path:
    """Write the state dict RobustBench loads to ``path`` (a plain tensor dict, loadable
    with ``weights_only=True``) and ``info`` (+ file name, sha256) to ``<stem>.entry.json``."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in to_robustbench_state_dict(model).items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    write_entry(path.with_suffix(".entry.json"), {**info, "file": path.name})
    return path


def write_entry(path: str | Path, info: dict[str, Any]) -> Path:
    """Write an entry JSON atomically, with the sha256 of the state dict it names."""
    path = Path(path)
    info = {**info, "sha256": file_sha256(path.parent / info["file"])}
    data = (json.dumps(info, indent=2, allow_nan=False) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


def _result_fields(config: Any, result: dict[str, Any] | None) -> dict[str, Any]:
    why, row = _PENDING, None
    if result is not None:
        eps = config.dataset_card.eps
        row = next((r for r in result["results"] if abs(r["eps"] - eps) < 1e-9), None)
        why = _not_leaderboard(result, _norm(config), eps, row)
    robust = None if why is not None else f"{100 * row['robust_acc']:.2f}"
    notes = [why] if why is not None else []
    if config.extra_data_frac > 0:
        share = f"{config.extra_data_frac:.0%}"
        notes.insert(0, f"It uses additional synthetic images in training ({share} of each batch).")
    # what the model drew before the attacks (dyart.evaluate.check_model): numbers that may
    # overstate its robustness are marked unreliable, as the leaderboard marks them
    warned = list((result or {}).get("warnings") or [])
    if warned:
        notes.append(f"Before the attacks the evaluation warned: {'; '.join(warned)}.")
    return {
        "clean_acc": None if why is not None else f"{100 * row['clean_acc']:.2f}",
        "reported": robust,
        "autoattack_acc": robust,
        "footnote": " ".join(notes),
        "unreliable": bool(warned),
    }


def _not_leaderboard(
    result: dict[str, Any], norm: str, eps: float, row: dict[str, Any] | None
) -> str | None:
    """Why ``result`` cannot fill the entry's numbers; None when it can."""
    empty = "clean_acc and autoattack_acc are left empty:"
    if not result.get("leaderboard_grade"):
        return (
            f"{empty} AutoAttack ran with the {result['preset']} preset on {result['n']} test "
            "images; the leaderboard takes the standard preset on the full test set."
        )
    if result.get("norm", "linf") != norm:
        ran, trained = _THREAT_MODELS[result.get("norm", "linf")], _THREAT_MODELS[norm]
        return f"{empty} AutoAttack ran in {ran}; the model was trained for {trained}."
    if row is None:
        return f"{empty} AutoAttack did not run at the threat model's eps {_eps_text(eps, norm)}."
    return None


def _silu_net(model: nn.Module) -> WideResNetSiLU:
    net = getattr(model, "net", model)
    if not isinstance(net, WideResNetSiLU):
        raise TypeError(
            f"only WideResNet-SiLU models have a RobustBench layout, got {type(net).__name__}"
        )
    return net


def _architecture(model: nn.Module) -> str:
    net = _silu_net(model)
    return f"WideResNet-{net.depth}-{net.width}"


def _norm(config: Any) -> str:
    return str(config.hparams.get("norm", "linf"))


def _eps_text(eps: float, norm: str) -> str:
    """RobustBench's way: ``8/255`` for L-inf radii on that grid, a decimal otherwise."""
    steps = eps * 255
    if norm == "linf" and abs(steps - round(steps)) < 1e-6:
        return f"{round(steps)}/255"
    return f"{eps:g}"


def _floats(values: Tensor) -> list[float]:
    # float32's shortest round-trip text (0.4914, not 0.49140000343): the same
    # float32 tensor once RobustBench builds it from the list
    return [float(str(v)) for v in values.detach().flatten().cpu().numpy()]
