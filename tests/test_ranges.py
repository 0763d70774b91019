"""binexp.ranges: each rule refuses a value outside its range naming the key and the range, takes one inside it,
and names a key that the shipped configs have (a misspelt rule would never apply)."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from binexp.errors import ConfigError
from binexp.ranges import RULES, check_ranges
from tests.conftest import SMOKE, compose_train

# (outside, inside) per key
CASES = {
    "seed": (-1, 0),
    "trainer.max_epochs": (0, 1),
    "trainer.max_steps": (0, -1),
    "trainer.accelerator": ("tpu", "cpu"),  # binexp's install has no torch_xla
    "trainer.devices": (True, "0, 1"),  # true was taken as one device
    "trainer.num_nodes": (0, 1),
    "trainer.accumulate_grad_batches": (0, 1),
    "trainer.log_every_n_steps": (0, 1),
    "trainer.gradient_clip_val": (-0.1, None),
    "trainer.limit_train_batches": (0, 1),
    "trainer.limit_val_batches": (-1, 0),
    "trainer.limit_test_batches": (2.0, 5),
    "trainer.val_check_interval": (0, 0.5),
    "trainer.check_val_every_n_epoch": (0, None),
    "trainer.num_sanity_val_steps": (-5, -1),
    "trainer.deterministic": ("maybe", "warn"),
    "trainer.fast_dev_run": (True, False),
    "trainer.precision": ("bf16-true", "bf16-mixed"),
    "trainer.profiler": (-1, "simple"),  # an AttributeError inside Lightning
    "lr_scheduler.frequency": (0, 1),
    "lr_scheduler.interval": ("batch", "epoch"),
    "architecture.width": (0, 0.125),
    "architecture.channels": ([16, 0], [16, 32]),
    "architecture.hidden": (0, 1),
    "architecture.stem_channels": (0, 1),
    "architecture.growth": (0, 1),
    "method.t_clip": (-0.5, None),
    "optimizer.lr": (-0.1, 0),
    "optimizer.momentum": (1.0, 0.9),
    "lr_scheduler.scheduler.power": (-0.75, 0),
    "lr_scheduler.scheduler.T_max": (0, 1),
    "lr_scheduler.scheduler.eta_min": (-1e-5, 0.0),
    "lr_scheduler.scheduler.total_epochs": (0, 1),
    "optimizer.weight_decay": (-1e-4, 0),
    "optimizer.eps": (-1e-8, 1e-8),
    "optimizer.betas": ([0.9, 1.0], [0.0, 0.999]),
    "optimizer.bias_lr_mult": (-2, 0),
    "lr_scheduler.scheduler.gamma": (0, 0.1),
    "lr_scheduler.scheduler.at": ([0.5, 1.0], [0.5, 0.75]),
    "schedule.lambda1": (-1, 0),
    "schedule.lambda2": (-0.1, 1e-4),
    "dataset.augment.crop_padding": (-4, 0),
    "dataset.num_classes": (1, 2),
    "dataset.num_train": (0, 1),
    "dataset.num_test": (0, 1),
    "dataset.noise": (-0.5, 0),
    "protocol.finetune_epochs": (-1, 0),
    "protocol.finetune_lr": (-0.01, 0.01),
    "protocol.binary_weights_epochs": (-1, 0),
    "protocol.binary_weights_lr": (-1, 0.001),
    "protocol.bn_batches": (-1, 0),
    "callbacks.binarization.stop_on_collapse": (0, 1.0),
    "callbacks.binarization.every_n_epochs": (-1, None),
    "callbacks.binarization.every_n_steps": (0, 5),
    "callbacks.finite_loss.check_every_n_steps": (0, 1),
}


def _config(key: str, value) -> OmegaConf:
    cfg = OmegaConf.create()
    OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_every_rule_has_a_case():
    assert sorted(CASES) == sorted(RULES)


@pytest.mark.parametrize("key", sorted(RULES))
def test_a_value_outside_a_rule_is_refused_naming_the_key_and_the_range(key):
    outside, inside = CASES[key]
    with pytest.raises(ConfigError) as err:
        check_ranges(_config(key, outside))
    assert str(err.value) == f"{key}={outside!r}: allowed is {RULES[key][1]}"
    check_ranges(_config(key, inside))


def test_every_rule_names_a_key_of_the_shipped_configs():
    configs = [SMOKE + ["method=ste"], SMOKE + ["method=abr", "optimizer=adam", "lr_scheduler=multistep"],
               SMOKE + ["lr_scheduler=cosine"], SMOKE + ["lr_scheduler=caffe_inv"],
               ["dataset=synthetic", "architecture=densenet13", "lr_scheduler=exponential"],
               ["experiment=abr_sec44_cifar10"], ["dataset=synthetic", "architecture=resnet18"]]
    present = set()
    for overrides in configs:
        cfg = compose_train(overrides)
        present |= {k for k in RULES if OmegaConf.select(cfg, k, default="<absent>", throw_on_missing=False) != "<absent>"}
    assert sorted(set(RULES) - present) == []


def test_nesterov_needs_momentum():
    with pytest.raises(ConfigError, match=r"^optimizer.nesterov=true needs optimizer.momentum > 0 \(it is 0\.0\)$"):
        check_ranges(compose_train(SMOKE + ["optimizer.nesterov=true", "optimizer.momentum=0"]))
    check_ranges(compose_train(SMOKE + ["optimizer.nesterov=true", "optimizer.momentum=0.9"]))


@pytest.mark.parametrize("lr_scheduler,key", [("cosine", "T_max"), ("multistep", "total_epochs")])
@pytest.mark.parametrize("stepping", [["lr_scheduler.interval=step"], ["lr_scheduler.frequency=2"]])
def test_a_scheduler_counting_epochs_must_step_once_per_epoch(lr_scheduler, key, stepping):
    cfg = compose_train(SMOKE + [f"lr_scheduler={lr_scheduler}", *stepping])
    with pytest.raises(ConfigError, match=rf"lr_scheduler.scheduler.{key} counts epochs \(it is trainer.max_epochs\), "
                                          r"so the scheduler must step once per epoch"):
        check_ranges(cfg)
    check_ranges(compose_train(SMOKE + [f"lr_scheduler={lr_scheduler}", f"lr_scheduler.scheduler.{key}=40", *stepping]))


def test_last_ckpt_stays_where_resume_eval_and_export_read_it(tmp_path):
    """Saved as latest.ckpt or elsewhere, a stop's checkpoint was one that resume, a sweep's re-run and eval never
    found."""
    with pytest.raises(ConfigError, match=r"^callbacks.last_checkpoint.filename='latest': allowed is last \(resume, "):
        check_ranges(compose_train(SMOKE + ["callbacks.last_checkpoint.filename=latest"]))
    with pytest.raises(ConfigError, match=r"^callbacks.last_checkpoint.dirpath='/elsewhere': allowed is "
                                          r"\$\{run_dir\}/checkpoints \(resume, "):
        check_ranges(compose_train(SMOKE + ["callbacks.last_checkpoint.dirpath=/elsewhere"]))
    check_ranges(compose_train(SMOKE + ["callbacks.last_checkpoint=null"]))
    resolved = compose_train(SMOKE, run_dir=tmp_path)  # as a DDP rank gets it
    check_ranges(OmegaConf.create(OmegaConf.to_container(resolved, resolve=True)))


@pytest.mark.parametrize(("key", "value"), [("optimizer.lr", float("inf")), ("protocol.finetune_lr", float("inf")),
                                            ("lr_scheduler.scheduler.at", [0.5, 0.2]),  # two drops in one
                                            ("lr_scheduler.scheduler.at", [0.5, 0.5])])
def test_infinite_and_unordered_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}="):
        check_ranges(_config(key, value))


@pytest.mark.parametrize("value", ["null", "-1"])
def test_the_datasets_own_seed_is_a_recorded_one(value):
    """dataset.seed=null drew a hold-out and batch order no record kept: the same config trained to 0.2129 and 0.1914."""
    with pytest.raises(ConfigError, match=rf"^dataset.seed={'None' if value == 'null' else value}: allowed is "
                                          r"\$\{seed\} \(the run's seed, the default\) or a whole number"):
        check_ranges(compose_train(SMOKE + [f"dataset.seed={value}"]))
    check_ranges(compose_train(SMOKE + ["dataset.seed=7"]))
    check_ranges(compose_train(SMOKE + ["seed=null"]))


@pytest.mark.parametrize(("lr_scheduler", "value"), [("exponential", 100), ("multistep", 1.5)])
def test_a_decaying_scheduler_does_not_grow_the_lr(lr_scheduler, value):
    with pytest.raises(ConfigError, match=rf"^lr_scheduler.scheduler.gamma={value}: \S+ multiplies the lr by gamma at "
                                          r"each of its steps, so above 1 the lr grows; allowed is a number in \(0, 1\]$"):
        check_ranges(compose_train(SMOKE + [f"lr_scheduler={lr_scheduler}", f"lr_scheduler.scheduler.gamma={value}"]))
    check_ranges(compose_train(SMOKE + [f"lr_scheduler={lr_scheduler}", "lr_scheduler.scheduler.gamma=1"]))
    check_ranges(compose_train(SMOKE + ["lr_scheduler=caffe_inv", f"lr_scheduler.scheduler.gamma={value}"]))  # a rate


def test_multistep_drops_that_round_to_one_epoch_are_refused():
    """at=[0.2, 0.5] over 2 epochs dropped the lr once (x0.1) where two drops (x0.01) were asked for."""
    merged = SMOKE + ["lr_scheduler=multistep", "lr_scheduler.scheduler.at=[0.2,0.5]", "trainer.max_epochs=2"]
    with pytest.raises(ConfigError, match=r"^lr_scheduler.scheduler.at=\[0.2, 0.5\] with total_epochs=2: 2 drops fall on "
                                          r"the epochs \[1\], so two of them would be one; give fractions that fall on "
                                          r"distinct epochs$"):
        check_ranges(compose_train(merged))
    check_ranges(compose_train(merged[:-1] + ["trainer.max_epochs=10"]))
    check_ranges(compose_train(["dataset=synthetic", "lr_scheduler=multistep", "~lr_scheduler.scheduler.at"]))  # build's


def test_an_epoch_scheduler_must_step_within_the_run():
    with pytest.raises(ConfigError, match=r"^lr_scheduler.frequency=3: the scheduler steps every 3 epochs and the run "
                                          r"trains 2 \(trainer.max_epochs\), so it would never step; allowed is a whole "
                                          r"number in 1..2$"):
        check_ranges(compose_train(SMOKE + ["lr_scheduler=exponential", "lr_scheduler.frequency=3", "trainer.max_epochs=2"]))
    check_ranges(compose_train(SMOKE + ["lr_scheduler=exponential", "lr_scheduler.frequency=2", "trainer.max_epochs=2"]))


def test_a_checkpoint_ranks_by_a_metric_every_epoch_logs():
    """monitor=nope failed after the first epoch had trained, with Lightning's list of the metrics it found."""
    with pytest.raises(ConfigError, match=r"^callbacks.best_checkpoint.monitor='val/accuracy': allowed are null \(keep "
                                          r"the latest\), the metrics every epoch logs \(val/acc, val/loss, train/acc, "
                                          r"train/loss, train/loss_epoch\) and Lightning's epoch and step$"):
        check_ranges(compose_train(SMOKE + ["callbacks.best_checkpoint.monitor=val/accuracy"]))
    with pytest.raises(ConfigError, match=r"^callbacks.best_checkpoint.mode='maximum': allowed are max "):
        check_ranges(compose_train(SMOKE + ["callbacks.best_checkpoint.mode=maximum"]))
    for monitor in ("val/loss", "train/loss_epoch", "step", "null"):
        check_ranges(compose_train(SMOKE + [f"callbacks.best_checkpoint.monitor={monitor}"]))


def test_a_run_validates_at_least_once():
    """check_val_every_n_epoch above max_epochs trained without val/* metrics or a best checkpoint, silently."""
    with pytest.raises(ConfigError, match=r"^trainer.check_val_every_n_epoch=3: the run trains 2 epochs "
                                          r"\(trainer.max_epochs\), so it would never validate; allowed is null or a "
                                          r"whole number in 1..2$"):
        check_ranges(compose_train(SMOKE + ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=3"]))
    check_ranges(compose_train(SMOKE + ["trainer.max_epochs=2", "trainer.check_val_every_n_epoch=2"]))
    with pytest.raises(ConfigError, match=r"^trainer.min_epochs=100: the run trains 2 epochs \(trainer.max_epochs\), "
                                          r"which Lightning keeps to; allowed is a whole number in 0..2$"):
        check_ranges(compose_train(SMOKE + ["trainer.max_epochs=2", "+trainer.min_epochs=100"]))  # trained 2, silently
    check_ranges(compose_train(SMOKE + ["trainer.max_epochs=2", "+trainer.min_epochs=2"]))


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_an_entry_of_the_callbacks_or_loggers_is_an_object_or_null(group):
    """callbacks.rich_progress_bar=abc was "Input cfg is not an OmegaConf config object (str)" inside Hydra."""
    name = "rich_progress_bar" if group == "callbacks" else "tensorboard"
    with pytest.raises(ConfigError, match=rf"^{group}.{name}='abc': allowed is null \(left out\) or a node with a "
                                          r"_target_ \(the class to build\)$"):
        check_ranges(compose_train(SMOKE + [f"{group}.{name}=abc"]))
    check_ranges(compose_train(SMOKE + [f"{group}.{name}=null"]))


def test_eval_checks_the_rules_of_its_overrides_only():
    """A run saved before a rule existed (callbacks.binarization.every_n_epochs=0 once meant off) is evaluated with
    run_overrides of other keys; an override out of range is still refused."""
    cfg = compose_train(SMOKE + ["callbacks.binarization.every_n_epochs=0", "trainer.limit_test_batches=-1"])
    check_ranges(cfg, only=["method.name"])
    with pytest.raises(ConfigError, match=r"^trainer.limit_test_batches=-1: allowed is a count of batches >= 0"):
        check_ranges(cfg, only=["trainer.limit_test_batches"])
    with pytest.raises(ConfigError, match=r"^callbacks.binarization.every_n_epochs=0: allowed is null or a whole"):
        check_ranges(cfg, only=["callbacks.binarization.every_n_epochs"])
