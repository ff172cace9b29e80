"""The optimizer and the learning-rate schedules of the recipe (ALGORITHM.md §6).

* SGD with Nesterov momentum; weight decay on weights only, never on
  normalisation layers or biases, selected by module type (not by name: the
  published Tiny-ImageNet code matched names and so decayed its norm layers).
* Schedules: ``onecycle`` (PyTorch's one-cycle policy stepped once per epoch,
  as the paper's scripts do), ``cosine`` (linear warm-up then cosine, stepped
  per batch), ``step`` (×0.1 at 50% and 75% of the planned epochs) and
  ``constant``. :class:`Schedule` hides which of them steps per batch and
  which per epoch, so the trainer calls both hooks unconditionally.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from dyart.errors import ConfigError

NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)
log = logging.getLogger("dyart")
SCHEDULES = ("onecycle", "cosine", "step", "constant")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into a decayed group and an undecayed one.

    Parameters of normalisation layers (any BatchNorm, GroupNorm, LayerNorm,
    InstanceNorm) and every bias get no weight decay; everything else gets
    ``weight_decay``. A parameter shared by several modules is listed once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_LAYERS)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if is_norm or name == "bias" or name.endswith("_bias"):
                no_decay.append(param)
            else:
                decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD with Nesterov momentum over :func:`param_groups` (ALGORITHM.md §6)."""
    return torch.optim.SGD(
        param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=momentum > 0
    )


class Schedule:
    """A learning-rate schedule with one hook per batch and one per epoch.

    Args:
        optimizer: the optimizer whose groups' ``lr`` (and, for ``onecycle``,
            ``momentum``) it drives.
        name: one of :data:`SCHEDULES`.
        epochs: epochs the schedule is planned for.
        steps_per_epoch: batches per epoch (used by ``cosine``).
        lr: the peak learning rate.
        warmup_frac: fraction of the schedule spent warming up (``onecycle``'s
            ``pct_start``; ``cosine``'s linear warm-up).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        *,
        epochs: int,
        steps_per_epoch: int,
        lr: float,
        warmup_frac: float = 0.025,
    ):
        if name not in SCHEDULES:
            raise ConfigError("schedule", f"{name!r} is not one of {', '.join(SCHEDULES)}")
        self.name = name
        self.per_step = name == "cosine"
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.scheduler = _make_scheduler(optimizer, name, epochs, steps_per_epoch, lr, warmup_frac)

    def step_batch(self) -> None:
        """Call after every optimizer step."""
        if self.per_step:
            self.scheduler.step()

    def step_epoch(self) -> None:
        """Call at the end of every epoch."""
        if not self.per_step:
            self.scheduler.step()

    def last_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def _make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    lr: float,
    warmup_frac: float,
) -> lr_scheduler.LRScheduler:
    if name == "onecycle":
        if epochs < 3:
            log.warning(
                "onecycle is stepped once per epoch: with %d epoch(s) the last one runs at "
                "lr/25/1e4; use the cosine schedule for short runs",
                epochs,
            )
        # Stepped once per epoch: lr/25 -> lr over warmup_frac of the epochs, cosine down
        # to lr/25/1e4, momentum cycled 0.95 -> 0.85 -> 0.95 (the configured one is unused).
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=epochs,
            pct_start=_onecycle_pct(warmup_frac, epochs),
            div_factor=25.0,
            final_div_factor=1e4,
            cycle_momentum=True,
            base_momentum=0.85,
            max_momentum=0.95,
        )
    if name == "cosine":
        return lr_scheduler.LambdaLR(optimizer, CosineWarmup(epochs * steps_per_epoch, warmup_frac))
    if name == "step":
        milestones = [math.ceil(0.5 * epochs), math.ceil(0.75 * epochs)]
        return lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return lr_scheduler.LambdaLR(optimizer, ConstantFactor())


def _onecycle_pct(warmup_frac: float, epochs: int) -> float:
    """``pct_start``, nudged off the one value where PyTorch divides by zero.

    OneCycleLR's warm-up ends at step ``pct_start * total - 1``; when that is
    exactly 0 (e.g. 2.5% of 40 epochs) its interpolation divides by zero. A
    nudge of 1e-9 keeps the schedule it would have in the limit: epoch 0 at
    lr/25, epoch 1 at the peak.
    """
    if abs(warmup_frac * epochs - 1.0) < 1e-9:
        return warmup_frac * (1.0 + 1e-9)
    return warmup_frac


class CosineWarmup:
    """Factor of the peak lr at step t: linear warm-up, then half a cosine to 0."""

    def __init__(self, total_steps: int, warmup_frac: float):
        self.total = max(1, total_steps)
        self.warmup = int(warmup_frac * self.total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class ConstantFactor:
    """Factor 1 at every step (a class, so the scheduler's state stays plain data)."""

    def __call__(self, step: int) -> float:
        return 1.0
