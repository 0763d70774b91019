"""STE: sign weights and activations trained with the straight-through estimator (BMXNet, Bethge et al.).

Forward: sign(x) with sign(0) = +1 (eq. 1). Backward: the gradient passes where |x| <= t_clip and is cancelled
elsewhere (eq. 2, Hubara et al.); `method.t_clip=null` never cancels. The clip applies to activations; latent
weights get the plain straight-through gradient (their range is what the optimizer makes of it).

`method.scaling` is the paper's Figure 4b, after Zhou et al. (DoReFa), with alpha = mean|W|, one scalar per layer:
`none` (N); `backward` (B: "the scaling factor on weights only in backward computation": the forward uses sign(W),
the gradient sent to the layer's input is computed with alpha * sign(W)); `forward_backward` (FB: alpha * sign(W) in
both passes). In every mode the gradient reaching W is the one reaching sign(W), unscaled, as in BMXNet's
QConvolution (its weight gradient is out_grad x input) and DoReFa (sign(W / alpha) * alpha has gradient 1). The first and last layers stay full precision by default (`binarize_first`,
`binarize_last`); their inputs follow the architecture (the first reads the image).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch
from torch import nn

from binexp.binarize.base import BinaryWeights, Method, MethodConfig
from binexp.binarize.binary_bn import SignBatchNorm1d, SignBatchNorm2d, link_to_activations
from binexp.binarize.functional import SignActivation, sign_ste
from binexp.errors import parse_choice


class Scaling(str, Enum):
    none = "none"
    backward = "backward"
    forward_backward = "forward_backward"


@dataclass
class STEConfig(MethodConfig):
    _target_: str = "binexp.binarize.ste.STE"
    name: str = "ste"
    t_clip: Optional[float] = 0.5  # the paper's choice after its sweep (Hubara et al. used 1.0)
    scaling: Scaling = Scaling.none
    binarize_first: bool = False
    binarize_last: bool = False


class _ScaleGrad(torch.autograd.Function):
    """The identity, its gradient multiplied by `scale` (exact values forward: no x * a + (x - x * a) rounding)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def _alpha(w: torch.Tensor) -> torch.Tensor:
    return w.detach().abs().mean().clamp_min(torch.finfo(w.dtype).tiny)


def binary_weight(w: torch.Tensor, scaling: str) -> torch.Tensor:
    """sign(w), its gradient passed straight through to w unscaled in every mode. The forward value is sign(w):
    `forward_backward` multiplies the layer's output by alpha (`weight_scale`), and the gradient through here is
    divided by alpha so that w's gradient does not pick that alpha up."""
    b = sign_ste(w, None)
    return _ScaleGrad.apply(b, 1 / _alpha(w)) if scaling == Scaling.forward_backward.value else b


def weight_scale(w: torch.Tensor, scaling: str) -> torch.Tensor | None:
    """DoReFa's scalar mean|w| for `forward_backward` (a constant of the step, as in the paper); else None."""
    return _alpha(w) if scaling == Scaling.forward_backward.value else None


class _STEWeights(BinaryWeights):
    """sign(W) with the straight-through estimator, scaled as `scaling` says; shared by the conv and linear layers."""

    weight: nn.Parameter
    scaling: str
    training_buffers = ("grad_scale",)

    def signs(self) -> torch.Tensor:
        return binary_weight(self.weight, self.scaling)

    def method_scale(self) -> torch.Tensor | None:
        return weight_scale(self.weight, self.scaling)

    def freeze_scales(self) -> None:
        super().freeze_scales()
        if self.scaling == Scaling.backward.value:  # W := sign(W) would make it 1
            self.register_buffer("grad_scale", _alpha(self.weight).clone())

    def layer_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as it goes in: for `backward` its gradient is scaled by alpha, which is what computing
        the input gradient with alpha * sign(W) gives; the forward and W's gradient are N's."""
        if self.scaling != Scaling.backward.value:
            return x
        frozen = self._buffers.get("grad_scale")
        return _ScaleGrad.apply(x, frozen if frozen is not None else _alpha(self.weight))


class BinaryConv2d(_STEWeights, nn.Conv2d):
    def __init__(self, *args, scaling: str = "none", **kwargs):
        super().__init__(*args, **kwargs)
        self.scaling = scaling


class BinaryLinear(_STEWeights, nn.Linear):
    def __init__(self, *args, scaling: str = "none", **kwargs):
        super().__init__(*args, **kwargs)
        self.scaling = scaling


class STE(Method):
    name = "ste"

    def __init__(self, t_clip: Optional[float] = 0.5, scaling: str = "none", binarize_first: bool = False,
                 binarize_last: bool = False):
        self.t_clip = t_clip
        self.scaling = parse_choice(Scaling, scaling, "method.scaling").value  # a subclass has no schema to check it
        self.binarize_first, self.binarize_last = binarize_first, binarize_last

    def conv(self, name, in_ch, out_ch, kernel_size, stride=1, padding=0, bias=True, *, first=False):
        if first and not self.binarize_first:
            return super().conv(name, in_ch, out_ch, kernel_size, stride, padding, bias, first=first)
        return BinaryConv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias, scaling=self.scaling)

    def linear(self, name, in_features, out_features, bias=True, *, last=False):
        if last and not self.binarize_last:
            return super().linear(name, in_features, out_features, bias, last=last)
        return BinaryLinear(in_features, out_features, bias=bias, scaling=self.scaling)

    def bn(self, name, channels, *, dims=2):
        # in step mode a BN that feeds a sign is BinaryBN: the exact sign of the real-valued BN, as exported
        return SignBatchNorm2d(channels, name) if dims == 2 else SignBatchNorm1d(channels, name)

    def act(self, name, channels, *, last=False):
        return SignActivation(name, self.t_clip)

    def finalize(self, model: nn.Module) -> None:
        link_to_activations(model, (SignActivation,))
