"""The binary primitives every method shares."""

from __future__ import annotations

from typing import Optional

import torch


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
