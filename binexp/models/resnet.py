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

Downsampling shortcuts (`shortcut`): `float` (the default) average-pools the block's input and projects it with a
float 1x1 conv and BN, so the shortcut carries what binarization drops; `binary` is BMXNet v2's: the method's own
1x1 conv, strided, on the block's activated input (binary under a binarizing method), which the paper's Table 3
sizes count as binary. Where a stage keeps the shape (stage 1 of ResNet-18/34-thin: 64 -> 64, stride 1) the shortcut is
the identity; BMXNet v1's symbol projects there too (4 096 more weights in ResNet-18), which its Table 4 counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn

from binexp.binarize.base import Method
from binexp.errors import ConfigError, parse_choice
from binexp.models.base import ArchitectureConfig, scaled


class Shortcut(str, Enum):
    float = "float"
    binary = "binary"


@dataclass
class ResNetConfig(ArchitectureConfig):
    _target_: str = "binexp.models.resnet.ResNet"
    name: str = "resnet18"
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    stem_channels: int = 64
    bottleneck: bool = False  # 1x1 -> 3x3 -> 1x1 blocks whose inner convs have a quarter of `channels`
    shortcut: Shortcut = Shortcut.float  # downsampling shortcuts: float projection, or the method's 1x1 conv


class _Block(nn.Module):
    """The pre-activation block's shortcut: none where the shape stays; else a projection of the block's input
    (`float`) or the method's strided 1x1 conv of its activated input (`binary`)."""

    def _make_shortcut(self, method: Method, name: str, in_ch: int, out_ch: int, stride: int, kind: str) -> None:
        self.shortcut_reads_act = False
        if stride == 1 and in_ch == out_ch:
            self.shortcut = None
        elif kind == Shortcut.binary.value:
            self.shortcut = method.conv(f"{name}.shortcut", in_ch, out_ch, 1, stride=stride, bias=False)
            self.shortcut_reads_act = True
        else:
            self.shortcut = nn.Sequential(
                # ceil: an odd map (MNIST's 28 -> 14 -> 7) halves to the strided conv's ceil(7 / 2) = 4
                nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity(),
                nn.Conv2d(in_ch, out_ch, 1, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def _identity(self, x: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return x
        return self.shortcut(activated if self.shortcut_reads_act else x)


class BasicBlock(_Block):
    def __init__(self, method: Method, name: str, in_ch: int, out_ch: int, stride: int, shortcut: str = "float"):
        super().__init__()
        self.bn1 = method.bn(f"{name}.conv1", in_ch)
        self.act1 = method.act(f"{name}.conv1", in_ch)
        self.conv1 = method.conv(f"{name}.conv1", in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = method.bn(f"{name}.conv2", out_ch)
        self.act2 = method.act(f"{name}.conv2", out_ch)
        self.conv2 = method.conv(f"{name}.conv2", out_ch, out_ch, 3, padding=1, bias=False)
        self._make_shortcut(method, name, in_ch, out_ch, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(activated))))
        return out + self._identity(x, activated)


class Bottleneck(_Block):
    """1x1 (reduce to out_ch / 4) -> 3x3 (strided) -> 1x1 (expand to out_ch), each pre-activation."""

    expansion = 4

    def __init__(self, method: Method, name: str, in_ch: int, out_ch: int, stride: int, shortcut: str = "float"):
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
        self._make_shortcut(method, name, in_ch, out_ch, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(activated))))
        out = self.conv3(self.act3(self.bn3(out)))
        return out + self._identity(x, activated)


class ResNet(nn.Module):
    def __init__(
        self, method: Method, image_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
        blocks: tuple[int, ...] = (2, 2, 2, 2), channels: tuple[int, ...] = (64, 128, 256, 512), stem_channels: int = 64,
        bottleneck: bool = False, shortcut: str = "float",
    ):
        super().__init__()
        if len(blocks) != len(channels):
            raise ConfigError(f"architecture.blocks={list(blocks)} and architecture.channels={list(channels)} differ in length: "
                              f"one block count per stage of channels")
        block = Bottleneck if bottleneck else BasicBlock
        kind = parse_choice(Shortcut, shortcut, "architecture.shortcut")  # a subclass kept outside binexp has no schema
        stem = scaled(stem_channels, width)
        self.stem = method.conv("stem", image_shape[0], stem, 3, padding=1, bias=False, first=True)
        stages, prev = [], stem
        for s, (n, c) in enumerate(zip(blocks, channels), start=1):
            c = scaled(c, width)
            for b in range(n):
                stride = 2 if (b == 0 and s > 1) else 1
                stages.append(block(method, f"layer{s}.{b}", prev, c, stride, kind.value))
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
