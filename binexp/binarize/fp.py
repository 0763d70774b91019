"""Full precision: float weights and ReLU activations (the papers' baselines).

`method.scope` picks the ReLUs that have a step form (thresholded to 1[x > 0] in step mode): the 'binary' and
'finetuned' baseline columns of ABR's Table 1 (`last`) and Table 2 (`all`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from binexp.binarize.base import ActivationScope, Method, MethodConfig


@dataclass
class FloatConfig(MethodConfig):
    _target_: str = "binexp.binarize.fp.FloatReLU"
    name: str = "fp"
    scope: Any = "all"  # all | last | [activation names]: the ReLUs thresholded in step mode


class ThresholdableReLU(nn.ReLU):
    """ReLU whose step form is the unit step 1[x > 0]."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.layer_name = name
        self.step = False

    def forward(self, x):
        return (x > 0).to(x.dtype) if self.step else super().forward(x)


class FloatReLU(Method):
    name = "fp"

    def __init__(self, scope: str | list[str] = "all"):
        self.scope = ActivationScope(scope)

    def act(self, name: str, channels: int, *, last: bool = False) -> nn.Module:
        return ThresholdableReLU(name) if self.scope.includes(name, last) else nn.ReLU()

    def finalize(self, model: nn.Module) -> None:
        self.scope.check(sum(isinstance(m, ThresholdableReLU) for m in model.modules()))
