"""Memory and time of batch normalization + sign in four forms (the SBN paper's Table 2 and Figure 2).

- BN + sign: the float BN of eq. 8 (mu, sigma, gamma, beta: four float32 per channel = 128 bits), then sign.
- shift-BN + sign: BinaryNet's shift-based BN, gamma and sigma rounded to powers of two, so the multiply and divide
  become shifts (mu and beta 32-bit, two 8-bit exponents = 80 bits per channel); integer inputs in fixed point.
- BinaryBN: one comparison with T = mu - sigma * beta / gamma and an XNOR with gamma > 0 (an 8-bit T and the sign
  bit of gamma = 9 bits per channel); `BinaryBN (float)` is binexp's step form (a float32 T) on float32 maps.

Each runs on a c x 256 x 256 feature map (the input of BN: the output of a binary convolution, integer-valued) for
growing batch sizes, with random mu, sigma, gamma and beta. It prints a table of parameter bits, output bits,
milliseconds per batch and how many outputs of the first batch differ from BN + sign's (BinaryBN: none, it is exact
on integer inputs; shift-BN: its rounding of gamma and sigma), and draws the time curves and the parameter memory
against c as a PNG like Figure 2.

    python scripts/bench_bn.py --channels 64 --batches 1 2 4 8 16 32 --device cuda
    python scripts/bench_bn.py --channels 8 --batches 1 2 4 --repeats 3     # a quick check on a CPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from binexp.binarize.binary_bn import BinaryBN

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"

FRACTION = 8  # fixed-point fraction bits of the shift-based BN's integer arithmetic
INPUT_RANGE = 64  # the benchmark's binary-convolution outputs are integers in [-64, 64]

# parameter bits per channel, as each form stores them (Table 2, "Storage Memory")
PARAM_BITS = {"BN + sign": 4 * 32, "shift-BN + sign": 2 * 32 + 2 * 8, "BinaryBN": 8 + 1, "BinaryBN (float)": 32 + 1}
# bits written per value: the normalized map (float32 or int32) and the sign, or the sign alone (Table 2, "Output")
OUTPUT_BITS = {"BN + sign": 32 + 1, "shift-BN + sign": 32 + 1, "BinaryBN": 1, "BinaryBN (float)": 32}
# BN channel counts of the paper's reference networks (Figure 2's dotted lines): VGG-16 and AlexNet convolutions
REFERENCE_CHANNELS = {"VGG-16": (64, 512), "AlexNet": (96, 384)}


def random_bn(channels: int, device: torch.device, seed: int = 0) -> torch.nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g) * 8)
        bn.running_var.copy_(torch.rand(channels, generator=g) * 60 + 4)
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
    return bn.eval().to(device)


def per_channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def bn_sign(bn: torch.nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps) >= 0

    return run


def shift_bn_sign(bn: torch.nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """((I - mu) << log2|gamma| >> log2 sigma) * sign(gamma) + beta, in int32 fixed point with FRACTION bits."""
    sigma = torch.sqrt(bn.running_var + bn.eps)
    shift = torch.round(torch.log2(bn.weight.abs().clamp_min(1e-8))) - torch.round(torch.log2(sigma))
    left = per_channel(shift.clamp_min(0).to(torch.int32))
    right = per_channel((-shift).clamp_min(0).to(torch.int32))
    negative = per_channel(bn.weight < 0)
    mu = per_channel(torch.round(bn.running_mean * 2**FRACTION).to(torch.int32))
    beta = per_channel(torch.round(bn.bias * 2**FRACTION).to(torch.int32))

    def run(i: torch.Tensor) -> torch.Tensor:
        scaled = torch.bitwise_right_shift(torch.bitwise_left_shift((i << FRACTION) - mu, left), right)
        return torch.where(negative, -scaled, scaled) + beta >= 0

    return run


def binary_bn_int(bn: torch.nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """XNOR(I > T, gamma > 0) on integer inputs, T from its 8-bit code (ties go to +1, as sign(0) = +1)."""
    fixed = BinaryBN.from_batchnorm(bn).quantize(bits=8, data_range=INPUT_RANGE, input_grid=1.0)
    # integer inputs: I >= T <=> I > ceil(T) - 1, and I <= T <=> not (I > floor(T)); pre-expanded once at load
    t = fixed.thresholds
    above = per_channel(torch.where(fixed.negative, torch.floor(t), torch.ceil(t) - 1).to(torch.int32))
    positive = per_channel(~fixed.negative)

    def run(i: torch.Tensor) -> torch.Tensor:
        return (i > above) == positive

    return run


def binary_bn_float(bn: torch.nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
    return BinaryBN.from_batchnorm(bn)


def as_bits(out: torch.Tensor) -> torch.Tensor:
    """A form's output as 1[output = +1]: the bool forms already are; the float step form gives +-1."""
    return out if out.dtype == torch.bool else out > 0


def timed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of fn(x) over `repeats` runs after one warm-up."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    fn(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(channels: int, size: int, batches: list[int], repeats: int, device: torch.device
            ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Milliseconds per batch of each form, and how many outputs of the first batch differ from BN + sign's."""
    bn = random_bn(channels, device)
    forms = {"BN + sign": (bn_sign(bn), False), "shift-BN + sign": (shift_bn_sign(bn), True),
             "BinaryBN": (binary_bn_int(bn), True), "BinaryBN (float)": (binary_bn_float(bn), False)}
    results: dict[str, list[float]] = {name: [] for name in forms}
    differing: dict[str, int] = {}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for batch in batches:
            # a binary convolution's output: integers
            shape = (batch, channels, size, size)
            i = torch.randint(-INPUT_RANGE, INPUT_RANGE + 1, shape, generator=g, dtype=torch.int32).to(device)
            x = i.to(torch.float32)
            if not differing:
                reference = forms["BN + sign"][0](x)
                differing = {name: int((as_bits(fn(i if integer else x)) != reference).sum())
                             for name, (fn, integer) in forms.items()}
            for name, (fn, integer) in forms.items():
                results[name].append(timed(fn, i if integer else x, repeats))
            del i, x
    return results, differing


def table(results: dict[str, list[float]], differing: dict[str, int], batches: list[int], channels: int,
          size: int) -> str:
    values = batches[0] * channels * size * size
    lines = [f"| form | param bits / channel | param bits at c={channels} | output bits / value | "
             + " | ".join(f"ms @ batch {b}" for b in batches) + f" | outputs differing from BN + sign (of {values}) |",
             "|---|---|---|---|" + "---|" * (len(batches) + 1)]
    for name in results:
        lines.append(f"| {name} | {PARAM_BITS[name]} | {PARAM_BITS[name] * channels} | {OUTPUT_BITS[name]} | "
                     + " | ".join(f"{t:.2f}" for t in results[name]) + f" | {differing[name]} |")
    return "\n".join(lines)


def plot(results: dict[str, list[float]], batches: list[int], channels: int, size: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, times in results.items():
        left.plot(batches, times, marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per batch",
             title=f"time, {channels} x {size} x {size} maps")
    left.set_xticks(batches, labels=[str(b) for b in batches], minor=False)
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.legend()
    c = torch.arange(1, 1025)
    for name in ("BN + sign", "shift-BN + sign", "BinaryBN"):
        right.plot(c, PARAM_BITS[name] * c / 8 / 1024, label=f"{name} ({PARAM_BITS[name]}c bits)")
    for net, (low, high) in REFERENCE_CHANNELS.items():
        style = ":" if net == "VGG-16" else "--"
        right.axvline(low, color="grey", linestyle=style, linewidth=1)
        right.axvline(high, color="grey", linestyle=style, linewidth=1, label=f"{net} BN channels {low}-{high}")
    right.set(xlabel="channels c", ylabel="parameter memory (KiB)", title="memory of one BN layer")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="feature map height and width")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None,
                        help="the PNG (default: docs/figures/sbn_bench_bn_<cpu|gpu>.png, the figure RESULTS shows)")
    args = parser.parse_args(argv)
    for key in ("channels", "size", "repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} {getattr(args, key)}: allowed is a count >= 1")
    if min(args.batches) < 1:
        parser.error(f"--batches {' '.join(map(str, args.batches))}: allowed are batch sizes >= 1")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: allowed are cpu, cuda, cuda:N")
    if args.out is None:
        args.out = FIGURES / f"sbn_bench_bn_{'gpu' if device.type == 'cuda' else 'cpu'}.png"
    if not args.out.suffix:  # matplotlib would add .png to the name printed below
        args.out = args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results, differing = measure(args.channels, args.size, args.batches, args.repeats, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"BN + sign on {args.channels} x {args.size} x {args.size} maps, {where}, median of {args.repeats} runs\n")
    print(table(results, differing, args.batches, args.channels, args.size))
    plot(results, args.batches, args.channels, args.size, args.out)
    print(f"\nfigure: {args.out}")

if __name__ == "__main__":
    main()
