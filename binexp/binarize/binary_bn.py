"""BinaryBN (Lahoud et al., "Self-binarizing networks", Sec. 4.3): batch normalization followed by sign, computed
as one comparison per value.

At inference a BN layer computes, per channel (eq. 8),

    O = (I - mu) / sigma * gamma + beta,        sigma = sqrt(running_var + eps),

and in a network with binary activations only sign(O) is kept. With binexp's sign(0) = +1, for gamma != 0

    sign(O) = +1  <=>  O >= 0  <=>  s * I >= s * T,     s = sign(gamma),   T = mu - sigma * beta / gamma   (eqs. 9, 10)

that is +1 where XNOR(I > T, gamma > 0), and +1 at the tie I == T. (The paper's eq. 1 takes sign(0) = -1 and so
writes the strict form; ties are where the two conventions differ, and BN's output there is exactly 0.) For
gamma = 0 the output is the constant sign(beta), +1 for beta = 0 (the paper's special case); it is stored as
T = -inf (always +1) or T = +inf (always -1) with s = +1, so one comparison still serves every channel.

Exactness: T is computed in float64 and rounded *towards the comparison* into float32 (the smallest float32 >= s*T),
so for float32 inputs `s*I >= threshold` is the exact sign of the real-valued BN with these parameters, ties
included, up to float64's own rounding of T: a float32 input within a float64 step of the real T (1e-16
relative; sigma is a square root, so T is rarely a float64) may get +1 where the real sign is -1. PyTorch's
float32 BN rounds its own output; the two could only differ where |O| is within float32 rounding of 0 — never at
exact ties (tests build them from dyadic parameters).

Deployed form (`FixedPointBinaryBN`): T per channel as an 8-bit fixed-point code q (T ~ q * 2^-f), with f fraction
bits per layer chosen from the data range, plus the sign bit of gamma: 9 bits per channel against BN's 4 x 32 (the
paper's Table 2, and its Sec. 4.3: "in practice we represent it as a fixed-point 8-bit integer"). Where a layer's
inputs are integers (a binary layer's sums) and f >= 0, q is T rounded towards the comparison, and the fixed form is
still exact; elsewhere q is T's nearest code, and the two forms can differ only within half a code step of T.
`disagreements` counts where it departs from the float form; `fixed_point_outputs` puts it into a network.

`SignBatchNorm1d/2d` are BN layers whose step form (step mode, eval) is BinaryBN: methods with binary activations
build them, and `link_to_activations` marks those that feed a sign activation of the same layer name.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn


def _round_up_to_float32(values: torch.Tensor) -> torch.Tensor:
    """The smallest float32 >= each float64 value (so `v >= result` <=> `v >= value` for every float32 v)."""
    rounded = values.to(torch.float32)
    below = rounded.to(torch.float64) < values
    return torch.where(below, torch.nextafter(rounded, torch.full_like(rounded, math.inf)), rounded)


def _per_channel(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a (C,) vector over x's channel dimension (dim 1) for (N, C) and (N, C, H, W) inputs."""
    return values.view(1, -1, *([1] * (x.dim() - 2)))


def _plus_minus_one(positive: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.where(positive, torch.ones((), dtype=dtype, device=positive.device),
                       -torch.ones((), dtype=dtype, device=positive.device))


@dataclass(frozen=True)
class BinaryBN:
    """sign(BN(x)) of one BN layer in eval mode, as per-channel thresholds: +1 where s*x >= s*T."""

    threshold: torch.Tensor  # T per channel, float64; -inf / +inf for gamma == 0 (constant +1 / -1)
    negative: torch.Tensor  # bool per channel: gamma < 0, the comparison flips (s = -1)

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> BinaryBN:
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{type(bn).__name__} keeps no running statistics: BinaryBN needs them (track_running_stats=True)")
        mu = bn.running_mean.detach().to(torch.float64)
        sigma = torch.sqrt(bn.running_var.detach().to(torch.float64) + bn.eps)
        if bn.affine:
            gamma, beta = bn.weight.detach().to(torch.float64), bn.bias.detach().to(torch.float64)
        else:
            gamma, beta = torch.ones_like(mu), torch.zeros_like(mu)
        zero = gamma == 0
        safe_gamma = torch.where(zero, torch.ones_like(gamma), gamma)
        constant = torch.where(beta >= 0, torch.full_like(mu, -math.inf), torch.full_like(mu, math.inf))
        threshold = torch.where(zero, constant, mu - sigma * beta / safe_gamma)
        return cls(threshold=threshold, negative=gamma < 0)

    def float32_comparison(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, bound) per channel, s = +-1 (float64) and bound float32: +1 where s*x >= bound, for every float32 x
        exactly as for the float64 threshold. Step mode and the export both compare so."""
        s = _plus_minus_one(~self.negative, torch.float64)
        return s, _round_up_to_float32(s * self.threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            s = _plus_minus_one(~self.negative, torch.float64)
            values, bound = x, s * self.threshold
        else:  # float32 holds half and bfloat16 values exactly; compare there
            s, bound = self.float32_comparison()
            values = x.to(torch.float32)
        s, bound = s.to(x.device, values.dtype), bound.to(x.device)
        fires = values * _per_channel(s, x) >= _per_channel(bound, x)
        return _plus_minus_one(fires, x.dtype)

    def quantize(self, bits: int = 8, data_range: float | None = None, input_grid: float = 0.0) -> FixedPointBinaryBN:
        """The deployed form: T as a `bits`-bit fixed-point code per channel plus the sign bit of gamma.

        The layer's fraction bits f are the most that keep its largest finite |T| (at most `data_range`, the largest
        |input| seen, when given: thresholds beyond every input saturate without changing an output) in range.
        Where every input is a multiple of `input_grid` (a power of two: 1 for a binary layer's integer sums, 2 for
        its even ones; 0 for none) and the code step 2^-f divides it, every input lies on the code grid, and each code
        is s*T rounded up on it (s = sign(gamma)): s*x >= s*code*2^-f exactly where s*x >= s*T, for every such x.
        Otherwise each code is T's nearest, which moves T by at most half a step and favours neither output.
        The lowest code stands for T = -inf: with the sign of gamma it makes the channels that are constant (gamma =
        0) constant for every input, as the paper's special case is; a T beyond the codes' range becomes constant
        where its comparison never fires inside the range, and clamps to the range's end where it always fires.
        """
        finite = self.threshold[torch.isfinite(self.threshold)].abs()
        max_abs = finite.max().item() if finite.numel() else 0.0
        if data_range is not None:
            max_abs = min(max_abs, data_range)
        f = fraction_bits(max_abs, bits)
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scaled = self.threshold * 2.0**f  # +-inf for gamma = 0 stay infinite until the clamp
        if input_grid > 0 and 2.0**-f <= input_grid:
            s = _plus_minus_one(~self.negative, torch.float64)
            codes = s * torch.ceil(s * scaled)
        else:
            codes = torch.round(scaled)
        negative = self.negative.clone()
        # The code `low` is reserved for T = -inf, so a constant channel stays constant for every input, however far
        # beyond the codes' range: (low, gamma > 0) is always +1 (gamma = 0, beta >= 0), (low, gamma < 0) always -1.
        # A finite T beyond the range on the side where its comparison never fires there becomes always -1 too
        # (a clamped code would fire at the range's end); on the other side it clamps to the end, firing throughout.
        always_plus = ~negative & (codes < low + 1)
        always_minus = (~negative & (codes > high)) | (negative & (codes < low + 1))
        codes = codes.clamp(low + 1, high)
        codes[always_plus | always_minus] = low
        negative[always_plus], negative[always_minus] = False, True
        return FixedPointBinaryBN(codes=codes.to(torch.int8 if bits <= 8 else torch.int32), negative=negative,
                                  fraction_bits=f, bits=bits)


def fraction_bits(max_abs: float, bits: int = 8) -> int:
    """The most fraction bits f with round(max_abs * 2^f) within a signed `bits`-bit code (f < 0 for large values)."""
    high = 2 ** (bits - 1) - 1
    if not max_abs > 0 or not math.isfinite(max_abs):
        return bits - 1
    f = math.floor(math.log2(high / max_abs))
    while max_abs * 2.0**f > high:  # guard log2's rounding
        f -= 1
    while max_abs * 2.0 ** (f + 1) <= high:
        f += 1
    return f


@dataclass(frozen=True)
class FixedPointBinaryBN:
    """BinaryBN with T stored as `codes * 2^-fraction_bits` (int8 by default; the lowest code is T = -inf):
    9 bits per channel."""

    codes: torch.Tensor
    negative: torch.Tensor
    fraction_bits: int
    bits: int = 8

    @property
    def bits_per_channel(self) -> int:
        return self.bits + 1  # the threshold code and the sign of gamma

    @property
    def thresholds(self) -> torch.Tensor:
        values = self.codes.to(torch.float64) * 2.0 ** -self.fraction_bits
        return values.masked_fill(self.codes == -(2 ** (self.bits - 1)), -math.inf)  # the reserved code

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return BinaryBN(threshold=self.thresholds, negative=self.negative)(x)


def disagreements(bn: nn.modules.batchnorm._BatchNorm, batches: Iterable[torch.Tensor], bits: int = 8,
                  data_range: float | None = None) -> tuple[int, int]:
    """(values where the fixed-point BinaryBN differs from the float one, values compared) over `batches` of BN inputs."""
    exact = BinaryBN.from_batchnorm(bn)
    fixed = exact.quantize(bits, data_range)
    differ = total = 0
    for x in batches:
        differ += int((exact(x) != fixed(x)).sum().item())
        total += x.numel()
    return differ, total


def binary_bn_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> each BN of `model` whose step form is BinaryBN (it feeds a sign activation), in network order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _BinaryBNStepForm) and m.feeds_sign}


@dataclass(frozen=True)
class InputRange:
    largest: torch.Tensor  # 0-d: the largest |input| seen
    # 0-d: the largest power of two (up to 2^GRID_EXPONENTS) every input seen is a multiple of, 0 where one was not an
    # integer. A binary layer's sums are integers, and even ones where the fan-in is even (+-1 products; zero padding
    # adds 0, max-pooling keeps the parity)
    grid: torch.Tensor


GRID_EXPONENTS = 30


def input_grid(x: torch.Tensor) -> torch.Tensor:
    """The largest 2^g (g <= GRID_EXPONENTS) dividing every value of `x`, as a 0-d float tensor; 0 if one is not an
    integer."""
    if not bool((x == x.round()).all()):
        return torch.zeros((), device=x.device)
    grid = 1.0
    while grid < 2.0**GRID_EXPONENTS and bool((torch.remainder(x, 2 * grid) == 0).all()):
        grid *= 2
    return torch.tensor(grid, device=x.device)


@contextlib.contextmanager
def input_ranges(layers: dict[str, nn.Module]) -> Iterator[dict[str, InputRange]]:
    """While open, what each of `layers` sees as input, per name (tensors on the inputs' device: no step waits)."""
    ranges: dict[str, InputRange] = {}

    def recorder(name: str):
        def record(_module, args) -> None:
            x = args[0].detach()
            seen = InputRange(x.abs().max(), input_grid(x))
            if name in ranges:  # grids are powers of two: the smaller one holds both batches' inputs
                seen = InputRange(torch.maximum(ranges[name].largest, seen.largest), torch.minimum(ranges[name].grid, seen.grid))
            ranges[name] = seen
        return record

    handles = [m.register_forward_pre_hook(recorder(name)) for name, m in layers.items()]
    try:
        yield ranges
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def fixed_point_outputs(layers: dict[str, nn.Module], forms: dict[str, FixedPointBinaryBN]) -> Iterator[torch.Tensor]:
    """While open, each of `layers` in its BinaryBN form (step mode, eval) outputs its fixed-point form's values
    instead, so the network downstream runs on them. Yields (len(layers), 2) int64 counts, one row per layer in
    `layers`' order: outputs that differ from the float form, outputs compared."""
    counts = torch.zeros(len(layers), 2, dtype=torch.int64, device=next(iter(layers.values())).running_mean.device)

    def substitute(row: int, form: FixedPointBinaryBN):
        def hook(module, args, out):
            if module.training or not module.step:  # only the BinaryBN form has a fixed-point version
                return None
            fixed = form(args[0])
            counts[row, 0] += (fixed != out).sum()
            counts[row, 1] += out.numel()
            return fixed
        return hook

    handles = [m.register_forward_hook(substitute(i, forms[name])) for i, (name, m) in enumerate(layers.items())]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


class _BinaryBNStepForm:
    """BN whose step form, in eval mode and when it feeds a sign activation, is BinaryBN (outputs +-1)."""

    block_name: str
    step: bool
    feeds_sign: bool

    def __init__(self, channels: int, name: str = ""):
        super().__init__(channels)
        self.block_name, self.step, self.feeds_sign = name, False, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step and self.feeds_sign and not self.training:
            return BinaryBN.from_batchnorm(self)(x)
        return super().forward(x)


class SignBatchNorm2d(_BinaryBNStepForm, nn.BatchNorm2d):
    pass


class SignBatchNorm1d(_BinaryBNStepForm, nn.BatchNorm1d):
    pass


class SyncSignBatchNorm(_BinaryBNStepForm, nn.SyncBatchNorm):
    """A SignBatchNorm while `trainer.sync_batchnorm` trains it across processes (binexp.distributed.
    StepFormSyncBatchNorm swaps its class in and back): batch statistics over every rank, the same step form."""


def link_to_activations(model: nn.Module, sign_activations: tuple[type, ...]) -> int:
    """Mark each SignBatchNorm that has a sign activation of the same `block_name` as feeding it; returns how many.

    `block_name` is the name the architecture built a module under. Architectures build a hidden layer's BN and
    activation under one name, BN feeding the activation directly
    (conv -> [pool] -> bn -> act, or pre-activation bn -> act -> conv). A BN without one (ResNet's head, followed
    by a float ReLU) keeps its float form in step mode.
    """
    # a sign with a threshold computes sign(BN(x) - threshold), which BinaryBN's sign(BN(x)) is not
    signs = {m.block_name for m in model.modules()
             if isinstance(m, sign_activations) and getattr(m, "threshold", None) is None}
    linked = 0
    for module in model.modules():
        if isinstance(module, _BinaryBNStepForm):
            module.feeds_sign = module.block_name in signs
            linked += module.feeds_sign
    return linked
