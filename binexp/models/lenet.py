"""Caffe's MNIST LeNet: conv(20,5) - pool - conv(50,5) - pool - fc(500) - act - fc(10).

Caffe's net has no nonlinearity after its convolutions. Binary networks need one (and BN) before each
binary layer, as in BMXNet's binary LeNet: `conv_act` and `batch_norm` add them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from binexp.binarize.base import Method
from binexp.errors import ConfigError
from binexp.models.base import ArchitectureConfig, scaled


@dataclass
class LeNetConfig(ArchitectureConfig):
    _target_: str = "binexp.models.lenet.LeNet"
    name: str = "lenet"
    channels: list[int] = field(default_factory=lambda: [20, 50])
    hidden: int = 500
    conv_act: bool = False
    batch_norm: bool = False


class LeNet(nn.Module):
    def __init__(
        self, method: Method, image_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
        channels: tuple[int, int] = (20, 50), hidden: int = 500, conv_act: bool = False, batch_norm: bool = False,
    ):
        super().__init__()
        c_in, h, w = image_shape
        if len(channels) != 2:
            raise ConfigError(f"architecture.channels={list(channels)}: LeNet has two convolutions, so two channel counts "
                              f"(Caffe's [20, 50])")
        c1, c2, fc = (scaled(c, width) for c in (*channels, hidden))
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate([(c_in, c1), (c1, c2)], start=1):
            layers += [method.conv(f"conv{i}", a, b, 5, first=(i == 1)), nn.MaxPool2d(2)]
            if batch_norm:
                layers.append(method.bn(f"conv{i}", b))
            if conv_act:
                layers.append(method.act(f"conv{i}", b))
            h, w = (h - 4) // 2, (w - 4) // 2
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten(), method.linear("fc1", c2 * h * w, fc)]
        if batch_norm:
            head.append(method.bn("fc1", fc, dims=1))
        head += [method.act("fc1", fc, last=True), method.linear("fc2", fc, num_classes, last=True)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))
