"""Value ranges of the numeric keys that torch, Lightning or the schedules would take without a word (a zero width
trains 1-channel layers, a negative t_clip cancels every gradient) or reject with a traceback that does not name
the key (a negative lr, seed -1, zero accumulation). Checked once, before anything is built; keys a run's config
does not have (t_clip outside method=ste, betas outside Adam) are skipped. Keys whose own module checks them
(dataset.subset, protocol.bn_bits, ...) are not repeated here."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from binexp.errors import ConfigError


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # inf trained as given


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _number(v) and v >= low), f"a number >= {low:g}"


def _above(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _number(v) and v > low), f"a number > {low:g}"


def _or_null(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"null or {text}"


_COUNT = ((lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1), "a whole number >= 1")
_CLASSES = ((lambda v: _COUNT[0](v) and v >= 2), "a whole number >= 2")
_SEED = ((lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32)),
         "null or a whole number in 0..4294967295")
_BETAS = ((lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v)),
          "two numbers in [0, 1)")
_SHARE = ((lambda v: v is None or (_number(v) and 0 < v <= 1)), "null or a share in (0, 1]")
_COUNTS = ((lambda v: isinstance(v, list) and len(v) > 0 and all(_COUNT[0](c) for c in v)), "whole numbers >= 1")
_FRACTIONS = ((lambda v: isinstance(v, list) and all(_number(f) and 0 < f < 1 for f in v) and v == sorted(set(v))),
              "increasing fractions of training in (0, 1)")
_LIMIT = ((lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
           or (isinstance(v, float) and 0 <= v <= 1)), "a count of batches >= 0 or a share in [0.0, 1.0]")


def _batches_or_share(allowed: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
            or (isinstance(v, float) and 0 < v <= 1)), allowed


# a run that trains on no batch would write the metrics of its random weights as results
_TRAIN_LIMIT = _batches_or_share("a count of batches >= 1 or a share in (0.0, 1.0]")
_INTERVAL = _batches_or_share("a count of training batches >= 1 or a share of an epoch in (0.0, 1.0]")
_MAX_STEPS = ((lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1)),
              "-1 (no limit) or a whole number >= 1")
_SANITY_STEPS = ((lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= -1),
                 "-1 (every validation batch) or a whole number >= 0")
# the data arrives in float32 and the latent weights, slopes and schedule buffers stay float32 (mixed precision
# computes in half where it is safe); a *-true precision casts the network itself, and the first layer then
# refuses float32 inputs, and ABR's slope growth rounds away in bfloat16
PRECISIONS = ("32-true", "32", 32, "16-mixed", "16", 16, "bf16-mixed", "bf16")
_PRECISION = ((lambda v: v in PRECISIONS), f"one of {', '.join(dict.fromkeys(str(p) for p in PRECISIONS))} (mixed precision keeps "
              f"float32 weights; a *-true half or double precision would cast them)")
_MOMENTUM = ((lambda v: _number(v) and 0 <= v < 1), "a number in [0, 1)")
_DEVICES = ((lambda v: (isinstance(v, int) and not isinstance(v, bool) and (v >= 1 or v == -1))
                       or (isinstance(v, list) and len(v) > 0 and all(isinstance(d, int) and not isinstance(d, bool)
                                                                      and d >= 0 for d in v))
                       or (isinstance(v, str) and (v == "auto" or re.fullmatch(r"-1|\d+(\s*,\s*\d+)*\s*,?", v.strip()) is not None))),
             "a count >= 1, -1 (all), a list of device ids >= 0 (or a string of them: \"0,1\"), or auto")
_ACCELERATOR = ((lambda v: v in ("auto", "cpu", "gpu", "cuda", "mps")), "one of auto, cpu, gpu, cuda, mps")
_PROFILER = ((lambda v: v is None or v in ("simple", "advanced", "pytorch") or (isinstance(v, dict) and "_target_" in v)),
             "null, simple, advanced, pytorch, or a node with a _target_ (a profiler class)")
_DETERMINISTIC = ((lambda v: v is None or isinstance(v, bool) or v == "warn"), "true, false, warn or null")

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _SEED,
    "trainer.max_epochs": _COUNT,
    "trainer.max_steps": _MAX_STEPS,
    "trainer.accelerator": _ACCELERATOR,
    "trainer.devices": _DEVICES,
    "trainer.num_nodes": _COUNT,
    "trainer.accumulate_grad_batches": _COUNT,
    "trainer.log_every_n_steps": _COUNT,
    "trainer.gradient_clip_val": _or_null(_at_least(0)),
    "trainer.limit_train_batches": _TRAIN_LIMIT,
    "trainer.limit_val_batches": _LIMIT,
    "trainer.limit_test_batches": _LIMIT,
    "trainer.val_check_interval": _INTERVAL,
    "trainer.check_val_every_n_epoch": _or_null(_COUNT),
    "trainer.num_sanity_val_steps": _SANITY_STEPS,
    "trainer.deterministic": _DETERMINISTIC,
    # Lightning's debugging run saves no checkpoint and its metrics.json would read as a finished run
    "trainer.fast_dev_run": ((lambda v: v is False or v == 0), "false (for a short run: debug=smoke)"),
    "trainer.precision": _PRECISION,
    "trainer.profiler": _PROFILER,
    "lr_scheduler.frequency": _COUNT,
    "lr_scheduler.interval": ((lambda v: v in ("step", "epoch")), "step or epoch"),
    "architecture.width": _above(0),
    "architecture.channels": _COUNTS,
    "architecture.hidden": _COUNT,
    "architecture.stem_channels": _COUNT,
    "architecture.growth": _COUNT,
    "method.t_clip": _or_null(_at_least(0)),
    "optimizer.lr": _at_least(0),
    "optimizer.momentum": _MOMENTUM,
    "optimizer.weight_decay": _at_least(0),
    "optimizer.eps": _at_least(0),
    "optimizer.betas": _BETAS,
    "optimizer.bias_lr_mult": _at_least(0),
    "lr_scheduler.scheduler.gamma": _above(0),
    "lr_scheduler.scheduler.power": _at_least(0),  # caffe_inv's; a negative one grows the lr
    "lr_scheduler.scheduler.T_max": _COUNT,  # cosine's
    "lr_scheduler.scheduler.eta_min": _at_least(0),
    "lr_scheduler.scheduler.total_epochs": _COUNT,  # multistep's
    "lr_scheduler.scheduler.at": _FRACTIONS,  # multistep's milestones
    "schedule.lambda1": _at_least(0),
    "schedule.lambda2": _at_least(0),
    "dataset.augment.crop_padding": _at_least(0),
    "dataset.num_classes": _CLASSES,  # the synthetic dataset's
    "dataset.num_train": _COUNT,
    "dataset.num_test": _COUNT,
    "dataset.noise": _at_least(0),
    "protocol.finetune_epochs": _at_least(0),
    "protocol.finetune_lr": _at_least(0),
    "protocol.binary_weights_epochs": _at_least(0),
    "protocol.binary_weights_lr": _at_least(0),
    "protocol.bn_batches": _at_least(0),
    "callbacks.binarization.stop_on_collapse": _SHARE,
    "callbacks.binarization.every_n_epochs": _or_null(_COUNT),  # -1 measured every epoch (x % -1 == 0)
    "callbacks.binarization.every_n_steps": _or_null(_COUNT),
    "callbacks.finite_loss.check_every_n_steps": _COUNT,
}


def check_ranges(cfg: DictConfig, only: list[str] | None = None) -> None:
    """A ConfigError naming the first key whose value is outside its range, and the range. `only`: the rules of
    these keys alone (eval's run_overrides: a run saved before a rule existed is not refused for a key it keeps)."""
    if only is not None:
        _check_rules(cfg, [k for k in RULES if k in only])
        return
    _check_rules(cfg, list(RULES))
    _check_scheduler_counts_epochs(cfg)
    _check_lr_scheduler_steps(cfg)
    _check_last_checkpoint_place(cfg)
    _check_object_entries(cfg)
    _check_checkpoint_rankings(cfg)
    _check_epoch_counts(cfg)
    _check_dataset_seed(cfg)
    if OmegaConf.select(cfg, "optimizer.nesterov", default=False) and not OmegaConf.select(cfg, "optimizer.momentum", default=0) > 0:
        raise ConfigError(f"optimizer.nesterov=true needs optimizer.momentum > 0 (it is "
                          f"{OmegaConf.select(cfg, 'optimizer.momentum', default=0)!r})")


def _check_rules(cfg: DictConfig, keys: list[str]) -> None:
    for key in keys:
        check, allowed = RULES[key]
        node = OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False)
        if isinstance(node, str) and node == "<absent>":
            continue
        value = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
        if not check(value):
            raise ConfigError(f"{key}={value!r}: allowed is {allowed}")


def _check_scheduler_counts_epochs(cfg: DictConfig) -> None:
    """An lr scheduler whose length follows trainer.max_epochs (multistep's total_epochs, cosine's T_max) counts
    the times it is stepped: stepped per optimizer step (`interval=step`) or every few epochs (`frequency`), it
    would reach its end early (cosine restarting, multistep dropping in the first epoch) or never."""
    node = OmegaConf.select(cfg, "lr_scheduler", default=None)
    if not OmegaConf.is_dict(node) or not OmegaConf.is_dict(node.get("scheduler")):
        return
    spec = OmegaConf.to_container(node.scheduler, resolve=False)
    follows = [k for k, v in spec.items() if isinstance(v, str) and "trainer.max_epochs" in v]
    interval, frequency = node.get("interval", "epoch"), node.get("frequency", 1)
    if follows and (interval != "epoch" or frequency != 1):
        raise ConfigError(
            f"lr_scheduler.interval={interval} lr_scheduler.frequency={frequency}: lr_scheduler.scheduler.{follows[0]} "
            f"counts epochs (it is trainer.max_epochs), so the scheduler must step once per epoch (interval=epoch, "
            f"frequency=1); to step it otherwise set {follows[0]} in those steps")


# the schedulers that multiply the lr by gamma at each of their steps
DECAYING = ("torch.optim.lr_scheduler.ExponentialLR", "torch.optim.lr_scheduler.StepLR",
            "torch.optim.lr_scheduler.MultiStepLR", "binexp.optim.MultiStepAt")


def _check_lr_scheduler_steps(cfg: DictConfig) -> None:
    """An lr scheduler that would grow the lr where it should decay it, merge two of its drops into one, or never
    step within the run."""
    node = OmegaConf.select(cfg, "lr_scheduler", default=None)
    if not OmegaConf.is_dict(node) or not OmegaConf.is_dict(node.get("scheduler")):
        return
    scheduler = node.scheduler
    target, gamma = scheduler.get("_target_"), scheduler.get("gamma")
    if target in DECAYING and _number(gamma) and gamma > 1:
        raise ConfigError(f"lr_scheduler.scheduler.gamma={gamma}: {target} multiplies the lr by gamma at each of its "
                          f"steps, so above 1 the lr grows; allowed is a number in (0, 1]")
    at, total = scheduler.get("at"), scheduler.get("total_epochs")
    fractions = OmegaConf.to_container(at) if OmegaConf.is_config(at) else at  # deleted: build names it
    if target == "binexp.optim.MultiStepAt" and _FRACTIONS[0](fractions) and _COUNT[0](total):
        from binexp.optim import drop_epochs

        epochs_of_drops = drop_epochs(total, fractions)
        if len(epochs_of_drops) < len(fractions):
            raise ConfigError(f"lr_scheduler.scheduler.at={fractions} with total_epochs={total}: {len(fractions)} drops "
                              f"fall on the epochs {epochs_of_drops}, so two of them would be one; give fractions that "
                              f"fall on distinct epochs")
    frequency, epochs = node.get("frequency", 1), OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if node.get("interval") == "epoch" and _COUNT[0](frequency) and _COUNT[0](epochs) and frequency > epochs:
        raise ConfigError(f"lr_scheduler.frequency={frequency}: the scheduler steps every {frequency} epochs and the "
                          f"run trains {epochs} (trainer.max_epochs), so it would never step; allowed is a whole "
                          f"number in 1..{epochs}")


LAST_CHECKPOINT_DIR = "${run_dir}/checkpoints"


def _check_last_checkpoint_place(cfg: DictConfig) -> None:
    """last.ckpt is where a stop saves, and where `resume=`, a sweep's re-run, `eval ckpt=last` and `export` look
    for it: saved under another name or folder, a run could not be continued or evaluated."""
    node = OmegaConf.select(cfg, "callbacks.last_checkpoint", default=None)
    if not OmegaConf.is_dict(node):
        return
    raw = OmegaConf.to_container(node, resolve=False)
    if raw.get("filename", "last") != "last":
        raise ConfigError(f"callbacks.last_checkpoint.filename={raw['filename']!r}: allowed is last (resume, a sweep's "
                          f"re-run, eval and export read checkpoints/last.ckpt; best_checkpoint's name is free)")
    dirpath = raw.get("dirpath", LAST_CHECKPOINT_DIR)
    if dirpath != LAST_CHECKPOINT_DIR and str(dirpath) != f"{_run_dir(cfg)}/checkpoints":  # a DDP rank's is resolved
        raise ConfigError(f"callbacks.last_checkpoint.dirpath={raw['dirpath']!r}: allowed is {LAST_CHECKPOINT_DIR} (resume, "
                          f"a sweep's re-run, eval and export read checkpoints/last.ckpt of the run directory)")


def _check_object_entries(cfg: DictConfig) -> None:
    """Each entry of the callbacks and logger dicts is an object to build, or null to leave it out."""
    for group in ("callbacks", "logger"):
        node = OmegaConf.select(cfg, group, default=None)
        if not OmegaConf.is_dict(node):
            continue
        for name, entry in node.items():
            if entry is not None and not OmegaConf.is_dict(entry):  # a node without its _target_: build names it
                shown = OmegaConf.to_container(entry) if OmegaConf.is_config(entry) else entry
                raise ConfigError(f"{group}.{name}={shown!r}: allowed is null (left out) or a node with a _target_ (the "
                                  f"class to build)")


def _check_checkpoint_rankings(cfg: DictConfig) -> None:
    """A checkpoint callback ranking by a metric no epoch logs failed after the first epoch had trained."""
    from binexp.module import EPOCH_METRICS

    callbacks = OmegaConf.select(cfg, "callbacks", default=None)
    if not OmegaConf.is_dict(callbacks):
        return
    for name, node in callbacks.items():
        if not OmegaConf.is_dict(node) or not str(node.get("_target_", "")).endswith(".ModelCheckpoint"):
            continue
        monitor, mode = node.get("monitor"), node.get("mode", "min")
        if monitor is not None and monitor not in (*EPOCH_METRICS, "epoch", "step"):
            raise ConfigError(f"callbacks.{name}.monitor={monitor!r}: allowed are null (keep the latest), the metrics "
                              f"every epoch logs ({', '.join(EPOCH_METRICS)}) and Lightning's epoch and step")
        if mode not in ("min", "max"):
            raise ConfigError(f"callbacks.{name}.mode={mode!r}: allowed are max (val/acc, train/acc, the latest epoch "
                              f"or step) and min (the losses)")


def _check_epoch_counts(cfg: DictConfig) -> None:
    """Counts of epochs beyond the run's length: validating every n epochs never validates (no val/* metrics, no best
    checkpoint); a minimum of epochs is not trained."""
    every, epochs = (OmegaConf.select(cfg, f"trainer.{k}", default=None) for k in ("check_val_every_n_epoch", "max_epochs"))
    if _COUNT[0](every) and _COUNT[0](epochs) and every > epochs:
        raise ConfigError(f"trainer.check_val_every_n_epoch={every}: the run trains {epochs} epochs "
                          f"(trainer.max_epochs), so it would never validate; allowed is null or a whole number in "
                          f"1..{epochs}")
    least = OmegaConf.select(cfg, "trainer.min_epochs", default=None)  # Lightning's, added with +: max_epochs wins
    whole = isinstance(least, int) and not isinstance(least, bool)
    if least is not None and _COUNT[0](epochs) and not (whole and 0 <= least <= epochs):
        raise ConfigError(f"trainer.min_epochs={least!r}: the run trains {epochs} epochs (trainer.max_epochs), which "
                          f"Lightning keeps to; allowed is a whole number in 0..{epochs}")


def _run_dir(cfg: DictConfig) -> str | None:
    try:
        return OmegaConf.select(cfg, "run_dir", default=None)
    except Exception:  # Hydra's output folder, composed outside a running Hydra (a sweep's check)
        return None


def _check_dataset_seed(cfg: DictConfig) -> None:
    """dataset.seed follows `seed`, which a run records (a null one drawn and written into its config); a null of
    its own drew a hold-out and batch order that no record kept, so the same config trained differently."""
    node = OmegaConf.select(cfg, "dataset", default=None)
    if not OmegaConf.is_dict(node) or "seed" not in node:
        return
    raw = OmegaConf.to_container(node, resolve=False).get("seed")
    if raw != "${seed}" and (raw is None or not _SEED[0](raw)):
        raise ConfigError(f"dataset.seed={raw!r}: allowed is ${{seed}} (the run's seed, the default) or a whole number in "
                          f"0..4294967295; for a drawn seed set seed=null, which the run records")
