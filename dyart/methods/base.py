"""The contract every training method keeps, its registry, and the batch checks.

A method is called as ``loss, metrics = method(model, x, y)``: ``x`` float images in
[0,1] (NCHW, on the model's device), ``y`` int64 labels, the model in train mode.
``loss`` is the scalar to backpropagate; ``metrics`` maps snake_case names to 0-dim
tensors, left on the device so that a step never waits for the host.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dyart import catalog
from dyart.errors import ConfigError, InputError

METHOD_CLASSES: dict[str, type[Method]] = {}

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class Method:
    """Base of all training methods: holds hyperparameters, checks the batch."""

    name: ClassVar[str] = ""

    def __init__(self, **hparams: Any):
        self.hparams = dict(hparams)
        # fraction of the stage's optimizer steps done, counting the current one; the
        # trainer sets it before each step (1.0 when a method is called on its own)
        self.progress = 1.0

    def attack_radius(self) -> tuple[float, float]:
        """The attack's (eps, step_size) at the current progress.

        With ``eps_ramp`` r > 0 both rise linearly from 0 and reach their set values
        after the first fraction r of training (an eps warm-up: PGD training at a large
        eps from the first step can collapse to a constant prediction).
        """
        h = self.hparams
        ramp = h.get("eps_ramp", 0.0)
        scale = 1.0 if ramp <= 0 else min(1.0, self.progress / ramp)
        return h["eps"] * scale, h["step_size"] * scale

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if cls.name:
            METHOD_CLASSES[cls.name] = cls

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """One training step's loss and metrics; see the module docstring."""
        check_batch(model, x, y)
        return self.step(model, x, y)

    def step(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def get_method(name: str, dataset: str = "cifar10", **hparams: Any) -> Method:
    """Build a method by its catalog name, filling missing hyperparameters.

    Args:
        name: a key of ``dyart.catalog.METHODS`` (``clean``, ``dyart``, ``pgd_at``...).
        dataset: whose defaults fill the missing eps-scaled values.
        **hparams: hyperparameters by their catalog names; ``None`` means default.

    Raises:
        ConfigError: naming an unknown method, dataset or hyperparameter, or a value
            of the wrong type or out of range.
    """
    if name not in METHOD_CLASSES or name not in catalog.METHODS:
        raise ConfigError("method", f"{name!r} is not one of {', '.join(METHOD_CLASSES)}")
    if dataset not in catalog.DATASETS:
        raise ConfigError("dataset", f"{dataset!r} is not one of {', '.join(catalog.DATASETS)}")
    card = catalog.METHODS[name]
    resolved = catalog.method_defaults(name, dataset)
    for key, value in hparams.items():
        param = card.param(key)
        if param is None:
            allowed = ", ".join(p.name for p in card.params)
            raise ConfigError(
                f"hparams.{key}",
                f"method {name!r} has no hyperparameter {key!r}; allowed: {allowed}",
            )
        if value is None:
            continue
        resolved[key], err = catalog.check_value(param, value, f"hparams.{key}")
        if err:
            raise ConfigError(f"hparams.{key}", err)
    return METHOD_CLASSES[name](**resolved)


def check_batch(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """Shape, dtype and model-mode checks that need no device sync.

    Raises:
        InputError: saying what was expected.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise InputError("images and labels must be torch tensors")
    if not x.is_floating_point():
        raise InputError(f"images must be a float tensor with values in [0,1], got {x.dtype}")
    if x.ndim != 4:
        raise InputError(f"images must be NCHW (4 dimensions), got shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(
            f"labels must have shape [{x.shape[0]}] to match images {tuple(x.shape)}, "
            f"got {tuple(y.shape)}"
        )
    if y.dtype != torch.int64:
        raise InputError(f"labels must be int64 class indices, got {y.dtype}")
    if not model.training:
        raise InputError("the model is in eval mode: call model.train() before a training step")


def check_ranges(x: Tensor, y: Tensor, num_classes: int) -> None:
    """Images in [0,1] and labels in [0, num_classes): one host sync for both.

    Raises:
        InputError: naming the offending range.
    """
    stats = torch.stack([x.min().float(), x.max().float(), y.min().float(), y.max().float()])
    lo, hi, ylo, yhi = stats.tolist()  # the one host sync of the checks
    if not (lo >= 0.0 and hi <= 1.0):
        raise InputError(f"images must have values in [0,1], got min {lo:g} and max {hi:g}")
    if not (ylo >= 0 and yhi < num_classes):
        raise InputError(
            f"labels must be in [0, {num_classes}) for a model with {num_classes} outputs, "
            f"got min {ylo:g} and max {yhi:g}"
        )


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of rows whose argmax is the label, as a 0-dim tensor (no sync)."""
    return (logits.detach().argmax(dim=1) == y).float().mean()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block (BN statistics frozen), then restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def modes_agree(model: nn.Module) -> bool:
    """Whether train and eval mode compute the same function for ``model``.

    False when any module keeps running statistics (BatchNorm, InstanceNorm with
    ``track_running_stats``) or is a dropout layer.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            return False
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            return False
    return True


@contextmanager
def frozen_batch_norm(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """BatchNorm layers in eval mode (running statistics used, not updated)."""
    norms = [m for m in model.modules() if isinstance(m, _BATCH_NORMS) and m.training]
    if enabled:
        for m in norms:
            m.training = False
    try:
        yield
    finally:
        if enabled:
            for m in norms:
                m.training = True
