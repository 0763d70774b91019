"""Bi-Real Net's ApproxSign (Liu et al., ECCV 2018) as a binexp method defined outside the package.

Forward: sign(x), as every binary activation. Backward: the derivative of a piecewise quadratic that approximates
sign, 2 - 2|x| for |x| < 1 and 0 elsewhere, where BMXNet's straight-through estimator passes 1 for |x| <= t_clip.
Weights, batch norms and the first/last layers are STE's (`binexp.binarize.ste`), so the two differ in the
activation's backward alone.

Because the activation subclasses SignActivation (overriding `binarize`), binexp's curves (the share of inputs
inside its gradient's window |x| < 1, per layer), export and verify treat it as the sign it computes; only its
training gradient is new.
"""

from __future__ import annotations

import torch

from binexp.binarize.functional import SignActivation, binary_sign
from binexp.binarize.ste import STE


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp(min=0)


class ApproxSignActivation(SignActivation):
    def __init__(self, name: str = ""):
        super().__init__(name, t_clip=1.0)  # the window where this backward is not zero: the curves' `passing`

    def binarize(self, x: torch.Tensor) -> torch.Tensor:
        return _ApproxSign.apply(x)

    def extra_repr(self) -> str:
        return "backward=2-2|x| on |x|<1"


class ApproxSign(STE):
    name = "approx_sign"

    def __init__(self, scaling: str = "none", binarize_first: bool = False, binarize_last: bool = False):
        super().__init__(t_clip=None, scaling=scaling, binarize_first=binarize_first, binarize_last=binarize_last)

    def act(self, name, channels, *, last=False):
        return ApproxSignActivation(name)
