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
    """2 conv (5x5, each with 2x2 max-pool) + 2 fc: by default 16 and 32 channels and 200
    hidden units; 32, 64 and 1024 make the MNIST CNN of Madry et al. (ICLR 2018)."""

    def __init__(
        self, channels: int, size: int, classes: int, widths: tuple[int, int] = (16, 32),
        hidden: int = 200,
    ):  # fmt: skip
        first, second = widths
        flat = second * (size // 4) ** 2
        super().__init__(
            nn.Conv2d(channels, first, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(first, second, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, classes),
        )  # fmt: skip
