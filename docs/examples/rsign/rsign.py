"""ReActNet's RSign (Liu et al., ECCV 2020) as a binexp method defined outside the package.

Forward: sign(x - alpha), with alpha a learnable threshold per channel (initialised to 0). Backward: STE's, the
gradient passed where |x - alpha| <= t_clip, to x and (negated) to alpha. Weights, batch norms and the first/last
layers are STE's (`binexp.binarize.ste`), so the two differ in the activation's threshold alone.

The threshold is the activation's `threshold` (binexp.binarize.functional.SignActivation): binexp's curves count
the shifted input, step mode keeps the batch norm before it float (BinaryBN has no shift), and the export folds
alpha into each channel's comparison.
"""

from __future__ import annotations

import torch
from torch import nn

from binexp.binarize.functional import SignActivation
from binexp.binarize.ste import STE


class RSignActivation(SignActivation):
    def __init__(self, name: str, channels: int, t_clip: float | None = 0.5):
        super().__init__(name, t_clip=t_clip)
        self.threshold = nn.Parameter(torch.zeros(channels))

    def extra_repr(self) -> str:
        return f"t_clip={self.t_clip}, learnable threshold per channel"


class RSign(STE):
    name = "rsign"

    def act(self, name, channels, *, last=False):
        return RSignActivation(name, channels, self.t_clip)
