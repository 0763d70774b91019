"""ABR: adjustable bounded rectifiers (Wu, Lin & Tang), f(y) = clamp(k*y + 0.5, 0, 1).

Each channel (each unit of a fully connected layer) has a learnable slope k. The slopes are pushed to grow by
the loss -lambda * log|k|, either "outside of the learning rate" as the paper does (after every optimizer
step, k <- k + lambda * sign(k) / |k|, the default) or as a term of the loss (`method.growth=in_loss`). As k
grows the rectifier approaches the step function 1[k*y >= 0], which replaces it at inference (step mode).
lambda comes from the schedule (`schedule=two_phase`): small in phase 1, large in phase 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from binexp.binarize.base import ActivationScope, Method, MethodConfig, RecordedProbe
from binexp.binarize.functional import binary_sign
from binexp.errors import parse_choice


class SlopeInit(str, Enum):
    ones = "ones"  # the paper's choice
    gaussian = "gaussian"  # N(0, 1), the paper's alternative: slopes of both signs


class Growth(str, Enum):
    outside = "outside"  # k += lambda * sign(k) / |k| after each optimizer step (the paper)
    in_loss = "in_loss"  # -lambda * sum(log|k|) added to the loss, scaled by the learning rate like any term


@dataclass
class ABRConfig(MethodConfig):
    _target_: str = "binexp.binarize.abr.ABR"
    name: str = "abr"
    scope: Any = "all"  # all | last | [activation names]; the others stay ReLU
    slope_init: SlopeInit = SlopeInit.ones
    growth: Growth = Growth.outside


class BoundedRectifier(nn.Module, RecordedProbe):
    """clamp(k*y + 0.5, 0, 1) with one slope per channel (dim 1); step form 1[k*y >= 0]."""

    def __init__(self, name: str, channels: int, slope_init: str = "ones"):
        super().__init__()
        self.layer_name = name
        init = torch.ones(channels) if slope_init == SlopeInit.ones.value else torch.randn(channels)
        self.slope = nn.Parameter(init)
        # written by the schedule before every step; checkpoints carry them
        self.register_buffer("slope_lambda", torch.tensor(0.0))
        self.register_buffer("phase", torch.tensor(0.0))
        self.step = False
        self.probing = False

    def _k(self, y: torch.Tensor) -> torch.Tensor:
        return self.slope.view(1, -1, *([1] * (y.dim() - 2))).to(y.dtype)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.step:  # 1[k*y >= 0] as sign(k)*y >= 0: a k*y that underflows to -0.0 must not fire where y < 0
            out = (torch.sign(self._k(y)) * y >= 0).to(y.dtype)
        else:  # in float32 under autocast: k's gradient is summed over the batch, which bfloat16 rounds by ~10%
            k = self.slope.view(1, -1, *([1] * (y.dim() - 2)))
            wide = y if y.dtype in (torch.float32, torch.float64) else y.float()
            out = torch.clamp(k * wide + 0.5, 0.0, 1.0).to(y.dtype)
        if self.probing:
            self._record(out.detach())
        return out

    def grow(self) -> None:
        """One slope-growth step outside the learning rate: the gradient step of -lambda*log|k| with step 1."""
        with torch.no_grad():
            k = self.slope
            k.add_(self.slope_lambda * binary_sign(k) / k.abs().clamp_min(1e-12))

    def growth_loss(self) -> torch.Tensor:
        return -self.slope_lambda * torch.log(self.slope.abs().clamp_min(1e-12)).sum()

    # ---- binarization probe ----------------------------------------------------------------------------
    def _record(self, out: torch.Tensor) -> None:
        batch = {
            "binary": ((out == 0) | (out == 1)).sum(0, dtype=torch.int64),
            "ones": (out == 1).sum(0, dtype=torch.int64),
            "zeros": (out == 0).sum(0, dtype=torch.int64),
            "samples": torch.tensor(out.shape[0], device=out.device, dtype=torch.int64),
        }
        self.add_counts(batch)

    def probe_summary(self, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        n = counts["samples"].double()
        binary_time = counts["binary"].double() / n  # per unit: share of samples with an output of 0 or 1
        stuck = (counts["ones"] == counts["samples"]) | (counts["zeros"] == counts["samples"])
        return {
            "binary90": (binary_time >= 0.9).double().mean().item(),
            "binary99": (binary_time >= 0.99).double().mean().item(),
            "binary999": (binary_time >= 0.999).double().mean().item(),
            "saturated": (counts["binary"].double().sum() / (n * counts["binary"].numel())).item(),
            "ones": (counts["ones"].double().sum() / (n * counts["ones"].numel())).item(),
            "stuck": stuck.double().mean().item(),
            "median_k": self.slope.detach().abs().median().item(),
        }


class ABR(Method):
    name = "abr"
    schedule_keys = ("slope_lambda", "phase")

    def __init__(self, scope: str | list[str] = "all", slope_init: str = "ones", growth: str = "outside"):
        self.scope = ActivationScope(scope)
        # parsed here, not only by the schema: a subclass kept outside binexp has none
        self.slope_init = parse_choice(SlopeInit, slope_init, "method.slope_init").value
        self.growth = parse_choice(Growth, growth, "method.growth").value

    def act(self, name: str, channels: int, *, last: bool = False) -> nn.Module:
        if self.scope.includes(name, last):
            return BoundedRectifier(name, channels, self.slope_init)
        return nn.ReLU()  # out of scope: no step form, so step mode leaves it alone

    def finalize(self, model: nn.Module) -> None:
        self.scope.check(len(rectifiers(model)))

    def regularization(self, model: nn.Module) -> torch.Tensor | None:
        if self.growth != Growth.in_loss.value:
            return None
        return sum(r.growth_loss() for r in rectifiers(model))

    def after_optimizer_step(self, model: nn.Module) -> None:
        if self.growth == Growth.outside.value:
            for r in rectifiers(model):
                r.grow()


def rectifiers(model: nn.Module) -> list[BoundedRectifier]:
    return [m for m in model.modules() if isinstance(m, BoundedRectifier)]
