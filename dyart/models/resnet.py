"""ResNet-18 and PreAct ResNet-18 with a 3x3 stem, as used on CIFAR-sized images."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dyart.models.layers import norm2d

_WIDTHS = (64, 128, 256, 512)


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.bn1, self.bn2 = norm2d(norm, cin), norm2d(norm, cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm2d(norm, cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm2d(norm, cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _stages(block: type[nn.Module], norm: str) -> nn.Sequential:
    layers, cin = [], 64
    for i, width in enumerate(_WIDTHS):
        layers += [block(cin, width, 1 if i == 0 else 2, norm), block(width, width, 1, norm)]
        cin = width
    return nn.Sequential(*layers)


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (He et al., 2016), global average pooling at any image size."""

    def __init__(self, channels: int, classes: int, norm: str = "bn"):
        super().__init__()
        self.stem = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        self.blocks = _stages(PreActBlock, norm)
        self.bn = norm2d(norm, 512)
        self.head = nn.Linear(512, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ResNet18(nn.Module):
    """ResNet-18 (He et al., 2016) with a 3x3 stride-1 stem and no max-pool."""

    def __init__(self, channels: int, classes: int, norm: str = "bn"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), norm2d(norm, 64))
        self.blocks = _stages(BasicBlock, norm)
        self.head = nn.Linear(512, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))
