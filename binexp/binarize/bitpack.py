"""Bits for +-1 values: 8 per byte, and the dot product by xnor + popcount (BMXNet eq. 3).

For x, w in {-1, +1}^n stored as bits (+1 -> 1, -1 -> 0): x . w = 2 * popcount(xnor(x, w)) - n, since every
matching pair contributes +1 and every differing pair -1.
"""

from __future__ import annotations

import numpy as np
import torch


def pack_signs(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pack the last axis of a +-1 (or any sign-carrying) array into uint8 bits, x >= 0 -> 1."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return np.packbits(array >= 0, axis=-1)


def xnor_popcount_dot(x_bits: np.ndarray, w_bits: np.ndarray, n: int) -> np.ndarray:
    """Dot products of packed +-1 vectors over their last axis; `n` is the unpacked length."""
    padding = x_bits.shape[-1] * 8 - n  # packbits pads both sides with 0 bits, whose xnor is 1
    matches = np.bitwise_count(~(x_bits ^ w_bits)).sum(axis=-1, dtype=np.int64) - padding
    return 2 * matches - n
