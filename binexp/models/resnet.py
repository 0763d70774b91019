"""ResNets with a CIFAR stem (3x3 conv, no max-pool) for 32x32 inputs.

Blocks are pre-activation (BN -> act -> conv), so each BN feeds an activation and each binary conv reads a
binarized input; the stem conv is the network's first layer and the classifier its last.

BMXNet's Table 3 variants (depth = convs in the blocks + stem + classifier):
- ResNet-18, -34 thin/wide, -68 wide: basic blocks (two 3x3 convs), `blocks` (2,2,2,2), (3,4,6,3), (3,4,23,3).
  ResNet-68 is ResNet-101's stage layout with basic instead of bottleneck blocks (2 * 33 + 2 = 68); the
  paper does not list its blocks, but this layout at its widths (64 stem; 128, 256, 512, 1024), counted as
  BMXNet's ImageNet ResNet symbol builds it (7x7 stem, 1x1 shortcuts without BN, 1000 classes), has exactly the
  166 283 182 parameters of its Table 4.
- ResNet-26 bottleneck: `bottleneck=true`, (2,2,2,2) blocks of 1x1 -> 3x3 -> 1x1 (3 * 8 + 2 = 26) with
  ResNet-50's widths: `channels` are the stage outputs (256, 512, 1024, 2048), the inner convs a quarter of
  that (64 ... 512). The paper gives neither; this is the standard (He et al. / MXNet) reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from binexp.binarize.base import Method
from binexp.models.base import ArchitectureConfig, scaled


@dataclass
class ResNetConfig(ArchitectureConfig):
    _target_: str = "binexp.models.resnet.ResNet"
    name: str = "resnet18"
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    stem_channels: int = 64
    bottleneck: bool = False  # 1x1 -> 3x3 -> 1x1 blocks whose inner convs have a quarter of `channels`


def _projection(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    # float projection of the block input: the shortcut carries the information binarization drops
    return nn.Sequential(
        nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class BasicBlock(nn.Module):
    def __init__(self, method: Method, name: str, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = method.bn(f"{name}.conv1", in_ch)
        self.act1 = method.act(f"{name}.conv1", in_ch)
        self.conv1 = method.conv(f"{name}.conv1", in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = method.bn(f"{name}.conv2", out_ch)
        self.act2 = method.act(f"{name}.conv2", out_ch)
        self.conv2 = method.conv(f"{name}.conv2", out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut = _projection(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        return out + identity


class Bottleneck(nn.Module):
    """1x1 (reduce to out_ch / 4) -> 3x3 (strided) -> 1x1 (expand to out_ch), each pre-activation."""

    expansion = 4

    def __init__(self, method: Method, name: str, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        mid = max(1, out_ch // self.expansion)
        self.bn1 = method.bn(f"{name}.conv1", in_ch)
        self.act1 = method.act(f"{name}.conv1", in_ch)
        self.conv1 = method.conv(f"{name}.conv1", in_ch, mid, 1, bias=False)
        self.bn2 = method.bn(f"{name}.conv2", mid)
        self.act2 = method.act(f"{name}.conv2", mid)
        self.conv2 = method.conv(f"{name}.conv2", mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn3 = method.bn(f"{name}.conv3", mid)
        self.act3 = method.act(f"{name}.conv3", mid)
        self.conv3 = method.conv(f"{name}.conv3", mid, out_ch, 1, bias=False)
        self.shortcut = _projection(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        out = self.conv3(self.act3(self.bn3(out)))
        return out + identity


class ResNet(nn.Module):
    def __init__(
        self, method: Method, image_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
        blocks: tuple[int, ...] = (2, 2, 2, 2), channels: tuple[int, ...] = (64, 128, 256, 512), stem_channels: int = 64,
        bottleneck: bool = False,
    ):
        super().__init__()
        if len(blocks) != len(channels):
            raise ValueError(f"architecture.blocks {list(blocks)} and architecture.channels {list(channels)} differ in length")
        block = Bottleneck if bottleneck else BasicBlock
        stem = scaled(stem_channels, width)
        self.stem = method.conv("stem", image_shape[0], stem, 3, padding=1, bias=False, first=True)
        stages, prev = [], stem
        for s, (n, c) in enumerate(zip(blocks, channels), start=1):
            c = scaled(c, width)
            for b in range(n):
                stride = 2 if (b == 0 and s > 1) else 1
                stages.append(block(method, f"layer{s}.{b}", prev, c, stride))
                prev = c
        self.stages = nn.Sequential(*stages)
        self.head_bn = method.bn("head", prev)
        self.head_act = nn.ReLU()  # the pooled features feed a float classifier
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = method.linear("fc", prev, num_classes, last=True)

    def forward(self, x):
        x = self.stages(self.stem(x))
        x = self.pool(self.head_act(self.head_bn(x))).flatten(1)
        return self.fc(x)
