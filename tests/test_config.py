"""Every option of every config group composes and builds; bad config input fails with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigAttributeError, ValidationError

from binexp.builder import build
from binexp.models import build_model
from binexp.optim import build_optimizer
from tests.conftest import compose_train

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


SHAPES = {"lenet": (1, 28, 28)}  # the rest are CIFAR networks


@pytest.mark.parametrize("arch", options("architecture"))
@pytest.mark.parametrize("method", options("method"))
def test_every_method_builds_every_architecture_and_runs_forward(arch, method):
    # a quarter of the width keeps the all-pairs matrix fast; the wiring is the same
    cfg = compose_train([f"architecture={arch}", f"method={method}", "dataset=synthetic", "architecture.width=0.25"])
    shape = SHAPES.get(arch, (3, 32, 32))
    net = build_model(cfg.architecture, build(cfg.method), shape, num_classes=10)
    out = net(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "group", ["dataset", "schedule", "optimizer", "lr_scheduler", "trainer", "logger", "callbacks", "debug", "experiment"]
)
def test_every_option_of_every_group_composes_and_instantiates(group):
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group not in ("experiment",):
            overrides.append("dataset=synthetic" if group != "dataset" else f"dataset={option}")
        cfg = compose_train(sorted(set(overrides)), run_dir=Path("/tmp/unused"))
        if group in ("dataset", "schedule"):
            assert build(cfg[group]) is not None
        elif group == "optimizer":
            opt = build_optimizer(cfg.optimizer)[0](params=[torch.nn.Parameter(torch.zeros(1))])
            assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
        elif group == "lr_scheduler":
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
            assert build(cfg.lr_scheduler.scheduler)(optimizer=opt) is not None


def test_architectures_bring_their_reference_recipe():
    lenet = compose_train(["architecture=lenet"])
    assert (lenet.optimizer.lr, lenet.dataset.batch_size, lenet.lr_scheduler.scheduler._target_) == (
        0.01, 64, "binexp.optim.CaffeInvLR",
    )
    quick = compose_train(["dataset=cifar10", "architecture=cifar_quick"])
    assert (quick.optimizer.lr, quick.optimizer.weight_decay, quick.dataset.batch_size) == (1e-3, 4e-3, 100)
    assert (quick.trainer.max_epochs, str(quick.dataset.normalize.value)) == (10, "caffe")
    assert (quick.dataset.val_size, str(quick.architecture.init.value)) == (0, "torch")
    abr = compose_train(["experiment=abr_table2_cifar10"])
    assert (abr.dataset.val_size, str(abr.architecture.init.value), abr.dataset.batch_size) == (0, "xavier", 100)
    vgg = compose_train(["dataset=cifar10", "architecture=vgg_small"])
    assert vgg.optimizer._target_ == "torch.optim.Adam" and vgg.dataset.augment.crop_padding == 4


def test_command_line_beats_the_recipe():
    cfg = compose_train(["architecture=cifar_quick", "optimizer=adam", "lr_scheduler=cosine", "optimizer.lr=0.5"])
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.optimizer.lr == 0.5
    assert cfg.lr_scheduler.scheduler._target_.endswith("CosineAnnealingLR")


def test_unknown_option_names_the_allowed_ones():
    with pytest.raises(MissingConfigException) as err:
        compose_train(["dataset=nope"])
    message = str(err.value)
    assert "dataset/nope" in message
    assert all(name in err.value.options for name in ("mnist", "cifar10", "synthetic"))


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["dataset.batch_size=abc"])
    cause = err.value.__cause__
    assert isinstance(cause, ValidationError)
    assert "dataset.batch_size" in str(cause)


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["dataset.bath_size=3"])
    assert isinstance(err.value.__cause__, ConfigAttributeError)
    assert "dataset.bath_size" in str(err.value.__cause__)


def test_enum_value_lists_the_allowed_values():
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(["dataset.normalize=zscore"])
    text = str(err.value.__cause__)
    assert "dataset.normalize" in text and "standard" in text and "caffe" in text


def test_seed_zero_is_kept():
    assert compose_train(["seed=0"]).seed == 0
    assert compose_train(["seed=null"]).seed is None
