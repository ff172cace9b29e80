"""Model registry: a name from ``dyart.catalog.ARCHITECTURES`` to a constructor.

Every model takes images in [0, 1]; the dataset's mean/std normalisation is a
layer inside the model, so attacks, AutoAttack and users all feed raw pixels.

    model = build_model("preact_resnet18", num_classes=10, in_channels=3, image_size=32,
                        norm_layer="gn", mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from dyart import catalog
from dyart.errors import ConfigError
from dyart.models.layers import Classifier
from dyart.models.resnet import PreActResNet18, ResNet18
from dyart.models.small import MLP, SmallCNN
from dyart.models.wide_resnet import WideResNet, WideResNetSiLU

__all__ = ["MODELS", "Classifier", "build_model"]

Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {
    "mlp": lambda c, s, k, norm: MLP(c, s, k),
    "small_cnn": lambda c, s, k, norm: SmallCNN(c, s, k),
    "madry_cnn": lambda c, s, k, norm: SmallCNN(c, s, k, (32, 64), 1024),
    "preact_resnet18": lambda c, s, k, norm: PreActResNet18(c, k, norm),
    "resnet18": lambda c, s, k, norm: ResNet18(c, k, norm),
    "wide_resnet_28_10": lambda c, s, k, norm: WideResNet(28, 10, c, k, norm),
    "wide_resnet_34_10": lambda c, s, k, norm: WideResNet(34, 10, c, k, norm),
    "wide_resnet_28_10_silu": lambda c, s, k, norm: WideResNetSiLU(28, 10, c, k, norm),
    "wide_resnet_34_10_silu": lambda c, s, k, norm: WideResNetSiLU(34, 10, c, k, norm),
    "wide_resnet_16_4_silu": lambda c, s, k, norm: WideResNetSiLU(16, 4, c, k, norm),
}


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    norm_layer: str = "bn",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """Build ``name`` for images of ``in_channels`` x ``image_size`` x ``image_size``.

    Args:
        norm_layer: ``"bn"`` (BatchNorm) or ``"gn"`` (GroupNorm) for the models
            that have normalisation layers; the MLP and the small CNN have none.
        mean, std: per-channel input normalisation applied inside the model;
            omitted means none.

    Raises:
        ConfigError: an unknown name or norm layer, or images the model cannot take.
    """
    if name not in MODELS:
        raise ConfigError(
            "architecture", f"unknown architecture {name!r}; expected one of {sorted(MODELS)}"
        )
    if norm_layer not in catalog.NORMS:
        raise ConfigError(
            "norm_layer", f"unknown norm layer {norm_layer!r}; expected one of {catalog.NORMS}"
        )
    card = catalog.ARCHITECTURES[name]
    if not card.min_image_size <= image_size <= card.max_image_size:
        raise ConfigError(
            "architecture",
            f"architecture {name!r} takes images of {card.min_image_size} to "
            f"{card.max_image_size} pixels a side, got {image_size}",
        )
    if in_channels < 1 or num_classes < 2:
        raise ConfigError(
            "architecture",
            f"need in_channels >= 1 and num_classes >= 2, got {in_channels} and {num_classes}",
        )
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != in_channels:
            raise ConfigError(
                label, f"expected {in_channels} values (one per channel), got {len(values)}"
            )
    net = MODELS[name](in_channels, image_size, num_classes, norm_layer)
    return Classifier(net, mean, std)
