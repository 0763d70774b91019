"""Hard binarization, the four baselines of the SBN paper's Table 1.

- `bc`, BinaryConnect (Courbariaux et al. 2015): W_b = sign(W); activations float (ReLU).
- `bnn`, BinaryNet (Courbariaux, Hubara et al. 2016): W_b = sign(W) and A_b = sign(A).
- `bwn`, Binary-Weight-Networks (Rastegari et al. 2016): W_b = alpha * sign(W), alpha = mean |W| per output
  channel (XNOR-Net's optimal scale for sign(W)); activations float (ReLU).
- `xnor`, XNOR-Net (Rastegari et al. 2016): BWN's weights and A_b = sign(A). XNOR-Net also scales a convolution's
  output by K, the mean |input| over channels in each receptive field; it is omitted here, as in the widely used
  reimplementations: K is a float per output position, so keeping it would put float multiplies between the binary
  convolution and BinaryBN, whose point is an inference path of comparisons only, and the BN that follows already
  rescales each channel.

W is a float32 latent weight, updated by the optimizer through the straight-through estimator (the gradient of
sign taken as 1) and clipped to [-1, 1] after every optimizer step, as BinaryConnect does: outside that range the
sign can no longer change and the weight would only grow. Binary activations use sign_ste with t_clip = 1
(BinaryNet's "hard tanh" estimator, eq. 2 of the SBN paper); sign(0) = +1 throughout.

Layers, following BinaryNet's CIFAR-10 network (which the SBN paper's VGG-16-like model is): every conv and linear
layer has binary weights, the first included (`method.binarize_first`); its *input* is the image and stays
real-valued, since no activation precedes it. The last layer's weights are binary too (`method.binarize_last`) and,
as in BinaryNet and BinaryConnect, a BN follows it: logits summed from +-1 weights are otherwise as large as the
fan-in. `binarize_first=false` / `binarize_last=false` keep those layers float, XNOR-Net's convention.

With binary activations, every BN that feeds a sign gets a step form, BinaryBN (`binexp.binarize.binary_bn`): in
step mode the BN + sign pair is one comparison per value and gives the same +-1 outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from binexp.binarize.base import BinaryWeights, Method, MethodConfig
from binexp.binarize.binary_bn import SignBatchNorm1d, SignBatchNorm2d, link_to_activations
from binexp.binarize.functional import SignActivation, sign_ste
from binexp.errors import parse_choice


class Base(str, Enum):
    """The hard-binarization methods, also the bases SBN softens (`method=sbn method.base=...`)."""

    bc = "bc"
    bnn = "bnn"
    bwn = "bwn"
    xnor = "xnor"

    @property
    def scaled_weights(self) -> bool:
        return self in (Base.bwn, Base.xnor)

    @property
    def binary_activations(self) -> bool:
        return self in (Base.bnn, Base.xnor)

    @classmethod
    def parse(cls, value: Any, key: str = "method.base") -> Base:
        return parse_choice(cls, value, key)


def channel_scale(w: torch.Tensor) -> torch.Tensor:
    """alpha = mean |w| per output channel (dim 0), shaped to broadcast over w: XNOR-Net's weight scale."""
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


@dataclass
class HardConfig(MethodConfig):
    binarize_first: bool = True  # BinaryNet binarizes the first layer's weights (its input stays the image)
    binarize_last: bool = True  # and the last layer's, followed by BN


@dataclass
class BCConfig(HardConfig):
    _target_: str = "binexp.binarize.hard.BinaryConnect"
    name: str = "bc"


@dataclass
class BNNConfig(HardConfig):
    _target_: str = "binexp.binarize.hard.BinaryNet"
    name: str = "bnn"


@dataclass
class BWNConfig(HardConfig):
    _target_: str = "binexp.binarize.hard.BinaryWeightNetwork"
    name: str = "bwn"


@dataclass
class XNORConfig(HardConfig):
    _target_: str = "binexp.binarize.hard.XNORNet"
    name: str = "xnor"


class _SignWeights(BinaryWeights):
    """Hard binary weights: sign(W) with the straight-through estimator, times alpha per output channel when
    `scaled` (BWN, XNOR); shared by the conv and linear layers."""

    weight: nn.Parameter
    scaled: bool

    def signs(self) -> torch.Tensor:
        return sign_ste(self.weight, None)

    def method_scale(self) -> torch.Tensor | None:
        return channel_scale(self.weight).flatten() if self.scaled else None


class SignConv2d(_SignWeights, nn.Conv2d):
    def __init__(self, *args: Any, name: str = "", scaled: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.block_name, self.scaled = name, scaled


class SignLinear(_SignWeights, nn.Linear):
    """`output_norm` adds the BN BinaryNet puts after its output layer."""

    def __init__(self, *args: Any, name: str = "", scaled: bool = False, output_norm: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.block_name, self.scaled = name, scaled
        self.output_norm = nn.BatchNorm1d(self.out_features) if output_norm else None


class BinarizedLayers(Method):
    """What a base's network looks like: which layers have binary weights, which activations are binary, BN
    with a BinaryBN step form before binary activations, the output BN. Subclasses supply the layers themselves."""

    base: Base = Base.bc
    # the layer classes a subclass binarizes with (SBN swaps in its soft ones); each takes `name` and `scaled`
    conv_layer: type[nn.Conv2d] = SignConv2d
    linear_layer: type[nn.Linear] = SignLinear
    act_layer: type[nn.Module] = SignActivation

    def __init__(self, binarize_first: bool = True, binarize_last: bool = True):
        self.binarize_first, self.binarize_last = bool(binarize_first), bool(binarize_last)

    # ---- the Method interface ----
    def conv(self, name: str, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
             bias: bool = True, *, first: bool = False) -> nn.Module:
        if first and not self.binarize_first:
            return super().conv(name, in_ch, out_ch, kernel_size, stride, padding, bias, first=first)
        return self.conv_layer(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias, name=name,
                               scaled=self.base.scaled_weights)

    def linear(self, name: str, in_features: int, out_features: int, bias: bool = True, *, last: bool = False) -> nn.Module:
        if last and not self.binarize_last:
            return super().linear(name, in_features, out_features, bias, last=last)
        return self.linear_layer(in_features, out_features, bias=bias, name=name, scaled=self.base.scaled_weights,
                                 output_norm=last)

    def bn(self, name: str, channels: int, *, dims: int = 2) -> nn.Module:
        if not self.base.binary_activations:
            return super().bn(name, channels, dims=dims)
        return SignBatchNorm2d(channels, name) if dims == 2 else SignBatchNorm1d(channels, name)

    def act(self, name: str, channels: int, *, last: bool = False) -> nn.Module:
        return self.act_layer(name) if self.base.binary_activations else nn.ReLU()

    def finalize(self, model: nn.Module) -> None:
        link_to_activations(model, (self.act_layer,))


class HardBinarization(BinarizedLayers):
    def after_optimizer_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (SignConv2d, SignLinear)):
                    module.weight.clamp_(-1.0, 1.0)


class BinaryConnect(HardBinarization):
    name, base = "bc", Base.bc


class BinaryNet(HardBinarization):
    name, base = "bnn", Base.bnn


class BinaryWeightNetwork(HardBinarization):
    name, base = "bwn", Base.bwn


class XNORNet(HardBinarization):
    name, base = "xnor", Base.xnor
