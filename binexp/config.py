"""Structured-config schemas and their registration with Hydra.

Every YAML option under conf/ starts from one of these schemas (its defaults list names
`/schema/<group>/<name>`), so a wrong type or an unknown key fails when the config is composed, with the
full key named. Method-, data- and architecture-specific schemas live next to their code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from binexp.binarize.abr import ABRConfig
from binexp.binarize.fp import FloatConfig
from binexp.binarize.hard import BCConfig, BNNConfig, BWNConfig, XNORConfig
from binexp.binarize.sbn import SBNConfig
from binexp.binarize.ste import STEConfig
from binexp.data.cifar10 import CIFAR10Config
from binexp.data.imagefolder import ImageFolderConfig
from binexp.data.mnist import MNISTConfig
from binexp.data.synthetic import SyntheticConfig
from binexp.errors import ConfigError
from binexp.evaluate import EvalConfig
from binexp.hydra_output import launch_subdir
from binexp.models.cifar_quick import CifarQuickConfig
from binexp.models.densenet import DenseNetConfig
from binexp.models.lenet import LeNetConfig
from binexp.models.resnet import ResNetConfig
from binexp.models.vgg_small import VGGSmallConfig
from binexp.protocol import ProtocolConfig
from binexp.schedules import ConstantConfig, ExponentialNuConfig, TwoPhaseConfig


@dataclass
class PathsConfig:
    log_dir: str = "${oc.env:BINEXP_LOGS,logs}"
    data_dir: str = "${oc.env:BINEXP_DATA,data}"
    cache_dir: str = "${oc.env:BINEXP_CACHE,${oc.env:HOME,.}/.cache/binexp}"


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    bias_lr_mult: float = 1.0  # conv/linear biases at lr * bias_lr_mult (Caffe's `lr_mult: 2`)
    bias_decay: bool = False  # whether those biases take weight decay (Caffe's default: they do)


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    bias_lr_mult: float = 1.0
    bias_decay: bool = False


@dataclass
class LRSchedulerConfig:
    scheduler: Any = MISSING  # a `_partial_` torch scheduler; Lightning gets the rest of the keys
    interval: str = "epoch"
    frequency: int = 1


@dataclass
class TrainerConfig:
    """The pytorch_lightning.Trainer arguments binexp exposes (types checked when composing)."""

    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_epochs: int = 10
    max_steps: int = -1
    max_time: Optional[str] = None
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    val_check_interval: Any = 1.0
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    deterministic: Any = False
    benchmark: Optional[bool] = None
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    sync_batchnorm: bool = False
    use_distributed_sampler: bool = False  # DeviceBatches shards by rank itself
    fast_dev_run: Any = False
    detect_anomaly: bool = False
    profiler: Any = None  # simple | advanced | pytorch, as Lightning takes them; null: binexp.profiling.NoProfiler
    plugins: Any = None


@dataclass
class PaperConfig:
    """The published numbers an experiment reproduces; `binexp report` sets each run's results beside them."""
    source: str = MISSING  # where the numbers are printed, e.g. "SBN Table 1, CIFAR-10"
    # what the numbers are for: a group -> its option (the group's `name`), or a dotted key -> its value
    # (method.base: bnn); a run of the experiment that differs (a sweep of methods over it) is not set beside them
    choices: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # metrics.json key -> the paper's value in %


@dataclass
class TrainConfig:
    dataset: Any = MISSING
    architecture: Any = MISSING
    method: Any = MISSING
    schedule: Any = MISSING
    optimizer: Any = MISSING
    lr_scheduler: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Any = None  # dict name -> logger config
    callbacks: Any = None  # dict name -> callback config
    paths: PathsConfig = field(default_factory=PathsConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)  # regular / binary / finetuned after training
    task_name: str = "train"
    seed: Optional[int] = 0
    resume: Optional[str] = None  # a run directory to continue from its checkpoints/last.ckpt
    # a job re-run into a directory that already holds results (re-run sweep, requeued cluster job):
    # continue = skip it when it holds metrics.json, else continue from its last.ckpt; restart = from scratch
    existing_run: str = "continue"
    run_dir: str = "${hydra:runtime.output_dir}"
    channels_last: bool = False
    paper: Optional[PaperConfig] = None


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {"mnist": MNISTConfig, "cifar10": CIFAR10Config, "synthetic": SyntheticConfig, "imagefolder": ImageFolderConfig},
    "architecture": {"lenet": LeNetConfig, "cifar_quick": CifarQuickConfig, "vgg_small": VGGSmallConfig, "resnet": ResNetConfig, "densenet": DenseNetConfig},
    "method": {
        "fp": FloatConfig, "abr": ABRConfig, "ste": STEConfig,
        "bc": BCConfig, "bnn": BNNConfig, "bwn": BWNConfig, "xnor": XNORConfig, "sbn": SBNConfig,
    },
    "schedule": {"constant": ConstantConfig, "two_phase": TwoPhaseConfig, "exp_nu": ExponentialNuConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig},
    "lr_scheduler": {"base": LRSchedulerConfig},
    "trainer": {"base": TrainerConfig},
}

_registered = False


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (idempotent); call before composing a config."""
    global _registered
    if _registered:
        return
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", lambda a, b: int(a) // int(b))
    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", lambda *xs: sum(xs))
    if not OmegaConf.has_resolver("binexp_output_subdir"):
        OmegaConf.register_new_resolver("binexp_output_subdir", launch_subdir)
    _registered = True


def compose_train(overrides: list[str]) -> DictConfig:
    """`train`'s config composed from `overrides` as the CLI would, in-process (scripts and tests; no run starts)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("binexp.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def _schema_of(cfg: DictConfig, key: str) -> tuple[Any, str]:
    """The structured schema that types `key` and the key's path inside it."""
    group, _, rest = key.partition(".")
    target = OmegaConf.select(cfg, f"{group}._target_") if rest else None
    schema = next((c for c in SCHEMAS.get(group, {}).values() if getattr(c, "_target_", None) == target), None)
    return (schema, rest) if schema is not None and group != "trainer" else (TrainConfig, key)


def _has_path(tree: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def check_override_keys(cfg: DictConfig, overrides: list[str], what: str) -> None:
    """Each dotted `key=value` of `overrides`, about to be merged into a saved run config (`what`), names a key that
    config has or binexp's schema has (a run saved by an older binexp may lack a newer key); a typo would
    otherwise be merged in and never read."""
    saved = OmegaConf.to_container(cfg, resolve=False)
    for item in overrides:
        key = item.partition("=")[0]
        schema, path = _schema_of(cfg, key)
        if _has_path(saved, key) or _has_path(OmegaConf.to_container(OmegaConf.structured(schema)), path):
            node, new = OmegaConf.select(cfg, key), OmegaConf.select(OmegaConf.from_dotlist([item]), key)
            if "." not in key and OmegaConf.is_dict(node) and new is not None and not OmegaConf.is_dict(new):
                raise ConfigError(f"{item}: {key} is a config group whose option the run chose, and {what} keeps "
                                  f"it; change its keys instead ({key}.<key>=<value>; keys: {', '.join(sorted(map(str, node)))})")
            continue
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = ", ".join(sorted(map(str, node))) if OmegaConf.is_dict(node) else "none"
        raise ConfigError(f"{key}: not a key of {what} (keys under {parent or 'the top level'}: {keys})")


def check_override_types(cfg: DictConfig, overrides: list[str]) -> None:
    """A resume composes the run's saved config, which carries no schema; its `key=value` overrides are typed
    here as a fresh composition would type them, so `trainer.max_epochs=abc` fails naming the key."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or key.startswith(("+", "~", "hydra.")) or key == "resume":
            continue
        schema, path = _schema_of(cfg, key)
        node = OmegaConf.structured(schema)
        try:
            OmegaConf.update(node, path, OmegaConf.select(cfg, key), merge=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}: {str(err).splitlines()[0]}") from None
        except Exception:  # a schema node this check cannot update (an Optional dataclass left None): not judged
            continue
