"""Batches from uint8 image tensors that live on the training device.

Shuffling, random-crop-with-padding and horizontal flips happen on whole
batches on the device; nothing runs per image in Python. The order and the
augmentation of every batch are a function of ``(seed, epoch, batch index)``
alone, so a run resumed from ``state_dict()`` sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dyart.errors import ConfigError


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def random_crop_flip(x: Tensor, pad: int, flip: bool, gen: torch.Generator) -> Tensor:
    """Zero-pad by ``pad``, crop back at a random offset, flip half horizontally."""
    n, _, h, w = x.shape
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        padded = padded.gather(2, rows.expand(n, x.shape[1], h, w + 2 * pad))
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        x = padded.gather(3, cols.expand(n, x.shape[1], h, w))
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(3), x)
    return x


class BatchLoader:
    """Yields ``(x, y)``: float images in [0, 1] and int64 labels, on ``x``'s device.

    Args:
        x, y: uint8 images (N, C, H, W) and labels (N,).
        batch_size: images per batch, generated ones included.
        shuffle: a new order every epoch (``set_epoch``).
        augment, flip, pad: random crop with ``pad`` pixels of zero padding, and
            horizontal flips when ``flip``.
        drop_last: drop the last incomplete batch.
        seed: the seed of every order and augmentation.
        extra_x, extra_y, extra_frac: generated data; each batch then takes
            ``int(extra_frac * batch_size)`` generated images drawn uniformly with
            replacement and the rest from the real data.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: bool = False,
        flip: bool = False,
        pad: int = 4,
        drop_last: bool = True,
        seed: int = 0,
        extra_x: Tensor | None = None,
        extra_y: Tensor | None = None,
        extra_frac: float = 0.0,
    ):
        if batch_size < 1:
            raise ConfigError("batch_size", f"expected at least 1, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if extra_frac > 0 and (extra_x is None or len(extra_x) == 0):
            raise ConfigError(
                "extra_data_frac",
                f"{extra_frac} asks for generated data, but the dataset has none; put "
                "<data_dir>/generated/<dataset>.npz (keys image: uint8 NHWC, label) in place",
            )
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.flip, self.pad = augment, flip, pad
        self.seed = seed
        self.extra_x, self.extra_y = extra_x, extra_y
        self.n_extra = int(extra_frac * batch_size) if extra_frac > 0 else 0
        self.n_real = batch_size - self.n_extra
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        n = len(self.x)
        if self.n_extra:  # an epoch is as many batches as the real data fills at batch_size
            return -(-n // self.batch_size)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"loader state of seed {state['seed']}, this loader has {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]

    def _order(self) -> Tensor:
        n = len(self.x)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=_generator(self.seed, self.epoch, 0))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order, n, device = self._order(), len(self.x), self.x.device
        for i in range(self.position, len(self)):
            if self.n_extra:
                idx = order[(torch.arange(self.n_real) + i * self.n_real) % n]
            else:
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            idx = idx.to(device)
            x, y = self.x[idx], self.y[idx]
            gen = _generator(self.seed, self.epoch, i + 1)
            if self.n_extra:
                assert self.extra_x is not None and self.extra_y is not None
                pick = torch.randint(0, len(self.extra_x), (self.n_extra,), generator=gen)
                pick = pick.to(self.extra_x.device)
                x = torch.cat([x, self.extra_x[pick].to(device)])
                y = torch.cat([y, self.extra_y[pick].to(device)])
            x = x.float().div_(255)
            if self.augment:
                x = random_crop_flip(x, self.pad, self.flip, gen)
            self.position = i + 1  # counted as handed out: a checkpoint after it resumes at i+1
            yield x, y
