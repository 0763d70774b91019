"""The BinaryNet / SBN "VGG-16-like" CIFAR network:
128C3-128C3-MP2-256C3-256C3-MP2-512C3-512C3-MP2-1024FC-1024FC-10, BN after every hidden layer.

Each hidden layer is conv -> [pool] -> BN -> act, so BN always feeds the activation (BinaryBN folds them).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from binexp.binarize.base import Method
from binexp.models.base import ArchitectureConfig, scaled


@dataclass
class VGGSmallConfig(ArchitectureConfig):
    _target_: str = "binexp.models.vgg_small.VGGSmall"
    name: str = "vgg_small"


class VGGSmall(nn.Module):
    def __init__(self, method: Method, image_shape: tuple[int, int, int], num_classes: int, width: float = 1.0):
        super().__init__()
        c_in, h, w = image_shape
        plan = [(128, False), (128, True), (256, False), (256, True), (512, False), (512, True)]
        layers: list[nn.Module] = []
        prev = c_in
        for i, (c, pool) in enumerate(plan, start=1):
            c = scaled(c, width)
            layers.append(method.conv(f"conv{i}", prev, c, 3, padding=1, bias=False, first=(i == 1)))
            if pool:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            layers += [method.bn(f"conv{i}", c), method.act(f"conv{i}", c)]
            prev = c
        self.features = nn.Sequential(*layers)
        fc = scaled(1024, width)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            method.linear("fc1", prev * h * w, fc, bias=False),
            method.bn("fc1", fc, dims=1),
            method.act("fc1", fc),
            method.linear("fc2", fc, fc, bias=False),
            method.bn("fc2", fc, dims=1),
            method.act("fc2", fc, last=True),
            method.linear("fc3", fc, num_classes, last=True),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
