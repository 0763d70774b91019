"""ResNets with a CIFAR stem (3x3 conv, no max-pool) for 32x32 inputs.

Blocks are pre-activation (BN -> act -> conv), so each BN feeds an activation and each binary conv reads a
binarized input; the stem conv is the network's first layer and the classifier its last.
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


class BasicBlock(nn.Module):
    def __init__(self, method: Method, name: str, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = method.bn(f"{name}.conv1", in_ch)
        self.act1 = method.act(f"{name}.conv1", in_ch)
        self.conv1 = method.conv(f"{name}.conv1", in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = method.bn(f"{name}.conv2", out_ch)
        self.act2 = method.act(f"{name}.conv2", out_ch)
        self.conv2 = method.conv(f"{name}.conv2", out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_ch != out_ch:
            # float projection of the block input: the shortcut carries the information binarization drops
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                nn.Conv2d(in_ch, out_ch, 1, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        return out + identity


class ResNet(nn.Module):
    def __init__(
        self, method: Method, image_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
        blocks: tuple[int, ...] = (2, 2, 2, 2), channels: tuple[int, ...] = (64, 128, 256, 512), stem_channels: int = 64,
    ):
        super().__init__()
        if len(blocks) != len(channels):
            raise ValueError(f"architecture.blocks {list(blocks)} and architecture.channels {list(channels)} differ in length")
        stem = scaled(stem_channels, width)
        self.stem = method.conv("stem", image_shape[0], stem, 3, padding=1, bias=False, first=True)
        stages, prev = [], stem
        for s, (n, c) in enumerate(zip(blocks, channels), start=1):
            c = scaled(c, width)
            for b in range(n):
                stride = 2 if (b == 0 and s > 1) else 1
                stages.append(BasicBlock(method, f"layer{s}.{b}", prev, c, stride))
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
