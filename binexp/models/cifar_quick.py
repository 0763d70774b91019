"""Caffe's "cifar10_quick", the ABR paper's CIFAR-10 network.

conv(32,5,p2) - maxpool(3,2) - act - conv(32,5,p2) - act - avgpool(3,2) - conv(64,5,p2) - act - avgpool(3,2)
- fc(64) - act - fc(10). Pools round up as Caffe's do (32 -> 16 -> 8 -> 4); `ceil_pools=false` rounds down as
PyTorch's pools do by default (32 -> 15 -> 7 -> 3, a 576-wide fc1), the way a plain PyTorch port writes it.
Caffe's file has no nonlinearity after fc(64); we add one so the last hidden layer has an activation to binarize
(Table 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from binexp.binarize.base import Method
from binexp.models.base import ArchitectureConfig, scaled


@dataclass
class CifarQuickConfig(ArchitectureConfig):
    _target_: str = "binexp.models.cifar_quick.CifarQuick"
    name: str = "cifar_quick"
    ceil_pools: bool = True


def _out(size: int, ceil: bool) -> int:
    return (-(-(size - 3) // 2) if ceil else (size - 3) // 2) + 1  # (size - kernel) / stride, rounded, + 1


class CifarQuick(nn.Module):
    def __init__(self, method: Method, image_shape: tuple[int, int, int], num_classes: int, width: float = 1.0,
                 ceil_pools: bool = True):
        super().__init__()
        c_in, h, w = image_shape
        c1, c2, c3, fc = (scaled(c, width) for c in (32, 32, 64, 64))
        self.features = nn.Sequential(
            method.conv("conv1", c_in, c1, 5, padding=2, first=True),
            nn.MaxPool2d(3, 2, ceil_mode=ceil_pools),
            method.act("conv1", c1),
            method.conv("conv2", c1, c2, 5, padding=2),
            method.act("conv2", c2),
            nn.AvgPool2d(3, 2, ceil_mode=ceil_pools),
            method.conv("conv3", c2, c3, 5, padding=2),
            method.act("conv3", c3),
            nn.AvgPool2d(3, 2, ceil_mode=ceil_pools),
        )
        for _ in range(3):
            h, w = _out(h, ceil_pools), _out(w, ceil_pools)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            method.linear("fc1", c3 * h * w, fc),
            method.act("fc1", fc, last=True),
            method.linear("fc2", fc, num_classes, last=True),
        )

    # Caffe's cifar10_quick_train_test.prototxt: gaussian weight fillers, zero biases. The tiny conv1 std
    # matches its raw-pixel inputs (mean subtracted, not scaled).
    CAFFE_STD = {"conv1": 1e-4, "conv2": 1e-2, "conv3": 1e-2, "fc1": 1e-1, "fc2": 1e-1}

    def caffe_init(self) -> None:
        layers = [self.features[0], self.features[3], self.features[6], self.classifier[1], self.classifier[3]]
        for layer, std in zip(layers, self.CAFFE_STD.values()):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.classifier(self.features(x))
