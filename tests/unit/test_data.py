"""Datasets and the batch loader: splits, file checks and their messages, resume."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from dyart.data import BatchLoader, load_dataset, random_crop_flip, sources
from dyart.errors import ConfigError, DatasetCorruptError, DatasetMissingError


def test_mnist10k_is_the_real_test_set_split_stratified_8000_2000():
    data = load_dataset("mnist10k", val_size=1024)
    assert (len(data.train_x) + len(data.val_x), len(data.test_x)) == (8000, 2000)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == (1, 28, 28)
    test_share = torch.bincount(data.test_y, minlength=10).double() / 2000
    all_y = torch.cat([data.train_y, data.val_y, data.test_y])
    overall = torch.bincount(all_y, minlength=10).double() / 10000
    assert torch.allclose(test_share, overall, atol=0.002)  # stratified
    again = load_dataset("mnist10k", val_size=1024)
    assert torch.equal(again.test_x, data.test_x)  # fixed seed: the same test set every time


def test_validation_part_is_held_out_from_training():
    full = load_dataset("digits", val_size=0)
    data = load_dataset("digits", val_size=100)
    assert torch.equal(data.val_x, full.train_x[:100])
    assert torch.equal(data.train_x, full.train_x[100:])
    with pytest.raises(ConfigError, match=r"val_size: 5000 must be .* below the 1437"):
        load_dataset("digits", val_size=5000)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ConfigError, match=r"dataset: unknown dataset 'mnist'.*'mnist10k'"):
        load_dataset("mnist")


def test_missing_on_disk_dataset_names_folder_and_files(tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert str(tmp_path.resolve()) in message
    assert "cifar-10-batches-py/data_batch_1" in message and "test_batch" in message
    with pytest.raises(DatasetMissingError, match="no data directory given"):
        load_dataset("svhn")


def test_malformed_cifar_files_are_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DatasetMissingError, match=r"cifar-10-batches-py/batches.meta \(missing\)"):
        load_dataset("cifar10", tmp_path)
    (folder / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(DatasetCorruptError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert "do not read or fail torchvision's md5 check" in message
    assert "batches.meta" in message and "download=True" not in message


def test_bundled_mnist_with_a_wrong_checksum_is_refused(tmp_path):
    for name in sources.MNIST_FILES:
        shutil.copy(sources.BUNDLED / name, tmp_path / name)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10))
    with pytest.raises(DatasetCorruptError, match=r"t10k-labels-idx1-ubyte.gz has the wrong md5"):
        sources.mnist10k(None, root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetMissingError, match=r"expected t10k-images-idx3-ubyte.gz in"):
        sources.mnist10k(None, root=tmp_path)


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "images.gz"
    with gzip.open(path, "wb") as f:
        f.write((2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (3, 2, 2)))
        f.write(bytes(5))
    with pytest.raises(DatasetCorruptError, match=r"header says \[3, 2, 2\], file holds 5 bytes"):
        sources.read_idx(path, 2051)


def _write_generated(tmp_path, image, label):
    (tmp_path / "generated").mkdir(exist_ok=True)
    np.savez(tmp_path / "generated" / "digits.npz", image=image, label=label)


def test_generated_data_is_mixed_in_at_the_set_fraction(tmp_path):
    n = 50
    image = np.full((n, 8, 8, 1), 255, dtype=np.uint8)  # all-white: easy to tell apart
    _write_generated(tmp_path, image, np.arange(n) % 10)
    data = load_dataset("digits", tmp_path, val_size=0, extra=True)
    assert data.extra_x.shape == (n, 1, 8, 8) and data.extra_path.name == "digits.npz"
    loader = BatchLoader(
        data.train_x, data.train_y, 100, extra_x=data.extra_x, extra_y=data.extra_y,
        extra_frac=0.7, seed=1,
    )  # fmt: skip
    x, y = next(iter(loader))
    white = (x.flatten(1) == 1.0).all(1)
    assert x.shape[0] == 100 and int(white.sum()) >= 70 and white[-70:].all()
    assert len(loader) == -(-len(data.train_x) // 100)


def test_malformed_generated_data_names_the_file_and_the_layout(tmp_path):
    _write_generated(tmp_path, np.zeros((5, 8, 8), dtype=np.uint8), np.zeros(5))
    with pytest.raises(DatasetCorruptError, match=r"digits.npz: 'image' must be uint8 of shape"):
        load_dataset("digits", tmp_path, extra=True)
    _write_generated(tmp_path, np.zeros((0, 8, 8, 1), dtype=np.uint8), np.zeros(0, np.int64))
    with pytest.raises(DatasetCorruptError, match=r"with N at least 1, got uint8 \(0, 8, 8, 1\)"):
        load_dataset("digits", tmp_path, extra=True)
    image = np.zeros((5, 8, 8, 1), dtype=np.uint8)
    for label in (np.full(5, 10), np.full(5, 0.7), np.array(list("abcde"))):
        _write_generated(tmp_path, image, label)
        with pytest.raises(
            DatasetCorruptError, match=r"'label' must hold 5 integer class ids in \[0, 10\)"
        ):
            load_dataset("digits", tmp_path, extra=True)
    path = tmp_path / "generated" / "digits.npz"
    path.write_bytes(path.read_bytes()[:100])  # a copy cut short
    with pytest.raises(DatasetCorruptError, match=r"digits.npz: expected an .npz with arrays"):
        load_dataset("digits", tmp_path, extra=True)


def test_generated_data_is_read_only_when_a_run_mixes_it_in(tmp_path):
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "digits.npz").write_bytes(b"broken")
    data = load_dataset("digits", tmp_path, val_size=0)
    assert data.extra_x is None and len(data.train_x) == 1437


def test_asking_for_generated_data_without_any_is_a_config_error():
    data = load_dataset("digits", val_size=0)
    with pytest.raises(ConfigError, match=r"extra_data_frac: 0.5 asks for generated data"):
        BatchLoader(data.train_x, data.train_y, 64, extra_frac=0.5)


def test_loader_resumes_mid_epoch_with_identical_batches():
    data = load_dataset("synthetic", val_size=0)
    kwargs = {"augment": True, "flip": True, "pad": 1, "seed": 7}

    def fresh():
        loader = BatchLoader(data.train_x, data.train_y, 32, **kwargs)
        loader.set_epoch(3)
        return loader

    full = list(fresh())
    first = fresh()
    batches = iter(first)
    for _ in range(4):
        next(batches)
    resumed = BatchLoader(data.train_x, data.train_y, 32, **kwargs)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 4
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(full[4:], rest, strict=False)
    )
    other = fresh()
    other.set_epoch(4)
    assert not torch.equal(next(iter(other))[1], full[0][1])  # a new order each epoch


def test_every_image_once_per_epoch_without_augmentation():
    data = load_dataset("synthetic", val_size=0)
    loader = BatchLoader(data.train_x, data.train_y, 50, drop_last=False, seed=0)
    seen = torch.cat([x for x, _ in loader])
    assert seen.shape[0] == len(data.train_x)
    expected = data.train_x.float().div(255).flatten(1).sum(1).sort().values
    assert torch.allclose(seen.flatten(1).sum(1).sort().values, expected)


def test_random_crop_shifts_content_and_flip_mirrors():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    gen = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=2, flip=False, gen=gen)
    assert out.shape == x.shape and out.sum(dim=(1, 2, 3)).eq(4).all()  # the square stays inside
    assert len({tuple(o.nonzero()[0].tolist()) for o in out}) > 5  # at many offsets
    ramp = torch.arange(8.0).expand(64, 1, 8, 8)
    flipped = random_crop_flip(ramp, pad=0, flip=True, gen=gen)
    mirrored = (flipped[:, 0, 0, 0] == 7).sum()
    assert 10 < mirrored < 54 and torch.equal(flipped[flipped[:, 0, 0, 0] == 7][0], ramp[0].flip(2))


def _fake_tiny_imagenet(root, classes=10, per_class=6):
    from PIL import Image

    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (64, 64), (c * 20, i * 30, 7)).save(folder / f"{w}_{i}.JPEG")
        Image.new("RGB", (64, 64), (c * 20, 0, 0)).save(base / "val" / "images" / f"val_{c}.JPEG")
        lines.append(f"val_{c}.JPEG\t{w}\t0\t0\t64\t64")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base, wnids


def test_tiny_imagenet_validation_part_does_not_take_whole_classes(tmp_path):
    _fake_tiny_imagenet(tmp_path)  # files in class order, as the archive holds them
    data = load_dataset("tiny_imagenet", tmp_path, val_size=12)
    assert set(data.train_y.tolist()) == set(range(10))
    assert len(set(data.val_y.tolist())) >= 5  # not the first two classes' images
    assert sorted(data.test_y.tolist()) == list(range(10))
    again = load_dataset("tiny_imagenet", tmp_path, val_size=12)  # from the cache
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.val_y, data.val_y)


def test_tiny_imagenet_cache_follows_the_folders_and_survives_damage(tmp_path):
    base, wnids = _fake_tiny_imagenet(tmp_path)
    moved = tmp_path / "aside"
    (base / "train" / wnids[5]).rename(moved)
    expected = rf"1 of the 10 classes.*train/{wnids[5]}/images/"
    with pytest.raises(DatasetMissingError, match=expected):
        load_dataset("tiny_imagenet", tmp_path, val_size=0)
    moved.rename(base / "train" / wnids[5])
    first = load_dataset("tiny_imagenet", tmp_path, val_size=0)
    assert len(first.train_x) == 60
    from PIL import Image

    extra = base / "train" / wnids[5] / "images" / "late.JPEG"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(extra)  # a file added after the cache
    assert len(load_dataset("tiny_imagenet", tmp_path, val_size=0).train_x) == 61
    cache = base / sources.TINY_CACHE
    cache.write_bytes(cache.read_bytes()[:200])  # a cache cut short
    assert len(load_dataset("tiny_imagenet", tmp_path, val_size=0).train_x) == 61


@pytest.mark.parametrize("name", ["mnist10k", "digits"])
def test_the_test_set_has_the_size_the_catalog_grades_against(name):
    from dyart.catalog import DATASETS

    assert len(load_dataset(name, val_size=0).test_x) == DATASETS[name].test_size
