"""Full precision: float weights and ReLU activations (the papers' baselines)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from binexp.binarize.base import Method, MethodConfig


@dataclass
class FloatConfig(MethodConfig):
    _target_: str = "binexp.binarize.fp.FloatReLU"
    name: str = "fp"


class ThresholdableReLU(nn.ReLU):
    """ReLU whose step form is the unit step 1[x > 0] (the 'binary' baseline of ABR's Table 1)."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.layer_name = name
        self.step = False

    def forward(self, x):
        return (x > 0).to(x.dtype) if self.step else super().forward(x)


class FloatReLU(Method):
    name = "fp"

    def act(self, name: str, channels: int, *, last: bool = False) -> nn.Module:
        return ThresholdableReLU(name)
