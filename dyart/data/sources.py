"""Readers of each dataset's files into uint8 NCHW arrays and int64 labels.

Each reader returns ``(train_x, train_y, test_x, test_y)`` as numpy arrays and
raises :class:`DatasetMissingError` naming the folder and files it expected, or
:class:`DatasetCorruptError` naming the file that does not parse.
"""

from __future__ import annotations

import gzip
import hashlib
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from dyart import catalog
from dyart.errors import DatasetCorruptError, DatasetMissingError
from dyart.files import atomic_write

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

BUNDLED = Path(__file__).parent / "files"
MNIST_FILES = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _stratified_split(y: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with each class in the test part in proportion, fixed by seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    return np.asarray(train), np.asarray(test)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An MNIST idx file (gzip) as an array; checks the magic number and the size."""
    try:
        raw = gzip.open(path).read()
    except (OSError, EOFError) as e:
        raise DatasetCorruptError(f"{path}: not a readable gzip file ({e})") from e
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise DatasetCorruptError(f"{path}: not an idx file with magic number {magic}")
    dims = magic & 0xFF
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise DatasetCorruptError(f"{path}: header says {shape}, file holds {data.size} bytes")
    return data.reshape(shape)


def mnist10k(data_dir: Path | None, root: Path = BUNDLED) -> Arrays:
    """The real MNIST test set, split stratified with seed 0 into 8,000 / 2,000."""
    missing = [name for name in MNIST_FILES if not (root / name).is_file()]
    if missing:
        raise DatasetMissingError(
            f"mnist10k: expected {', '.join(missing)} in {root} (the library's bundled files)"
        )
    for name, digest in MNIST_FILES.items():
        if _md5(root / name) != digest:
            raise DatasetCorruptError(f"mnist10k: {root / name} has the wrong md5 (want {digest})")
    x = read_idx(root / "t10k-images-idx3-ubyte.gz", 2051)[:, None]
    y = read_idx(root / "t10k-labels-idx1-ubyte.gz", 2049).astype(np.int64)
    train, test = _stratified_split(y, 2000, seed=0)
    return x[train], y[train], x[test], y[test]


def digits(data_dir: Path | None) -> Arrays:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255), split 80/20, seed 0."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    train, test = _stratified_split(y, 360, seed=0)
    return x[train], y[train], x[test], y[test]


def synthetic(data_dir: Path | None, n: int = 512, seed: int = 1234) -> Arrays:
    """4 classes of 8x8 noisy prototypes, 384 train / 128 test; learnable. For tests."""
    card = catalog.DATASETS["synthetic"]
    rng = np.random.default_rng(seed)
    size, k = card.image_size, card.num_classes
    protos = rng.uniform(0.2, 0.8, size=(k, 1, size, size))
    y = np.arange(n) % k
    rng.shuffle(y)
    x = protos[y] + rng.normal(0.0, 0.15, size=(n, 1, size, size))
    x = np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
    cut = n * 3 // 4
    return x[:cut], y[:cut].astype(np.int64), x[cut:], y[cut:].astype(np.int64)


def _require(name: str, data_dir: Path | None) -> Path:
    card = catalog.DATASETS[name]
    if data_dir is None:
        raise DatasetMissingError(
            f"{name}: no data directory given; expected {', '.join(card.files)} under one "
            "(dyart --data-dir, or DYART_DATA_DIR for the service)"
        )
    missing = card.missing_files(data_dir)
    if missing:
        raise DatasetMissingError(
            f"{name}: expected under {Path(data_dir).resolve()}: {', '.join(missing)} "
            f"(missing); the full layout is {', '.join(card.files)}"
        )
    return Path(data_dir)


def _torchvision(name: str, data_dir: Path | None) -> Arrays:
    from torchvision import datasets

    root = _require(name, data_dir)
    parts = []
    try:
        for train in (True, False):
            if name == "svhn":
                ds = datasets.SVHN(str(root / "svhn"), split="train" if train else "test")
                parts += [np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.labels)]
            else:
                cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
                ds = cls(str(root), train=train, download=False)
                parts += [
                    np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)),
                    np.asarray(ds.targets),
                ]
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        files = ", ".join(catalog.DATASETS[name].files)
        reason = str(e).replace(" You can use download=True to download it", "")
        raise DatasetCorruptError(
            f"{name}: the files under {root} do not read or fail torchvision's md5 check "
            f"(expected the original {files}): {reason}"
        ) from e
    tx, ty, vx, vy = parts
    return tx, ty.astype(np.int64), vx, vy.astype(np.int64)


TINY_CACHE = "uint8-cache-v2.npz"


def tiny_imagenet(data_dir: Path | None) -> Arrays:
    """Tiny-ImageNet-200: train/<wnid>/images/*.JPEG and the val set as the test set.

    The training images are put in one fixed shuffled order (seed 0), so the
    validation part held out from their front holds every class. They are decoded
    once into ``tiny-imagenet-200/uint8-cache-v2.npz`` beside the images, with a
    fingerprint of the file lists: a cache that no longer matches the folders, or
    that does not read, is built again.
    """
    root = _require("tiny_imagenet", data_dir) / "tiny-imagenet-200"
    wnids = (root / "wnids.txt").read_text().split()
    label = {w: i for i, w in enumerate(wnids)}
    train = []
    empty = []
    for w in wnids:
        paths = sorted((root / "train" / w / "images").glob("*"))
        if not paths:
            empty.append(w)
        train += [(p, label[w]) for p in paths]
    if empty:
        shown = ", ".join(f"train/{w}/images/" for w in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise DatasetMissingError(
            f"tiny_imagenet: no training images for {len(empty)} of the {len(wnids)} classes "
            f"in wnids.txt: expected images under {root}/{shown}{more}"
        )
    val = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in label:
            val.append((root / "val" / "images" / fields[0], label[fields[1]]))
    listing = "\n".join(f"{p.relative_to(root)}\t{c}" for p, c in train + val)
    fingerprint = hashlib.sha256(listing.encode()).hexdigest()
    cache = root / TINY_CACHE
    cached = _read_tiny_cache(cache, fingerprint)
    if cached is not None:
        return cached
    from PIL import Image

    def read(paths: list[Path]) -> np.ndarray:
        out = np.empty((len(paths), 3, 64, 64), dtype=np.uint8)
        for i, p in enumerate(paths):
            try:
                with Image.open(p) as im:
                    out[i] = np.asarray(im.convert("RGB").resize((64, 64))).transpose(2, 0, 1)
            except OSError as e:
                raise DatasetCorruptError(
                    f"tiny_imagenet: {p} is not a readable image ({e})"
                ) from e
        return out

    order = np.random.default_rng(0).permutation(len(train))
    train = [train[i] for i in order]
    arrays = (
        read([p for p, _ in train]), np.array([c for _, c in train], dtype=np.int64),
        read([p for p, _ in val]), np.array([c for _, c in val], dtype=np.int64),
    )  # fmt: skip

    def write(f: IO[bytes]) -> None:
        np.savez(f, fingerprint=np.array(fingerprint), train_x=arrays[0], train_y=arrays[1],
                 test_x=arrays[2], test_y=arrays[3])  # fmt: skip

    try:
        atomic_write(cache, write)
    except OSError as e:  # a read-only data directory: decode again next time
        warnings.warn(f"tiny_imagenet: could not write the cache {cache} ({e})", stacklevel=2)
    return arrays


def _read_tiny_cache(cache: Path, fingerprint: str) -> Arrays | None:
    """The cached arrays, or None when there is no cache, it is stale or it does not read."""
    if not cache.is_file():
        return None
    try:
        with cache.open("rb") as fh, np.load(fh, allow_pickle=False) as f:
            if str(f["fingerprint"]) != fingerprint:
                return None
            return f["train_x"], f["train_y"], f["test_x"], f["test_y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None


READERS: dict[str, Callable[[Path | None], Arrays]] = {
    "mnist10k": mnist10k,
    "digits": digits,
    "synthetic": synthetic,
    "cifar10": lambda d: _torchvision("cifar10", d),
    "cifar100": lambda d: _torchvision("cifar100", d),
    "svhn": lambda d: _torchvision("svhn", d),
    "tiny_imagenet": tiny_imagenet,
}


def read_extra(name: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray, Path] | None:
    """Generated data for ``name`` from ``<data_dir>/generated/<name>.npz``, if present.

    Returns ``(images NCHW, labels, path)`` or None when there is no such file.
    """
    if data_dir is None:
        return None
    path = Path(data_dir) / "generated" / f"{name}.npz"
    if not path.is_file():
        return None
    card = catalog.DATASETS[name]
    try:
        with path.open("rb") as fh, np.load(fh, allow_pickle=False) as f:
            image, label = f["image"], f["label"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetCorruptError(
            f"{path}: expected an .npz with arrays 'image' (uint8 NHWC) and 'label' ({e})"
        ) from e
    want = (card.image_size, card.image_size, card.channels)
    if image.dtype != np.uint8 or image.ndim != 4 or image.shape[1:] != want or not len(image):
        raise DatasetCorruptError(
            f"{path}: 'image' must be uint8 of shape (N, {want[0]}, {want[1]}, {want[2]}) "
            f"with N at least 1, got {image.dtype} {image.shape}"
        )
    if (
        label.shape != (len(image),)
        or not np.issubdtype(label.dtype, np.integer)
        or label.min() < 0
        or label.max() >= card.num_classes
    ):
        raise DatasetCorruptError(
            f"{path}: 'label' must hold {len(image)} integer class ids in "
            f"[0, {card.num_classes}), got {label.dtype} {label.shape}"
        )
    return np.ascontiguousarray(image.transpose(0, 3, 1, 2)), label.astype(np.int64), path
