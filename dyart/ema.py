"""The exponential moving average ("weight-averaged") model of the recipe.

ALGORITHM.md §6: after each optimizer step ``ema ← d·ema + (1−d)·θ`` with
``d = min(decay, (1+t)/(10+t))``, ``t`` counted from the end of a warm-up of
2.5% of all steps during which the EMA copies θ. Buffers (BatchNorm running
statistics) are copied from the live model at each epoch's end — copied, not
shared, so the two models never alias each other's tensors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def ema_decay(step: int, *, decay: float, warmup_steps: int) -> float:
    """The mixing weight ``d`` after optimizer step number ``step`` (0-based).

    Returns 0.0 during the warm-up (the EMA copies the live weights), then
    ``min(decay, (1+t)/(10+t))`` with ``t = step - warmup_steps``.
    """
    if step < warmup_steps:
        return 0.0
    t = step - warmup_steps
    return min(decay, (1.0 + t) / (10.0 + t))


class EMA:
    """An EMA copy of a model, updated after each optimizer step.

    Args:
        model: the live model (copied, never aliased).
        decay: the upper bound of ``d`` (0.995 in the recipe).
        total_steps: optimizer steps the stage will take; 2.5% of them are
            the warm-up.
    """

    def __init__(self, model: nn.Module, *, decay: float, total_steps: int):
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup_steps = int(0.025 * total_steps)
        self.steps = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Mix the live parameters in (no host sync: ``d`` is a Python float)."""
        d = ema_decay(self.steps, decay=self.decay, warmup_steps=self.warmup_steps)
        ema_params = list(self.module.parameters())
        live_params = [p.detach() for p in model.parameters()]
        if d == 0.0:
            torch._foreach_copy_(ema_params, live_params)
        else:
            torch._foreach_lerp_(ema_params, live_params, 1.0 - d)
        self.steps += 1

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        """Copy the live model's buffers (BN running statistics) into the EMA model."""
        for ema_buf, live_buf in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buf.copy_(live_buf)

    @torch.no_grad()
    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Set the EMA model's parameters and buffers from a state dict."""
        self.module.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
