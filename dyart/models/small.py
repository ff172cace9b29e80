"""Small models for 8x8 to 32x32 images: an MLP and a 2-conv CNN."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """Two hidden layers of 256 ReLU units."""

    def __init__(self, channels: int, size: int, classes: int, hidden: int = 256):
        super().__init__(
            nn.Flatten(),
            nn.Linear(channels * size * size, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )  # fmt: skip


class SmallCNN(nn.Sequential):
    """2 conv (5x5, 16 and 32 channels, each with 2x2 max-pool) + 2 fc (200, classes)."""

    def __init__(self, channels: int, size: int, classes: int):
        flat = 32 * (size // 4) ** 2
        super().__init__(
            nn.Conv2d(channels, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(flat, 200), nn.ReLU(), nn.Linear(200, classes),
        )  # fmt: skip
