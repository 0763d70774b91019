"""CPU inference time of the packed runtime (binexp.export) against float32 PyTorch on the same network.

    python scripts/bench_infer.py                                  # vgg_small + bnn, batch 1 and 256
    python scripts/bench_infer.py --arch lenet --method ste --shape 1 28 28 --batches 1 256 \
        --override architecture.conv_act=true architecture.batch_norm=true   # Caffe's LeNet has no binary layer
    python scripts/bench_infer.py --out docs/figures/bench_infer.md

The network has random weights and batch-norm statistics (timing does not depend on them). Per binary layer it
compares the packed layer (packing the input bits, windows of 64-bit words, xnor/and + popcount, integer sums)
with F.conv2d / F.linear on the same +-1 values; end to end, the whole exported model with the same architecture
as a float32 network (method=fp: float weights, ReLU) in eval mode, what the binary network replaces. `--override`
keys go to the binary network's config, and those under `architecture.` to the float32 one's too. Each time is the
median of --repeats runs after one warm-up. Threads: torch's intra-op threads and the kernel's OpenMP threads are
both the machine's cores unless OMP_NUM_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from binexp.binarize.base import evaluating  # noqa: E402
from binexp.builder import build  # noqa: E402
from binexp.export import artifact  # noqa: E402
from binexp.export.lower import lower  # noqa: E402
from binexp.export.popcount import backend  # noqa: E402
from binexp.export.runtime import StepModel  # noqa: E402
from binexp.models import build_model  # noqa: E402


def compose(arch: str, method: str, width: float, overrides: list[str] = ()):
    from binexp.config import compose_train

    return compose_train([f"architecture={arch}", f"method={method}", "dataset=synthetic",
                          f"architecture.width={width}", "run_dir=/tmp/unused", *overrides])


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def randomize(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 3)
                m.running_var.uniform_(1, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg_small")
    parser.add_argument("--method", default="bnn")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. architecture.conv_act=true")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if min(args.batches) < 1 or args.width <= 0 or min(args.shape) < 1:
        parser.error("--batches and --shape take counts >= 1, --width a number > 0")

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from binexp.errors import ConfigError, without_search_path

    try:
        cfg = compose(args.arch, args.method, args.width, args.override)
        shape = tuple(args.shape)
        net = build_model(cfg.architecture, build(cfg.method), shape, num_classes=10)
        # end to end, the float32 reference is the same architecture with float weights and ReLU (method=fp)
        fp = compose(args.arch, "fp", args.width, [o for o in args.override if o.startswith("architecture.")])
        float_net = build_model(fp.architecture, build(fp.method), shape, num_classes=10)
    except (HydraException, OmegaConfBaseException, ConfigError) as e:
        parser.error(without_search_path(e))
    randomize(net)
    ops, inp, out = lower(net, shape)
    manifest, tensors = artifact.manifest_and_tensors(ops, inp, out, {})
    model = StepModel(manifest, tensors)
    if not any(op["kind"].startswith("binary_") for op in manifest["ops"]):
        parser.error(f"--arch {args.arch} --method {args.method}: the export has no binary layer to time (a layer is "
                     "binary when its input is binary: e.g. Caffe's LeNet needs --override architecture.conv_act=true "
                     "architecture.batch_norm=true)")

    rows = []
    for batch in args.batches:
        x = torch.randn(batch, *shape)
        # per binary layer: its input bits as the exported model sees them
        recorded_inputs: dict[str, torch.Tensor] = {}
        values = {}
        orig = model._run

        def capture(op, ins, orig=orig, seen=recorded_inputs):
            if op["kind"].startswith("binary_"):
                seen[op["name"]] = ins[0].tensor
            return orig(op, ins)

        model._run = capture
        model(x)
        model._run = orig
        for op in manifest["ops"]:
            if not op["kind"].startswith("binary_"):
                continue
            layer = model.binary[op["name"]]
            bits = recorded_inputs[op["name"]]
            pm1 = bits.to(torch.float32) * 2 - 1 if op["attrs"]["input"] == "pm1" else bits.to(torch.float32)
            if layer.conv:
                float_fn = lambda pm1=pm1, layer=layer: F.conv2d(pm1, layer.signs, None, layer.stride, layer.padding)  # noqa: E731
            else:
                float_fn = lambda pm1=pm1, layer=layer: F.linear(pm1, layer.signs)  # noqa: E731
            t_packed = median_time(lambda layer=layer, bits=bits: layer(bits), args.repeats)
            t_float = median_time(float_fn, args.repeats)
            values[op["attrs"]["layer"]] = (t_float, t_packed)
            rows.append((batch, op["attrs"]["layer"], f"{op['kind']} {op['attrs']['weight_shape']}", t_float, t_packed))
        with evaluating(float_net):
            t_float = median_time(lambda x=x: float_net(x), args.repeats)
        t_packed = median_time(lambda x=x: model(x), args.repeats)
        rows.append((batch, "end to end", f"{args.arch} width {args.width}: fp in PyTorch vs {args.method} packed", t_float, t_packed))
        binary_float = sum(v[0] for v in values.values())
        binary_packed = sum(v[1] for v in values.values())
        rows.append((batch, "binary layers together", f"{len(values)} layers", binary_float, binary_packed))

    lines = [
        f"`{shlex.join(['python', 'scripts/bench_infer.py', *sys.argv[1:]])}` — "
        f"{date.today()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"popcount {backend()}",
        "",
        "| batch | layer | what | float32 PyTorch (ms) | packed runtime (ms) | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for batch, name, what, t_float, t_packed in rows:
        speed_up = f"{t_float / t_packed:.2f}x" if t_packed > 0 else "-"  # a tiny layer can time at 0 s
        lines.append(f"| {batch} | {name} | {what} | {1000 * t_float:.2f} | {1000 * t_packed:.2f} | {speed_up} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
