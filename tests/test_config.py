"""Every option of every config group composes and builds; bad config input fails with the key named."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from binexp.binarize.abr import ABR
from binexp.binarize.ste import STE
from binexp.builder import build, locate_target
from binexp.data.synthetic import SyntheticData
from binexp.errors import ConfigError, user_error
from binexp.models import build_model
from binexp.models.resnet import ResNet
from binexp.optim import build_lr_scheduler, build_optimizer
from binexp.schedules import Progress
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


DATA_CLASSES = {"cifar10": "CIFAR10Data", "imagefolder": "ImageFolderData", "mnist": "MNISTData",
                "synthetic": "SyntheticData"}


@pytest.mark.parametrize("option", options("dataset"))
def test_every_dataset_option_builds_its_data_module(option):
    cfg = compose_train([f"dataset={option}"])
    assert type(build(cfg.dataset)).__name__ == DATA_CLASSES[option]


@pytest.mark.parametrize("option", options("schedule"))
def test_every_schedule_option_builds_the_schedule_it_names(option):
    schedule = build(compose_train([f"schedule={option}", "dataset=synthetic"]).schedule)
    assert type(schedule).__name__ == {"constant": "Constant", "exp_nu": "ExponentialNu", "two_phase": "TwoPhase"}[option]
    assert set(schedule.values(Progress(step=0, steps_per_epoch=10, max_epochs=10))) == set(schedule.provides)


@pytest.mark.parametrize("option", options("optimizer"))
def test_every_optimizer_option_builds_with_its_lr(option):
    cfg = compose_train([f"optimizer={option}", "dataset=synthetic"])
    opt = build_optimizer(cfg.optimizer)[0](params=[torch.nn.Parameter(torch.zeros(1))])
    assert type(opt).__name__ == ("Adam" if option == "adam" else "SGD")
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("option", options("lr_scheduler"))
def test_every_lr_scheduler_option_builds_and_steps(option):
    cfg = compose_train([f"lr_scheduler={option}", "dataset=synthetic", "trainer.max_epochs=4"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_lr_scheduler(cfg.lr_scheduler.scheduler)(optimizer=opt)
    assert scheduler.get_last_lr() == [0.1]
    opt.step()
    scheduler.step()
    after_one = {"caffe_inv": 0.1 * (1 + 1e-4) ** -0.75, "cosine": 0.05 * (1 + math.cos(math.pi / 4)),
                 "exponential": 0.1 * 0.955, "multistep": 0.1}  # multistep's first milestone: 0.8 * 4 epochs
    assert scheduler.get_last_lr() == [pytest.approx(after_one[option], rel=1e-12)]


def built_trainer(cfg, run_dir: Path):
    from binexp.train import build_callbacks, build_data, build_method, build_schedule, build_trainer

    method = build_method(cfg)
    return build_trainer(cfg, build_callbacks(cfg, build_schedule(cfg, method), method, build_data(cfg)), run_dir)


@pytest.mark.parametrize("option", options("trainer"))
def test_every_trainer_option_builds_a_trainer(option, tmp_path):
    cpu = ["trainer.accelerator=cpu"] if option == "gpu" else []  # what gpu.yaml sets besides runs on a CPU
    cfg = compose_train([f"trainer={option}", "dataset=synthetic", *cpu], run_dir=tmp_path)
    trainer = built_trainer(cfg, tmp_path)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert (type(trainer.strategy).__name__ == "DDPStrategy") == (option == "ddp")
    assert (trainer.precision == "bf16-mixed") == (option == "gpu")
    assert (trainer.progress_bar_callback is None) == (option == "cluster")


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_option_writes_into_the_run_directory(option, tmp_path):
    cfg = compose_train([f"logger={option}", "dataset=synthetic"], run_dir=tmp_path)
    (logger,) = built_trainer(cfg, tmp_path).loggers
    assert type(logger).__name__ == {"csv": "CSVLogger", "tensorboard": "TensorBoardLogger"}[option]
    assert Path(logger.log_dir) == tmp_path / {"csv": "csv", "tensorboard": "tb"}[option]


def test_the_callbacks_option_keeps_last_and_best_checkpoints(tmp_path):
    assert options("callbacks") == ["default"]
    cfg = compose_train(["callbacks=default", "dataset=synthetic"], run_dir=tmp_path)
    checkpoints = built_trainer(cfg, tmp_path).checkpoint_callbacks
    assert sorted((c.filename, c.monitor) for c in checkpoints) == [("best-{epoch:03d}-{step}", "val/acc"),
                                                                     ("last", None)]


def test_the_debug_option_is_a_few_cpu_batches(tmp_path):
    assert options("debug") == ["smoke"]
    trainer = built_trainer(compose_train(["debug=smoke", "dataset=synthetic"], run_dir=tmp_path), tmp_path)
    assert (trainer.max_epochs, trainer.limit_train_batches, trainer.limit_val_batches) == (2, 4, 2)
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"


@pytest.mark.parametrize("option", options("experiment"))
def test_every_experiment_builds_its_network_schedule_and_optimizer(option):
    from binexp.train import build_method, build_schedule

    cfg = compose_train([f"experiment={option}"])
    method = build_method(cfg)
    build_schedule(cfg, method)  # raises if the method reads a value its schedule does not provide
    shape = (1, 28, 28) if cfg.dataset.name == "mnist" else (3, 32, 32)
    net = build_model(cfg.architecture, method, shape, num_classes=10)
    assert net(torch.randn(2, *shape)).shape == (2, 10)
    opt = build_optimizer(cfg.optimizer)[0](params=net.parameters())
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr


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


@pytest.mark.parametrize("arch,recipe", [("lenet", "sgd_caffe_lenet"), ("cifar_quick", "sgd_caffe_cifar_quick"),
                                         ("resnet18", "sgd_resnet_cifar"), ("densenet21", "sgd_resnet_cifar")])
def test_another_optimizer_takes_its_own_defaults_not_the_recipes_lr_and_decay(arch, recipe):
    recipes = compose_train([f"architecture={arch}"])
    assert recipes.optimizer == compose_train([f"architecture={arch}", f"optimizer={recipe}"]).optimizer
    adam = compose_train([f"architecture={arch}", "optimizer=adam"]).optimizer
    assert (adam._target_, adam.lr, adam.weight_decay) == ("torch.optim.Adam", 1e-3, 0.0)  # not e.g. SGD's lr 0.1
    sgd = compose_train(["architecture=vgg_small", "optimizer=sgd"]).optimizer  # vgg_small's recipe is Adam's
    assert (sgd._target_, sgd.lr, sgd.weight_decay) == ("torch.optim.SGD", 0.01, 0.0)


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


def test_a_key_added_with_plus_that_the_target_does_not_take_names_the_key_and_the_parameters(tmp_path):
    from binexp.errors import ConfigError

    cfg = compose_train(["dataset=synthetic", "+dataset.foo=1", "+method.bar=2", "+trainer.baz=3"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^dataset.foo: not a parameter of binexp.data.synthetic.SyntheticData "
                                          r"\(it takes image_shape, num_classes, .*, subset, val_size, batch_size"):
        build(cfg.dataset)  # SyntheticData passes **kwargs to ImageData: the chain's parameters count
    with pytest.raises(ConfigError, match=r"^method.bar: not a parameter of binexp.binarize.fp.FloatReLU \(it takes scope\)$"):
        build(cfg.method)
    del cfg.dataset.foo, cfg.method.bar
    with pytest.raises(ConfigError, match=r"^trainer.baz: not a parameter of pytorch_lightning.Trainer \(it takes accelerator, "):
        built_trainer(cfg, tmp_path)


@pytest.mark.parametrize(("added", "key", "target"), [
    ("+trainer.logger=false", "trainer.logger", "pytorch_lightning.Trainer"),  # tb/ was written all the same
    ("+trainer.callbacks=[]", "trainer.callbacks", "pytorch_lightning.Trainer"),
    ("+trainer.default_root_dir=/tmp/x", "trainer.default_root_dir", "pytorch_lightning.Trainer"),
    ("+architecture.num_classes=5", "architecture.num_classes", "binexp.models.lenet.LeNet")])
def test_a_key_binexp_passes_itself_is_refused_not_dropped(tmp_path, added, key, target):
    from binexp.train import train

    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: binexp sets it when it builds {re.escape(target)} \(from "
                                          r"the rest of the run's config\), so a value here would be ignored; delete it$"):
        train(compose_train(["dataset=synthetic", "debug=smoke", added], run_dir=tmp_path))


def test_a_target_that_does_not_import_is_named_with_its_reason(tmp_path, monkeypatch):
    (tmp_path / "broken_method.py").write_text("import not_a_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^method._target_=broken_method.M: importing broken_method failed: No "
                                          r"module named 'not_a_module_xyz'$"):
        locate_target("broken_method.M", "method._target_")
    with pytest.raises(ConfigError, match=r"^k=binexp.binarize.ste.STEE: binexp.binarize.ste has no STEE$"):
        locate_target("binexp.binarize.ste.STEE", "k")
    with pytest.raises(ConfigError, match=r"^k=nowhere_xyz.M: no module 'nowhere_xyz' on Python's path"):
        locate_target("nowhere_xyz.M", "k")
    from torch.optim.lr_scheduler import StepLR

    assert locate_target("torch.optim.lr_scheduler.StepLR", "k") is StepLR


def test_a_class_without_an_init_of_its_own_takes_no_keys():
    cfg = compose_train(["dataset=synthetic", "+schedule.foo=1"])
    with pytest.raises(ConfigError, match=r"^schedule\.foo: not a parameter of binexp\.schedules\.Constant \(it takes none\)$"):
        build(cfg.schedule)


def test_a_class_built_without_a_parameter_it_needs_names_the_key_to_set():
    node = OmegaConf.create({"logger": {"csv": {"_target_": "pytorch_lightning.loggers.CSVLogger"}}})
    with pytest.raises(ConfigError, match=r"^logger\.csv: pytorch_lightning\.loggers\.CSVLogger needs save_dir; "
                                          r"set it: 'logger\.csv\.save_dir=\.\.\.'$"):
        build(node.logger.csv, named=False)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("flag", "maybe", r"things.flag='maybe': tests.helpers.TypedOptions takes true or false$"),
    ("rate", "fast", r"things.rate='fast': tests.helpers.TypedOptions takes a number$"),
    ("count", 1.5, r"things.count=1.5: tests.helpers.TypedOptions takes a whole number$"),
    ("limit", "none", r"things.limit='none': tests.helpers.TypedOptions takes a number or null$"),
    ("kind", "z", r"things.kind='z': tests.helpers.TypedOptions takes one of 'x', 'y'$"),
    # ABR's `method.scope=1e30` was a TypeError inside the architecture ("'float' object is not iterable")
    ("names", 1e30, r"things.names=1e\+30: tests.helpers.TypedOptions takes a string or a list of strings$"),
    ("names", ["a", 2], r"things.names=\['a', 2\]: tests.helpers.TypedOptions takes a string or a list of strings$"),
    ("items", 3, r"things.items=3: tests.helpers.TypedOptions takes a list$"),
    ("pair", [1, 2], r"things.pair=\[1, 2\]: tests.helpers.TypedOptions takes a list of 2: a whole number, a string$"),
])
def test_a_class_outside_binexps_schemas_has_its_keys_typed_by_its_signature(key, value, message):
    """A researcher's method has no schema: `method.flag=maybe` trained with the flag on (a non-empty string)."""
    node = OmegaConf.create({"things": {"_target_": "tests.helpers.TypedOptions", key: value}}).things
    with pytest.raises(ConfigError, match=message):
        build(node, named=False)
    fine = OmegaConf.create({"things": {"_target_": "tests.helpers.TypedOptions", "flag": True, "rate": 2,
                                        "limit": None, "kind": "y", "items": [1], "names": ["fc1"],
                                        "pair": [2, "b"]}}).things
    assert build(fine, named=False).rate == 2


def test_an_ste_subclass_checks_its_scaling():
    from binexp.binarize.ste import STE

    class Mine(STE):  # outside binexp's schemas, as the README's examples are
        pass

    with pytest.raises(ConfigError, match=r"^method.scaling='bogus': allowed are none, backward, forward_backward$"):
        Mine(scaling="bogus")
    assert Mine(scaling="backward").scaling == "backward"


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ABR(growth="in-loss"),  # trained without slope growth
     r"^method.growth='in-loss': allowed are outside, in_loss$"),
    (lambda: ABR(slope_init="one"),  # gave gaussian slopes
     r"^method.slope_init='one': allowed are ones, gaussian$"),
    (lambda: ResNet(STE(), (3, 32, 32), 10, shortcut="Binary"),
     r"^architecture.shortcut='Binary': allowed are float, binary$"),  # gave float shortcuts
    (lambda: SyntheticData(normalize="std"),
     r"^dataset.normalize='std': allowed are standard, mean_only, caffe, caffe_image$"),  # a traceback at setup
])
def test_options_are_checked_by_the_classes_themselves_for_subclasses_without_a_schema(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_width_that_leaves_a_layer_without_a_channel_is_refused():
    """A 1-channel layer in its place trained an 89-parameter LeNet at width 1e-9."""
    cfg = compose_train(["architecture=lenet", "dataset=synthetic", "architecture.width=0.01"])
    with pytest.raises(Exception) as raised:  # Hydra's instantiate wraps the architecture's error
        build_model(cfg.architecture, STE(), (1, 28, 28), 10)
    assert str(user_error(raised.value)) == ("architecture.width=0.01: a layer of 20 channels would keep 0.2; allowed is "
                                             "a width that keeps every layer at least one channel (>= 0.025 here)")


def test_an_empty_abr_scope_is_refused():
    """It trained a float ReLU network under the name abr, without protocol/* metrics."""
    with pytest.raises(ConfigError, match=r"^method.scope=\[\]: allowed are all, last or a non-empty list"):
        ABR(scope=[])


@pytest.mark.parametrize(("override", "message"), [
    ("schedule._target_=builtins.dict", r"^schedule._target_=builtins.dict: builds a builtins.dict, not a "
                                        r"binexp.schedules.Schedule$"),  # "'dict' object has no attribute 'provides'"
    ("callbacks.graceful_stop._target_=builtins.dict", r"^callbacks.graceful_stop._target_=builtins.dict: builds a "
                                                       r"builtins.dict, not a pytorch_lightning.callbacks.callback.Callback$"),
    ("callbacks.best_checkpoint.dirpath=0", r"^callbacks.best_checkpoint.dirpath=0: "
                                            r"pytorch_lightning.callbacks.ModelCheckpoint takes a string or a path or null$"),
])
def test_an_object_of_another_class_or_a_number_for_a_path_is_refused_naming_the_key(tmp_path, override, message):
    from binexp.train import train

    with pytest.raises(ConfigError, match=message):
        train(compose_train(["dataset=synthetic", "debug=smoke", override], run_dir=tmp_path))
