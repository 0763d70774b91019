"""SBN: self-binarizing networks (Lahoud et al. 2019), applied to a hard-binarization base (`method.base`).

Soft binarization replaces sign by tanh(nu * x) and sharpens it as training goes (eq. 3: tanh(nu x) -> sign(x)
as nu -> inf). Each binary layer keeps a learnable, unconstrained latent P and trains with

    W = tanh(nu * P)                         (eq. 5)      bc, bnn
    W = alpha * tanh(nu * P),  alpha = mean |P| per output channel        bwn, xnor (the base's scaling; P plays
                                                                          the part of its real-valued weights)
and, where the base binarizes activations (bnn, xnor), A = tanh(nu * O) (eq. 7) on the BN output O; bc and bwn
keep ReLU. nu grows from 1 to 1000 over training (`schedule=exp_nu`), written into the 0-d buffer `nu` of every
SBN layer. In step mode (inference) the network is binary: B = sign(P) (eq. 6, sign(0) = +1) times the base's
alpha, activations sign(O), and each BN + sign pair is BinaryBN (Sec. 4.3), one comparison per value.

The layer plan is the base's (`binexp.binarize.hard`): every conv and linear layer binarized, the first included
(its input is the image), and the last followed by BN; `method.binarize_first/last=false` keep them float. There is
no clipping: P is unconstrained, tanh bounds W.

`method.activation_grad=ste` is a variant, not the paper's method: the same tanh(nu * O) forward, with BinaryNet's
straight-through gradient (1 where |O| <= 1) in place of tanh's derivative, which grows to nu at O = 0 and, compounded
over the binary layers, drags SBN on BNN's accuracy down in our runs (docs/RESULTS.md).

Every SBN layer is a binarization probe for the curves callback: `<layer>.weight` reports the share of |tanh(nu P)|
above 0.9 / 0.99 / 0.999 (binary90/99/999), `<layer>.act` the share of activation values |tanh(nu O)| above them
and `stuck`, the share of units saturated (|tanh| > 0.99) at the same sign for every test sample: those pass no
gradient, which is what the callback's collapse check means. A unit merely of one sign is not counted: early in
training, while nu is small and BN's running statistics still lag, many are, and they still learn. A weight has no
samples, so no `stuck` (its TensorBoard curves and csv cells would be NaN).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from binexp.binarize.base import BinarizationProbe, BinaryWeights, MethodConfig, RecordedProbe
from binexp.binarize.functional import binary_sign
from binexp.binarize.hard import Base, BinarizedLayers, channel_scale
from binexp.errors import parse_choice

THRESHOLDS = {"binary90": 0.9, "binary99": 0.99, "binary999": 0.999}
SATURATED = 0.99  # |tanh| above this passes (almost) no gradient


class ActivationGrad(str, Enum):
    """What the backward pass of tanh(nu * x) uses."""

    tanh = "tanh"  # its derivative, nu * (1 - tanh^2(nu x)) (eq. 4): the paper's method
    ste = "ste"  # BinaryNet's hardtanh straight-through estimator, 1 where |x| <= 1 (a variant, not the paper's)

    @classmethod
    def parse(cls, value: Any) -> ActivationGrad:
        return parse_choice(cls, value, "method.activation_grad")


@dataclass
class SBNConfig(MethodConfig):
    _target_: str = "binexp.binarize.sbn.SBN"
    name: str = "sbn"
    base: Base = Base.bnn  # bc | bnn | bwn | xnor: which hard method's network is softened
    binarize_first: bool = True
    binarize_last: bool = True
    activation_grad: ActivationGrad = ActivationGrad.tanh


def magnitude_counts(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Counts of |values| above each threshold, their number and the sum of |values| (sums, so ranks add up)."""
    a = values.detach().abs()
    counts = {key: (a > t).sum(dtype=torch.int64) for key, t in THRESHOLDS.items()}
    counts["values"] = torch.tensor(a.numel(), device=a.device, dtype=torch.int64)
    counts["abs_sum"] = a.sum(dtype=torch.float64)
    return counts


def magnitude_summary(counts: dict[str, torch.Tensor]) -> dict[str, float]:
    n = counts["values"].double().clamp_min(1)
    out = {key: (counts[key].double() / n).item() for key in THRESHOLDS}
    out["mean_abs"] = (counts["abs_sum"].double() / n).item()
    return out


class _SoftWeights(BinarizationProbe):
    """W = [alpha *] tanh(nu * P) in training, [alpha *] sign(P) in step mode; P is the layer's `weight`."""

    weight: nn.Parameter
    nu: torch.Tensor

    def _soft_setup(self, name: str, scaled: bool) -> None:
        self.block_name, self.layer_name, self.scaled = name, f"{name}.weight", scaled
        self.measures_activations = False
        self.register_buffer("nu", torch.tensor(1.0))  # nu_0 = 1; the schedule writes it before every step
        self.step, self.probing = False, False

    def soft_weight(self) -> torch.Tensor:
        return torch.tanh(self.nu * self.weight)

    def signs(self) -> torch.Tensor:
        return binary_sign(self.weight) if self.step else self.soft_weight()

    def method_scale(self) -> torch.Tensor | None:
        return channel_scale(self.weight).flatten() if self.scaled else None

    def probe_reset(self) -> None:
        pass  # the weights are measured when counts are collected

    def probe_counts(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return magnitude_counts(self.soft_weight())

    def probe_summary(self, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        return magnitude_summary(counts)  # no samples, so no `stuck`: a weight never collapses


class SoftBinaryConv2d(_SoftWeights, BinaryWeights, nn.Conv2d):
    def __init__(self, *args: Any, name: str = "", scaled: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._soft_setup(name, scaled)


class SoftBinaryLinear(_SoftWeights, BinaryWeights, nn.Linear):
    """`output_norm` adds the BN that follows a binary output layer (see binexp.binarize.hard)."""

    def __init__(self, *args: Any, name: str = "", scaled: bool = False, output_norm: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._soft_setup(name, scaled)
        self.output_norm = nn.BatchNorm1d(self.out_features) if output_norm else None


class ScaledTanh(nn.Module, RecordedProbe):
    """tanh(nu * x) in training (eq. 7), sign(x) in step mode. `grad="ste"` keeps the forward and backpropagates
    BinaryNet's straight-through estimator instead of tanh's derivative (which grows to nu at x = 0)."""

    def __init__(self, name: str = "", grad: str = "tanh"):
        super().__init__()
        self.block_name, self.layer_name = name, f"{name}.act"
        self.straight_through = ActivationGrad.parse(grad) == ActivationGrad.ste
        self.register_buffer("nu", torch.tensor(1.0))
        self.step, self.probing = False, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step:
            out = binary_sign(x)
        elif self.straight_through:  # value tanh(nu x) exactly (x - x.detach() is 0); gradient 1 where |x| <= 1
            out = torch.tanh(self.nu * x).detach() + (x - x.detach()) * (x.detach().abs() <= 1).to(x.dtype)
        else:
            out = torch.tanh(self.nu * x)
        if self.probing:
            self._record(out.detach())
        return out

    def _record(self, out: torch.Tensor) -> None:
        batch = magnitude_counts(out)
        # per unit (channel x position): how often it is saturated at +1 and at -1
        batch["saturated_pos"] = (out > SATURATED).sum(0, dtype=torch.int64)
        batch["saturated_neg"] = (out < -SATURATED).sum(0, dtype=torch.int64)
        batch["samples"] = torch.tensor(out.shape[0], device=out.device, dtype=torch.int64)
        self.add_counts(batch)

    def probe_summary(self, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        stuck = (counts["saturated_pos"] == counts["samples"]) | (counts["saturated_neg"] == counts["samples"])
        return {**magnitude_summary(counts), "stuck": stuck.double().mean().item()}


class SBN(BinarizedLayers):
    name = "sbn"
    schedule_keys = ("nu",)
    conv_layer, linear_layer, act_layer = SoftBinaryConv2d, SoftBinaryLinear, ScaledTanh

    def __init__(self, base: Any = "bnn", binarize_first: bool = True, binarize_last: bool = True,
                 activation_grad: Any = "tanh"):
        super().__init__(binarize_first, binarize_last)
        self.base = Base.parse(base)
        self.activation_grad = ActivationGrad.parse(activation_grad)

    def act(self, name: str, channels: int, *, last: bool = False) -> nn.Module:
        return ScaledTanh(name, self.activation_grad.value) if self.base.binary_activations else nn.ReLU()
