"""The binary primitives every method shares."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from binexp.binarize.base import RecordedProbe


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


class SignActivation(nn.Module, RecordedProbe):
    """sign(x) as a layer: forward sign (sign(0) = +1), backward the STE cancelled where |x| > t_clip
    (1.0 is BinaryNet's choice, BMXNet sweeps it). `block_name` is the name the architecture built it under.

    A method with another backward overrides `binarize` and sets `t_clip` to the window where its gradient is
    not zero. Its curves (binexp.callbacks.binarization, over the test set in eval mode): `passing`, the share of
    inputs inside the window, where the gradient passes; `ones`, the share of +1 outputs; `constant`, the share
    of units with one sign for every test image. A sign is binary from the start, so these say how much of the
    layer still learns, not how binary it is. In eval mode the BN before a sign uses its running statistics,
    which are PyTorch's defaults before the first step: the curves start after training has.

    `threshold` (None, or one value per channel: a subclass sets it, e.g. as a Parameter for ReActNet's learnable
    RSign) shifts the input: the output is sign(x - threshold), `binarize` sees x - threshold, and the curves
    count that shifted input. In step mode the BN before such a sign stays float (BinaryBN is sign(BN(x)), which
    has no shift) and the export folds the shift into the layer's comparison.
    """

    measured_after_training_starts = True

    def __init__(self, name: str = "", t_clip: Optional[float] = 1.0):
        super().__init__()
        self.block_name, self.t_clip = name, t_clip
        self.layer_name = name
        self.probing = False
        self.register_buffer("threshold", None)  # a subclass makes it a Parameter, or a buffer of fixed values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is not None:
            x = x - self.threshold.view(1, -1, *[1] * (x.dim() - 2))
        if self.probing:
            self._record(x.detach())
        return self.binarize(x)

    def binarize(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x, self.t_clip)

    def extra_repr(self) -> str:
        return f"t_clip={self.t_clip}"

    # ---- binarization probe ----------------------------------------------------------------------------
    def _record(self, x: torch.Tensor) -> None:
        inside = x.numel() if self.t_clip is None else (x.abs() <= self.t_clip).sum()
        batch = {
            "inside": torch.as_tensor(inside, device=x.device, dtype=torch.int64),  # only ever summed: one number
            "ones": (x >= 0).sum(0, dtype=torch.int64),
            "samples": torch.tensor(x.shape[0], device=x.device, dtype=torch.int64),
        }
        self.add_counts(batch)

    def probe_summary(self, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        n = counts["samples"].double()
        values = n * counts["ones"].numel()
        constant = (counts["ones"] == counts["samples"]) | (counts["ones"] == 0)
        return {
            "passing": (counts["inside"].double().sum() / values).item(),
            "ones": (counts["ones"].double().sum() / values).item(),
            "constant": constant.double().mean().item(),
        }
