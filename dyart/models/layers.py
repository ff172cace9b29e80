"""Shared layers: input normalisation, the norm-layer factory, the wrapper."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def norm2d(kind: str, channels: int, momentum: float = 0.1) -> nn.Module:
    """BatchNorm, or GroupNorm with 32 groups (fewer when ``channels`` is small)."""
    if kind == "gn":
        groups = 32
        while channels % groups:
            groups //= 2
        return nn.GroupNorm(groups, channels)
    return nn.BatchNorm2d(channels, momentum=momentum)


class Classifier(nn.Module):
    """``net(normalize(x))``: takes images in [0, 1], returns logits.

    The mean and std are buffers, so they travel with the state dict and a
    checkpoint is self-contained.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.net = net
        self.normalized = mean is not None or std is not None
        channels = len(mean if mean is not None else std or [0.0])
        m = torch.tensor(list(mean) if mean is not None else [0.0] * channels)
        s = torch.tensor(list(std) if std is not None else [1.0] * channels)
        if (s <= 0).any():
            raise ValueError(f"std must be positive, got {s.tolist()}")
        self.register_buffer("mean", m.view(1, -1, 1, 1))
        self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.normalized:
            x = (x - self.mean) / self.std
        return self.net(x)
