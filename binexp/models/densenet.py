"""DenseNet without bottlenecks, as BMXNet trains it binary (its Figure 1d and Section 3.1).

A CIFAR stem (3x3 conv with 2k filters, no pooling), four dense units of `blocks` blocks each, a transition
(BN -> act -> 1x1 conv -> 2x2 average pool) between units, and BN -> ReLU -> global pool -> classifier. A block is
BN -> act -> 3x3 conv producing k (the growth rate) new channels, concatenated to its input. Following the paper's
naming, blocks b per unit give "DenseNet-(8b + 5)": 13 (k=256, b=1), 21 (k=128, b=2), 37 (k=64, b=4),
69 (k=32, b=8). The name counts two convolutions per block, as DenseNet-BC's bottleneck blocks have; the paper's
block without bottleneck (its Figure 1d) has one, so the network has 4b + 5 weight layers (DenseNet-21: 13).

Transitions keep every channel by default (`reduction` 1.0), unlike DenseNet-BC's 0.5. The paper does not say;
the authors' released Gluon DenseNet (BMXNet-v2 examples) builds DenseNet-13/21/37/69 with reduction 1, b blocks
in each of four units and no bottleneck, and the paper's own sizes agree with 1.0 far better than with 0.5:
- Table 2, CIFAR-10 DenseNet-21, 1.9MB binary / 51MB float: ours 1.27 / 33.8 MB at 1.0, 0.54 / 13.5 MB at 0.5;
- Table 4, ImageNet DenseNet-21, 11 498 086 parameters: 9.73M at 1.0, 3.90M at 0.5 (counted for an ImageNet
  build: 7x7 stem of 2k filters, 1000 classes);
- Figure 3, 31% smaller from DenseNet-13 to -69: 31% at 1.0, 17% at 0.5 (our CIFAR builds' binary bytes).
None of these is matched exactly, so the paper's network differs in something it does not report.

`blocks` may instead list one count per unit. DenseNet-45 (BMXNet's Table 4) is 20 blocks, 4b with b = 5, which
BMXNet's released densenet symbol lays out as (2, 4, 8, 6) rather than 5 per unit; the paper names neither
layout nor k. We take (2, 4, 8, 6) at DenseNet-21's k = 128. Table 4 lists DenseNet-45 with 5.44x DenseNet-21's
parameters; ImageNet builds at a shared k (128-224) give 4.35-4.49 for (2, 4, 8, 6) and 4.60-4.75 for
(5, 5, 5, 5) with reduction 1.0, and 5.26-5.42 / 5.00-5.17 with 0.5, so this one ratio alone favours 0.5.
`architecture.blocks=5` gives the uniform reading, `architecture.reduction=0.5` DenseNet-BC's transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from binexp.binarize.base import Method
from binexp.errors import ConfigError
from binexp.models.base import ArchitectureConfig, scaled

UNITS = 4


def unit_blocks(blocks: Any) -> list[int]:
    """`architecture.blocks` as one block count per dense unit."""
    counts = [blocks] * UNITS if isinstance(blocks, int) else list(blocks) if isinstance(blocks, (list, tuple)) else None
    if counts is None or len(counts) != UNITS or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts):
        raise ConfigError(
            f"architecture.blocks={blocks!r}: allowed are a positive int (blocks per unit) "
            f"or a list of {UNITS} positive ints (one per dense unit)"
        )
    return counts


@dataclass
class DenseNetConfig(ArchitectureConfig):
    _target_: str = "binexp.models.densenet.DenseNet"
    name: str = "densenet21"
    growth: int = 128
    blocks: Any = 2  # blocks per dense unit (b; named 8b + 5, 4b + 5 weight layers), or a list of four counts, one per unit
    reduction: float = 1.0  # a transition keeps this share of its input channels (0 < reduction <= 1)


class DenseBlock(nn.Module):
    def __init__(self, method: Method, name: str, in_ch: int, growth: int):
        super().__init__()
        self.bn = method.bn(name, in_ch)
        self.act = method.act(name, in_ch)
        self.conv = method.conv(name, in_ch, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.act(self.bn(x)))], dim=1)


class Transition(nn.Sequential):
    def __init__(self, method: Method, name: str, in_ch: int, out_ch: int):
        super().__init__(
            method.bn(name, in_ch), method.act(name, in_ch), method.conv(name, in_ch, out_ch, 1, bias=False), nn.AvgPool2d(2)
        )


class DenseNet(nn.Module):
    def __init__(self, method: Method, image_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
                 growth: int = 128, blocks: int | list[int] = 2, reduction: float = 1.0):
        super().__init__()
        k = scaled(growth, width)
        channels = 2 * k
        layers: list[nn.Module] = [method.conv("stem", image_shape[0], channels, 3, padding=1, bias=False, first=True)]
        counts = unit_blocks(blocks)
        if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or not 0 < reduction <= 1:
            raise ConfigError(f"architecture.reduction={reduction!r}: allowed is a number in (0, 1], the share of its "
                              "input channels a transition keeps (1.0 keeps all, DenseNet-BC's 0.5 halves)")
        for unit, n in enumerate(counts, start=1):
            for b in range(1, n + 1):
                layers.append(DenseBlock(method, f"unit{unit}.block{b}", channels, k))
                channels += k
            if unit < UNITS:
                out = max(1, int(channels * reduction))
                layers.append(Transition(method, f"transition{unit}", channels, out))
                channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(method.bn("head", channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = method.linear("fc", channels, num_classes, last=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.features(x)))
