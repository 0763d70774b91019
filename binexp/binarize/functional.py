"""The binary primitives every method shares."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1, so every value is exactly +1 or -1 (torch.sign(0) is 0)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, t_clip: Optional[float]) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.t_clip = t_clip
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        if ctx.t_clip is None:
            return grad, None
        return grad * (x.abs() <= ctx.t_clip).to(grad.dtype), None


def sign_ste(x: torch.Tensor, t_clip: Optional[float] = 1.0) -> torch.Tensor:
    """Forward: binary_sign(x). Backward: the straight-through estimator, passing the gradient where
    |x| <= t_clip and cancelling it elsewhere (Hubara et al.; BMXNet eq. 2); t_clip=None never cancels."""
    return _SignSTE.apply(x, t_clip)


class SignActivation(nn.Module):
    """sign(x) as a layer: forward sign (sign(0) = +1), backward the STE cancelled where |x| > t_clip
    (1.0 is BinaryNet's choice, BMXNet sweeps it). `block_name` is the name the architecture built it under."""

    def __init__(self, name: str = "", t_clip: Optional[float] = 1.0):
        super().__init__()
        self.block_name, self.t_clip = name, t_clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, self.t_clip)

    def extra_repr(self) -> str:
        return f"t_clip={self.t_clip}"
