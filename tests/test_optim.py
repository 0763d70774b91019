"""The optimizer's parameter groups: what decays, and Caffe's bias multipliers."""

import pytest
import torch
from torch import nn

from binexp.optim import BiasRule, build_lr_scheduler, build_optimizer, param_groups
from tests.conftest import compose_train


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))


def weights_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim > 1


def names(model: nn.Module, group: dict) -> list[str]:
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_by_default_biases_join_the_group_without_decay():
    model = net()
    groups = param_groups(model, weights_decay, lr=0.1)
    assert len(groups) == 2
    assert (names(model, groups[0]), groups[0]["decays"]) == (["0.weight", "3.weight"], True)
    assert names(model, groups[1]) == ["0.bias", "1.weight", "1.bias", "3.bias"]
    assert (groups[1]["weight_decay"], groups[1]["decays"]) == (0.0, False)


def test_caffe_biases_get_their_own_learning_rate_and_decay():
    model = net()
    groups = param_groups(model, weights_decay, lr=0.1, bias=BiasRule(lr_mult=2.0, decay=True))
    assert names(model, groups[1]) == ["1.weight", "1.bias"]  # batch norm stays undecayed, at the base lr
    assert names(model, groups[2]) == ["0.bias", "3.bias"]
    assert (groups[2]["lr"], groups[2]["decays"]) == (0.2, True) and "weight_decay" not in groups[2]
    optimizer = torch.optim.SGD(groups, lr=0.1, weight_decay=4e-3)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.1, 4e-3), (0.1, 0.0), (0.2, 4e-3)]


def test_the_learning_rate_curves_name_their_parameter_group():
    """They were lr-SGD/pg1, pg2 and pg3: which is which, a reader could not tell."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import Logger

    class Keys(Logger):
        name, version = "keys", 0

        def __init__(self):
            super().__init__()
            self.logged: set[str] = set()

        def log_metrics(self, metrics, step=None):
            self.logged |= set(metrics)

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(param_groups(self.net, weights_decay, lr=0.1, bias=BiasRule(lr_mult=2.0)), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(2, 1, 3, 3)), batch_size=2)
    keys = Keys()
    pl.Trainer(max_steps=1, logger=keys, callbacks=[LearningRateMonitor()], enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1).fit(Tiny(), data)
    assert sorted(k for k in keys.logged if k.startswith("lr-")) == ["lr-SGD/bias", "lr-SGD/decay", "lr-SGD/no_decay"]


def test_a_bias_multiplier_without_decay_keeps_the_biases_undecayed():
    groups = param_groups(net(), weights_decay, lr=1e-3, bias=BiasRule(lr_mult=2.0))
    assert (groups[2]["lr"], groups[2]["weight_decay"], groups[2]["decays"]) == (2e-3, 0.0, False)


def test_frozen_parameters_are_left_out():
    model = net()
    model[3].bias.requires_grad_(False)
    groups = param_groups(model, weights_decay, lr=0.1, bias=BiasRule(lr_mult=2.0))
    assert names(model, groups[2]) == ["0.bias"]


def test_the_bias_keys_shape_groups_and_never_reach_torch():
    cfg = compose_train(["optimizer.bias_lr_mult=2", "optimizer.bias_decay=true", "optimizer.lr=0.5"])
    factory, rule = build_optimizer(cfg.optimizer)
    assert rule == BiasRule(lr_mult=2.0, decay=True)
    assert factory.keywords["lr"] == 0.5 and "bias_lr_mult" not in factory.keywords


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_lr_scheduler_keeps_the_bias_multiplier(optimizer):
    cfg = compose_train([f"optimizer={optimizer}", "optimizer.bias_lr_mult=2", "optimizer.lr=0.5"])
    factory, rule = build_optimizer(cfg.optimizer)
    opt = factory(params=param_groups(net(), weights_decay, 0.5, rule))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    opt.step()
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.05, 0.1])


def test_the_training_module_hands_caffe_biases_to_the_optimizer(tmp_path):
    from binexp.train import build_data, build_method, build_module

    cfg = compose_train(["dataset=synthetic", "architecture=cifar_quick", "optimizer.bias_lr_mult=2",
                         "optimizer.bias_decay=true"], run_dir=tmp_path)
    dm = build_data(cfg)
    module = build_module(cfg, dm, build_method(cfg))
    optimizer = module.configure_optimizers()["optimizer"]
    biases = [p for n, p in module.net.named_parameters() if n.endswith("bias")]
    assert [len(g["params"]) for g in optimizer.param_groups] == [5, 0, 5] == [5, 0, len(biases)]
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(1e-3, 4e-3), (1e-3, 0.0), (2e-3, 4e-3)]


@pytest.mark.parametrize("method", ["abr", "sbn", "ste"])
def test_the_training_module_decays_the_layers_weights_and_nothing_else(tmp_path, method):
    """Through the methods' own `decays` (not a copy of the rule): conv/linear weights (SBN's latent P too) decay;
    biases, batch norm and ABR's slopes do not."""
    from binexp.train import build_data, build_method, build_module

    cfg = compose_train(["dataset=synthetic", "architecture=lenet", "architecture.batch_norm=true",
                         "architecture.conv_act=true", f"method={method}"], run_dir=tmp_path)
    module = build_module(cfg, build_data(cfg), build_method(cfg))
    decayed, kept = module.configure_optimizers()["optimizer"].param_groups[:2]
    assert decayed["weight_decay"] == cfg.optimizer.weight_decay > 0 and kept["weight_decay"] == 0.0
    assert names(module.net, decayed) == [n for n, p in module.net.named_parameters() if p.ndim > 1]
    assert names(module.net, kept) and all(p.ndim == 1 for p in kept["params"])
    if method == "abr":
        assert any(n.endswith("slope") for n in names(module.net, kept))


@pytest.mark.parametrize("name", ["caffe_inv", "cosine", "exponential", "multistep"])
def test_every_lr_scheduler_config_takes_only_its_class_parameters(name):
    from binexp.optim import check_scheduler_keys

    check_scheduler_keys(compose_train([f"lr_scheduler={name}"]).lr_scheduler.scheduler)


def test_a_scheduler_key_left_by_an_experiment_is_named_with_the_way_to_delete_it():
    from binexp.errors import ConfigError
    from binexp.optim import check_scheduler_keys

    cfg = compose_train(["experiment=abr_table1_mnist", "lr_scheduler=caffe_inv"])  # the experiment sets `at`
    with pytest.raises(ConfigError, match=r"lr_scheduler\.scheduler\.at is not a parameter of binexp\.optim\.CaffeInvLR "
                                          r"\(it takes \['gamma', 'power'\]\).*'~lr_scheduler\.scheduler\.at'"):
        check_scheduler_keys(cfg.lr_scheduler.scheduler)
    deleted = compose_train(["experiment=abr_table1_mnist", "lr_scheduler=caffe_inv", "~lr_scheduler.scheduler.at"])
    check_scheduler_keys(deleted.lr_scheduler.scheduler)
    assert "at" not in deleted.lr_scheduler.scheduler


def lrs_over(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return lrs


def test_caffe_inv_lr_follows_caffes_formula_per_iteration():
    cfg = compose_train(["architecture=lenet", "dataset=synthetic"])  # LeNet's recipe: base 0.01, inv policy
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    lrs = lrs_over(build_lr_scheduler(cfg.lr_scheduler.scheduler)(optimizer=opt), 10_000)
    assert cfg.lr_scheduler.interval == "step"
    for it in (0, 1, 100, 10_000):
        assert lrs[it] == pytest.approx(0.01 * (1 + 1e-4 * it) ** -0.75, rel=1e-12)
    assert lrs[10_000] == pytest.approx(0.01 * 2 ** -0.75)


@pytest.mark.parametrize(("epochs", "at", "milestones"), [(10, [0.8], [8]), (10, [0.5, 0.75], [5, 8]),
                                                          (3, [0.1], [1]), (12, [0.5, 0.5], [6])])
def test_multistep_at_puts_its_milestones_at_fractions_of_training(epochs, at, milestones):
    from binexp.optim import MultiStepAt

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = lrs_over(MultiStepAt(opt, total_epochs=epochs, at=at, gamma=0.1), epochs)
    drops = [e for e in range(1, epochs + 1) if lrs[e] < lrs[e - 1]]
    assert drops == milestones
    assert lrs[-1] == pytest.approx(0.1 ** len(milestones))


def test_the_cifar_quick_recipe_divides_the_lr_by_ten_for_the_last_two_of_ten_epochs():
    cfg = compose_train(["dataset=cifar10", "architecture=cifar_quick"])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    lrs = lrs_over(build_lr_scheduler(cfg.lr_scheduler.scheduler)(optimizer=opt), cfg.trainer.max_epochs)
    assert cfg.lr_scheduler.interval == "epoch"
    assert lrs[:10] == pytest.approx([1e-3] * 8 + [1e-4] * 2)


def test_the_train_module_hands_the_scheduler_interval_to_lightning(tmp_path):
    """caffe_inv steps every iteration: an interval lost on the way to Lightning would step it once an epoch."""
    from binexp.train import build_data, build_method, build_module
    from tests.conftest import compose_train
    cfg = compose_train(["architecture=lenet", "dataset=synthetic"], run_dir=tmp_path)  # caffe_inv: per iteration
    dm = build_data(cfg)
    spec = build_module(cfg, dm, build_method(cfg)).configure_optimizers()["lr_scheduler"]
    assert spec["interval"] == "step"


def test_a_schedulers_missing_or_binexp_owned_parameter_is_named():
    """A deleted T_max was a TypeError inside the scheduler's constructor; last_epoch=3 a KeyError about initial_lr."""
    from binexp.errors import ConfigError

    cfg = compose_train(["lr_scheduler=cosine", "~lr_scheduler.scheduler.T_max"])
    with pytest.raises(ConfigError, match=r"^lr_scheduler.scheduler: torch.optim.lr_scheduler.CosineAnnealingLR needs "
                                          r"T_max; set it: 'lr_scheduler.scheduler.T_max=...'$"):
        build_lr_scheduler(cfg.lr_scheduler.scheduler)
    cfg = compose_train(["lr_scheduler=caffe_inv", "+lr_scheduler.scheduler.last_epoch=3"])
    with pytest.raises(ConfigError, match=r"^lr_scheduler.scheduler.last_epoch: set by binexp, not by the config \(a new "
                                          r"run starts the scheduler at its first step, a resume restores its step"):
        build_lr_scheduler(cfg.lr_scheduler.scheduler)


def test_a_custom_schedulers_parameters_are_type_checked():
    """A scheduler kept outside binexp has no range rule; its signature's types still apply."""
    from binexp.errors import ConfigError

    cfg = compose_train(["lr_scheduler=cosine", "lr_scheduler.scheduler._target_=torch.optim.lr_scheduler.StepLR",
                         "~lr_scheduler.scheduler.T_max", "~lr_scheduler.scheduler.eta_min",
                         "+lr_scheduler.scheduler.step_size=two"])
    with pytest.raises(ConfigError, match=r"^lr_scheduler.scheduler.step_size='two': torch.optim.lr_scheduler.StepLR "
                                          r"takes a whole number$"):
        build_lr_scheduler(cfg.lr_scheduler.scheduler)


@pytest.mark.parametrize("override", ["optimizer._partial_=false", "~lr_scheduler.scheduler._partial_"])
def test_the_optimizer_and_scheduler_stay_partial(override):
    """optimizer._partial_=0 said "torch.optim.SGD needs params; set it", a hint no config can follow."""
    from binexp.errors import ConfigError

    cfg = compose_train(["dataset=synthetic", "lr_scheduler=cosine", override])
    key, passed = ("optimizer", "params") if override.startswith("optimizer") else ("lr_scheduler.scheduler", "optimizer")
    value = "False" if override.startswith("optimizer") else "None"
    with pytest.raises(ConfigError, match=rf"^{key}._partial_={value}: allowed is true \(binexp passes {passed} when it "
                                          r"builds it\)$"):
        build_optimizer(cfg.optimizer) if key == "optimizer" else build_lr_scheduler(cfg.lr_scheduler.scheduler)
