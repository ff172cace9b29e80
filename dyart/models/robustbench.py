"""Conversion of a WideResNet-SiLU to RobustBench's ``DMWideResNet`` state dict.

RobustBench keeps the input mean/std as plain attributes, not in the state dict,
and names its modules as ``WideResNetSiLU`` does, so the conversion is: take the
inner network's tensors, drop nothing else.
"""

from __future__ import annotations

from torch import Tensor, nn

from dyart.models.wide_resnet import WideResNetSiLU


def to_robustbench_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The tensors of ``model`` (a ``Classifier`` around a ``WideResNetSiLU``) keyed
    as RobustBench's ``DMWideResNet`` expects them."""
    net = getattr(model, "net", model)
    if not isinstance(net, WideResNetSiLU):
        raise TypeError(
            f"only WideResNet-SiLU models have a RobustBench layout, got {type(net).__name__}"
        )
    return dict(net.state_dict())
