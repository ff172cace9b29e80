"""WideResNets: the ReLU one of Zagoruyko & Komodakis (as in TRADES/MART) and the
SiLU one of Gowal et al. / Rebuffi et al., whose module names follow RobustBench's
layout so a trained model converts to it by renaming nothing (see robustbench.py)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dyart.models.layers import norm2d


def _blocks_per_group(depth: int) -> int:
    if (depth - 4) % 6:
        raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
    return (depth - 4) // 6


class _ReLUBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.bn1 = norm2d(norm, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-width with ReLU."""

    def __init__(self, depth: int, width: int, channels: int, classes: int, norm: str = "bn"):
        super().__init__()
        n = _blocks_per_group(depth)
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        groups = []
        for g in range(3):
            for i in range(n):
                cin = widths[g] if i == 0 else widths[g + 1]
                groups.append(
                    _ReLUBlock(cin, widths[g + 1], (1 if g == 0 else 2) if i == 0 else 1, norm)
                )
        self.blocks = nn.Sequential(*groups)
        self.bn = norm2d(norm, widths[3])
        self.fc = nn.Linear(widths[3], classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _Block(nn.Module):
    """Pre-activation block with SiLU and the explicit padding RobustBench's uses."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.batchnorm_0 = norm2d(norm, cin, momentum=0.01)
        self.relu_0 = nn.SiLU()
        self.conv_0 = nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1 = norm2d(norm, cout, momentum=0.01)
        self.relu_1 = nn.SiLU()
        self.conv_1 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.has_shortcut = cin != cout
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if self.has_shortcut else None
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(F.pad(act, self._pad(act))))))
        skip = self.shortcut(act) if self.shortcut is not None else x
        return skip + out

    def _pad(self, x: Tensor) -> tuple[int, int, int, int]:
        """TensorFlow's ``SAME`` padding, as RobustBench's block does by hand: (1, 1) at
        stride 1; at stride 2, (0, 1) on an even side (RobustBench's fixed padding, so
        32x32 models stay bit-identical) and (1, 1) on an odd one, where (0, 1) would
        give the main path one pixel fewer than the 1x1 shortcut."""
        if self.stride == 1:
            return (1, 1, 1, 1)
        height, width = x.shape[-2:]  # Python ints: no host sync
        return (width % 2, 1, height % 2, 1)


class _BlockGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.block = nn.Sequential(
            *[
                _Block(cin if i == 0 else cout, cout, stride if i == 0 else 1, norm)
                for i in range(n)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class WideResNetSiLU(nn.Module):
    """WRN-depth-width with SiLU (Gowal et al., 2020; Rebuffi et al., 2021)."""

    def __init__(self, depth: int, width: int, channels: int, classes: int, norm: str = "bn"):
        super().__init__()
        n = _blocks_per_group(depth)
        self.depth, self.width = depth, width  # RobustBench's constructor takes them
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.layer = nn.Sequential(
            *[_BlockGroup(n, widths[g], widths[g + 1], 1 if g == 0 else 2, norm) for g in range(3)]
        )
        self.batchnorm = norm2d(norm, widths[3], momentum=0.01)
        self.relu = nn.SiLU()
        self.logits = nn.Linear(widths[3], classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.batchnorm(self.layer(self.init_conv(x))))
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))
