"""The model registry: every architecture on the image sizes it accepts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyart import catalog
from dyart.errors import ConfigError
from dyart.models import MODELS, build_model
from dyart.models.robustbench import to_robustbench_state_dict


def test_registry_matches_the_catalog():
    assert set(MODELS) == set(catalog.ARCHITECTURES)


def _card_shape(name: str) -> tuple[int, int]:
    """Channels and image size the catalog's parameter counts are taken at."""
    return (1, 28) if name in ("mlp", "small_cnn", "madry_cnn") else (3, 32)


@pytest.mark.parametrize("name", sorted(catalog.ARCHITECTURES))
def test_every_architecture_builds_with_the_catalog_parameter_count(name):
    card = catalog.ARCHITECTURES[name]
    channels, size = _card_shape(name)
    model = build_model(name, num_classes=10, in_channels=channels, image_size=size)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(card.params_millions, rel=0.05)
    if card.params_millions < 15:  # the big WRNs are shape-checked by their smaller kin
        assert model(torch.rand(2, channels, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "madry_cnn", "wide_resnet_16_4_silu"])
def test_small_grey_images_and_any_class_count(name):
    model = build_model(name, num_classes=7, in_channels=1, image_size=8)
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 7)


def test_resnets_take_64_pixel_images():
    model = build_model("preact_resnet18", num_classes=200, in_channels=3, image_size=64)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 200)


def test_group_norm_replaces_every_batch_norm():
    model = build_model(
        "preact_resnet18", num_classes=10, in_channels=3, image_size=32, norm_layer="gn"
    )
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds and nn.BatchNorm2d not in kinds
    model.train()
    single = model(torch.rand(1, 3, 32, 32))  # GN works on a batch of one in train mode
    assert torch.isfinite(single).all()


@pytest.mark.parametrize(  # the big WRNs are built from their smaller kin's blocks
    "name", sorted(n for n, c in catalog.ARCHITECTURES.items() if c.params_millions < 15)
)
def test_the_catalog_says_which_architectures_ignore_norm_layer(name):
    card = catalog.ARCHITECTURES[name]
    channels, size = _card_shape(name)
    model = build_model(name, num_classes=10, in_channels=channels, image_size=size)
    has_norm = any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in model.modules())
    assert has_norm != ("norm_layer and freeze_bn do not apply" in card.description)


def test_normalisation_is_inside_the_model_and_in_its_state_dict():
    torch.manual_seed(0)
    plain = build_model("mlp", num_classes=10, in_channels=1, image_size=8)
    normed = build_model("mlp", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.25])
    normed.net.load_state_dict(plain.net.state_dict())
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(normed(x), plain((x - 0.5) / 0.25), atol=1e-6)
    state = normed.state_dict()
    assert state["mean"].flatten().tolist() == [0.5] and state["std"].flatten().tolist() == [0.25]


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigError, match=r"architecture: unknown architecture 'vgg16'"):
        build_model("vgg16", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ConfigError, match=r"norm_layer: unknown norm layer 'ln'"):
        build_model("resnet18", num_classes=10, in_channels=3, image_size=32, norm_layer="ln")
    with pytest.raises(ConfigError, match=r"takes images of 16 to 64 pixels a side, got 8"):
        build_model("resnet18", num_classes=10, in_channels=1, image_size=8)
    with pytest.raises(ConfigError, match=r"mean: expected 3 values"):
        build_model("resnet18", num_classes=10, in_channels=3, image_size=32, mean=[0.5])


def test_robustbench_layout_of_the_silu_wide_resnet():
    model = build_model("wide_resnet_16_4_silu", num_classes=10, in_channels=3, image_size=32)
    keys = set(to_robustbench_state_dict(model))
    assert {"init_conv.weight", "logits.weight", "logits.bias", "batchnorm.running_mean"} <= keys
    assert (
        "layer.0.block.0.batchnorm_0.weight" in keys and "layer.1.block.0.shortcut.weight" in keys
    )
    assert "mean" not in keys and not any(k.startswith("net.") for k in keys)
    with pytest.raises(TypeError, match="only WideResNet-SiLU"):
        to_robustbench_state_dict(build_model("mlp", num_classes=10, in_channels=1, image_size=8))


@pytest.mark.parametrize("size", [17, 30])
def test_silu_wide_resnet_runs_at_sizes_not_divisible_by_four(size):
    """An odd side halves to one pixel more on the shortcut than on a (0, 1)-padded
    main path; the block pads (1, 1) there, and RobustBench's (0, 1) on even sides."""
    model = build_model("wide_resnet_16_4_silu", num_classes=10, in_channels=3, image_size=size)
    assert model.eval()(torch.rand(2, 3, size, size)).shape == (2, 10)
    block = model.net.layer[1].block[0]
    assert block._pad(torch.zeros(1, 1, 32, 32)) == (0, 1, 0, 1)  # RobustBench's, unchanged
    assert block._pad(torch.zeros(1, 1, 17, 16)) == (0, 1, 1, 1)
