"""Training-step overhead of binexp's Lightning loop against a plain PyTorch loop.

Both loops train the same network (built by binexp from the same config) on the same device-resident
batches (DeviceBatches), with the same optimizer and autocast precision; the Lightning side uses binexp's
real module and its two guards (no progress bar, no checkpoints, no logger, so it measures the loop).
It reports images/s of each and the ratio of step times (goal: <= 1.10). `--whole-run` adds a third loop, the
trainer of a `binexp train trainer=cluster` run: every callback of the config (checkpoints, curves, schedule, the
log lines, the learning-rate monitor) and its TensorBoard logger, under a scratch run directory.

    python scripts/bench_train.py --arch cifar_quick vgg_small --batch 256 --steps 300 --precision bf16
    python scripts/bench_train.py --arch cifar_quick --steps 20 --device cpu --precision 32   # a quick check
    python scripts/bench_train.py --arch vgg_small --find-syncs   # (GPU) also list where the loop waits for the GPU
    python scripts/bench_train.py --arch cifar_quick vgg_small --whole-run   # also a whole run's trainer
    python scripts/bench_train.py --arch densenet21 --batch 128 --override method=ste   # a binary network
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
import warnings
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from binexp.config import compose_train
from binexp.train import build_data, build_method, build_module


def compose_cfg(arch: str, batch: int, dataset: str, samples: int, data_root: str | None, extra: list[str] = ()):
    overrides = [f"architecture={arch}", *extra, f"dataset={dataset}", f"dataset.batch_size={batch}"]
    if dataset == "synthetic":
        overrides += ["dataset.image_shape=[3,32,32]", f"dataset.num_train={samples}", "dataset.val_size=256"]
    elif data_root:
        overrides.append(f"dataset.root={data_root}")
    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.run_dir = "/tmp/binexp-bench"
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_step(starts: list[float]) -> float:
    """The median gap between consecutive step starts: on a shared or noisy host, bursts move the mean, not this."""
    return statistics.median(b - a for a, b in zip(starts, starts[1:]))


def per_step(starts: list[float], end: float, steps: int) -> tuple[float, float]:
    """(mean, median) step time of the timed steps; a loop that stopped short would understate the mean."""
    if len(starts) != steps:
        raise SystemExit(f"bench_train: {len(starts)} steps were timed, not the {steps} asked")
    return (end - starts[0]) / steps, median_step(starts)


def plain_loop(cfg, device: torch.device, steps: int, warmup: int, precision: str) -> tuple[float, float]:
    dm = build_data(cfg)
    method = build_method(cfg)
    module = build_module(cfg, dm, method)
    net = module.net.to(device)
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    loader = dm.batches("train", train=True, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    done, starts = 0, []
    net.train()
    while done < steps + warmup:
        for x, y in loader:
            if done == warmup:
                sync(device)
            if done >= warmup:
                starts.append(time.perf_counter())
            with autocast:
                loss = F.cross_entropy(net(x), y)
                extra = method.regularization(net)  # the method's own work each step, as binexp's module does it
                if extra is not None:
                    loss = loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_optimizer_step(net)
            done += 1
            if done == steps + warmup:
                break
        loader.set_epoch(loader.epoch + 1)
    sync(device)
    return per_step(starts, time.perf_counter(), steps)


class StepTimer(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.end, self.starts = warmup, None, []  # starts: each timed step's start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and not self.starts:
            sync(pl_module.device)
        if trainer.global_step >= self.warmup:
            self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.end = time.perf_counter()


class SyncWatch(pl.Callback):
    """From the step after `warmup` on, torch warns at every operation that makes the host wait for the GPU."""

    def __init__(self, warmup: int):
        self.warmup = warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup + 1:  # one step after StepTimer's own synchronize
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer, pl_module):
        torch.cuda.set_sync_debug_mode("default")


def find_syncs(cfg, device: torch.device, steps: int, warmup: int, precision: str) -> list[str]:
    """Where the Lightning loop waits for the GPU: each distinct call stack of a synchronizing operation, with the
    number of times it ran in `steps` steps. A step that waits cannot overlap its Python work with the GPU's."""
    stacks: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack(limit=24)[:-1] if not f.filename.endswith("warnings.py")]
            stack = "".join(traceback.format_list(frames[-14:]))
            stacks[stack] = stacks.get(stack, 0) + 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        lightning_loop(cfg, device, steps, warmup, precision, [SyncWatch(warmup)])
    return [f"{n} times in {steps - 1} steps:\n{stack}" for stack, n in sorted(stacks.items(), key=lambda kv: -kv[1])]


def lightning_loop(cfg, device: torch.device, steps: int, warmup: int, precision: str,
                   extra_callbacks: list[pl.Callback] = ()) -> tuple[float, float]:
    from binexp.callbacks.guards import FiniteLossGuard, GracefulStop
    from binexp.profiling import NoProfiler

    dm = build_data(cfg)
    module = build_module(cfg, dm, build_method(cfg))
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, max_steps=steps + warmup, max_epochs=-1,
        precision="bf16-mixed" if precision == "bf16" else "32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[timer, *extra_callbacks, FiniteLossGuard(), GracefulStop()], log_every_n_steps=50, use_distributed_sampler=False,
        profiler=NoProfiler(),  # as binexp's own trainer
    )
    trainer.fit(module, datamodule=dm)
    return per_step(timer.starts, timer.end, steps)


def whole_run_loop(cfg, device: torch.device, steps: int, warmup: int, precision: str) -> tuple[float, float]:
    """The step time of `binexp train`'s own trainer (build_trainer, build_callbacks) on the same batches; `cfg` (a
    composition of its own) is set to the device, precision and step count here."""
    import shutil

    from binexp.train import build_callbacks, build_schedule, build_trainer

    run_dir = Path("/tmp/binexp-bench-run")
    shutil.rmtree(run_dir, ignore_errors=True)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
        cfg.trainer.update(accelerator=device.type, devices=1, max_steps=steps + warmup, num_sanity_val_steps=0,
                           precision="bf16-mixed" if precision == "bf16" else "32-true")
    dm = build_data(cfg)
    with open_dict(cfg):  # enough epochs for the steps (cifar_quick's recipe: 10 epochs, 390 steps on 10 000 images)
        per_epoch = len(dm.batches("train", train=True))
        cfg.trainer.max_epochs = max(int(cfg.trainer.max_epochs), -(-(steps + warmup) // per_epoch))
    method = build_method(cfg)
    schedule = build_schedule(cfg, method)
    module = build_module(cfg, dm, method)
    timer = StepTimer(warmup)
    trainer = build_trainer(cfg, [timer, *build_callbacks(cfg, schedule, method, dm)], run_dir)
    trainer.fit(module, datamodule=dm)
    return per_step(timer.starts, timer.end, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["cifar_quick", "vgg_small"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--precision", choices=["bf16", "32"], default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset", default="synthetic", choices=["synthetic", "cifar10"])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--override", nargs="*", default=[],
                        help="more Hydra overrides for both loops' config, e.g. method=ste (default: the float net)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--whole-run", action="store_true",
                        help="also time the trainer of a whole `binexp train trainer=cluster` run (all its callbacks)")
    parser.add_argument("--find-syncs", action="store_true",
                        help="(GPU) after timing, list the call stacks where the Lightning loop waits for the GPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfgs = {arch: compose_cfg(arch, args.batch, args.dataset, max(args.batch * 40, 2048), args.data_root,
                               args.override)
            for arch in args.arch}
    rows = []
    for arch, cfg in cfgs.items():
        plain, plain_median = plain_loop(cfg, device, args.steps, args.warmup, args.precision)
        lightning, lightning_median = lightning_loop(cfg, device, args.steps, args.warmup, args.precision)
        whole = {}
        if args.whole_run:
            run_cfg = compose_cfg(arch, args.batch, args.dataset, max(args.batch * 40, 2048), args.data_root,
                                  [*args.override, "trainer=cluster"])
            run_mean, run_median = whole_run_loop(run_cfg, device, args.steps, args.warmup, args.precision)
            whole = {"run_ms": run_mean * 1e3, "run_ratio": run_mean / plain, "run_median_ms": run_median * 1e3}
        rows.append({
            "arch": arch, "overrides": args.override, "batch": args.batch, "precision": args.precision, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "plain_ms": plain * 1e3, "lightning_ms": lightning * 1e3, "ratio": lightning / plain,
            "plain_median_ms": plain_median * 1e3, "lightning_median_ms": lightning_median * 1e3,
            "plain_img_s": args.batch / plain, "lightning_img_s": args.batch / lightning, **whole,
        })
    print(f"{'arch':12} {'plain ms':>9} {'lightning ms':>13} {'ratio':>6} {'plain img/s':>12} {'lightning img/s':>16}"
          f" {'median plain / lightning ms':>28}")
    for r in rows:
        print(f"{r['arch']:12} {r['plain_ms']:9.2f} {r['lightning_ms']:13.2f} {r['ratio']:6.3f} "
              f"{r['plain_img_s']:12.0f} {r['lightning_img_s']:16.0f}"
              f" {r['plain_median_ms']:13.3f} / {r['lightning_median_ms']:.3f}")
    if args.whole_run:
        print(f"\n{'arch':12} {'whole run ms':>13} {'ratio':>6} {'median ms':>10}   (binexp train's trainer and callbacks)")
        for r in rows:
            print(f"{r['arch']:12} {r['run_ms']:13.2f} {r['run_ratio']:6.3f} {r['run_median_ms']:10.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    if args.find_syncs and device.type == "cuda":
        for arch, cfg in cfgs.items():
            syncs = find_syncs(cfg, device, 20, args.warmup, args.precision)
            print(f"\n{arch}: {len(syncs)} places where the Lightning loop waits for the GPU")
            print("\n".join(syncs))


if __name__ == "__main__":
    main()
