"""Datasets as uint8 tensors on the training device, and the batch loader.

    data = load_dataset("mnist10k", val_size=1024, seed=0, device="cuda")
    data.train_x  # uint8 (N, 1, 28, 28) on the GPU; data.test_x, data.val_x likewise

Bundled: ``mnist10k``, ``digits``, ``synthetic``. From ``data_dir``: ``cifar10``
(``cifar-10-batches-py/``), ``cifar100`` (``cifar-100-python/``), ``svhn``
(``svhn/*_32x32.mat``), ``tiny_imagenet`` (``tiny-imagenet-200/``), and generated
data in ``generated/<dataset>.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dyart import catalog
from dyart.data.loader import BatchLoader, random_crop_flip
from dyart.data.sources import READERS, read_extra
from dyart.errors import ConfigError, DatasetCorruptError

__all__ = ["BatchLoader", "DatasetSplits", "load_dataset", "random_crop_flip"]


@dataclass
class DatasetSplits:
    """Train (minus validation), validation, test and generated images of a dataset.

    Images are uint8 (N, C, H, W), labels int64 (N,); ``extra_*`` are None
    without generated data.
    """

    card: catalog.DatasetCard
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    extra_x: Tensor | None = None
    extra_y: Tensor | None = None
    extra_path: Path | None = None


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_size: int = 1024,
    seed: int = 0,
    device: str | torch.device | None = None,
    extra: bool = False,
) -> DatasetSplits:
    """Load ``name``; hold out the first ``val_size`` training images for validation.

    Args:
        data_dir: where on-disk datasets and ``generated/`` live.
        val_size: validation images taken from the training set (0 for none).
        seed: kept for the signature of the run; the splits are fixed per dataset.
        device: where the tensors go (the training device); CPU when omitted.
        extra: also read ``generated/<name>.npz`` (only runs that mix it in ask,
            so a large or broken file costs nothing to the others).

    Raises:
        ConfigError: an unknown dataset or a validation part too large.
        DatasetMissingError / DatasetCorruptError: files not there, or not readable.
    """
    if name not in READERS:
        raise ConfigError("dataset", f"unknown dataset {name!r}; expected one of {sorted(READERS)}")
    card = catalog.DATASETS[name]
    root = Path(data_dir) if data_dir is not None else None
    train_x, train_y, test_x, test_y = READERS[name](root)
    want = (card.channels, card.image_size, card.image_size)
    for part, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.dtype != np.uint8 or x.shape[1:] != want or len(x) != len(y):
            raise DatasetCorruptError(
                f"{name}: {part} images should be uint8 {want} with one label each, "
                f"got {x.dtype} {x.shape[1:]} and {len(x)} images / {len(y)} labels"
            )
        if len(y) and (y.min() < 0 or y.max() >= card.num_classes):
            raise DatasetCorruptError(f"{name}: {part} labels outside [0, {card.num_classes})")
    if not 0 <= val_size < len(train_x):
        raise ConfigError(
            "val_size",
            f"{val_size} must be at least 0 and below the {len(train_x)} training images",
        )
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    splits = DatasetSplits(
        card,
        t(train_x[val_size:]), t(train_y[val_size:]),
        t(train_x[:val_size]), t(train_y[:val_size]),
        t(test_x), t(test_y),
    )  # fmt: skip
    generated = read_extra(name, root) if extra else None
    if generated is not None:
        splits.extra_x, splits.extra_y, splits.extra_path = (
            t(generated[0]), t(generated[1]), generated[2]
        )  # fmt: skip
    return splits
