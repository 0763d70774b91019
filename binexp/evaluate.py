"""`binexp eval run=<run dir> [ckpt=last|best|binary_weights|bn_reestimated|<path>]`: test a run's checkpoint on its
dataset's test set.

The network is rebuilt from the run's own saved config, so it is evaluated exactly as it was trained;
layers with a step-function form are also evaluated in step mode (`test/acc_step`). `protocol=true` also runs
the evaluation protocol (regular / binary / finetuned / Section 4.4) on that checkpoint, e.g. after the protocol
changed or with other settings; `'run_overrides=["method.scope=all"]'` changes the run's config first (Table 2's
baseline protocol on Table 1's baseline checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from binexp import atomic_files
from binexp.binarize.base import step_mode
from binexp.errors import ConfigError
from binexp.protocol import (
    BINARY_WEIGHTS_KEY,
    DERIVED_CHECKPOINTS,
    derived_checkpoint_path,
    freeze_sign_weights,
    has_step_form,
    protocol_config,
    run_protocol,
)

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    run: str = "???"
    ckpt: str = "last"
    accelerator: str = "auto"
    protocol: bool = False  # also run the evaluation protocol (its Section 4.4 network replaces the run's)
    run_overrides: list[str] = field(default_factory=list)  # dotted key=value changes to the run's config


TRAINED_KEYS = ("dataset", "architecture", "method")  # what a training run's config has and an eval's has not


def load_run_config(run_dir: Path, key: str = "run") -> DictConfig:
    """The saved config of a training run; `key` names the option that gave `run_dir` in errors."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"{key}={run_dir}: {saved} not found; `{key}` takes a directory made by `binexp train`")
    from binexp.config import register_configs

    register_configs()  # the saved config keeps interpolations (${floordiv:...}) that need binexp's resolvers
    cfg = OmegaConf.load(saved)
    missing = [name for name in TRAINED_KEYS if name not in cfg]
    if missing:  # e.g. an eval/<time>/ folder, which has a .hydra/config.yaml of its own
        raise ConfigError(f"{key}={run_dir}: not a training run (its {saved} has no {', '.join(missing)}); `{key}` takes "
                          f"a directory made by `binexp train`")
    cfg.run_dir = str(run_dir)
    return cfg


def find_checkpoint(run_dir: Path, which: str) -> Path:
    derived = ", ".join(f"{name} ({when})" for name, when in DERIVED_CHECKPOINTS.items())
    allowed = f"allowed: last, best, {derived}, or a checkpoint file"
    if not which:
        raise ConfigError(f"ckpt= is empty ({allowed})")
    ckpt_dir = run_dir / "checkpoints"
    if which == "last":
        path = ckpt_dir / "last.ckpt"
    elif which in DERIVED_CHECKPOINTS:
        path = derived_checkpoint_path(run_dir, which)
    elif which == "best":
        # the latest by epoch and step as numbers: best-1000-... comes after best-999-..., not before
        best = sorted(ckpt_dir.glob("best-*.ckpt"), key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)])
        path = best[-1] if best else ckpt_dir / "best-*.ckpt"
    else:
        path = Path(which)
        if not path.exists() and (run_dir / which).exists():  # relative to the run (checkpoints/epoch3.ckpt)
            path = run_dir / which
    if path.is_dir():
        raise ConfigError(f"ckpt={which}: {path} is a directory ({allowed})")
    if not path.exists():
        raise ConfigError(f"ckpt={which}: {path} not found ({allowed})")
    return path


def eval_result_name(run_dir: Path, ckpt: Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """`eval-<name>.json`: the checkpoint's file name for the run's own checkpoints; its path inside the run for
    other files of the run; for a file elsewhere its name and a hash of its path, so that evaluating another
    run's last.ckpt does not overwrite this run's eval-last.json. An eval with run_overrides (another scope, the
    whole test set) adds `-overrides-<hash of them>`: it tested something else than the plain eval's record."""
    resolved = ckpt.resolve()
    suffix = f"-overrides-{_digest(chr(10).join(overrides))}" if overrides else ""
    try:
        inside = resolved.relative_to((run_dir / "checkpoints").resolve())
    except ValueError:
        try:
            inside = resolved.relative_to(run_dir.resolve())
        except ValueError:
            return f"eval-{ckpt.stem}-{_digest(str(resolved))}{suffix}.json"
    return "eval-" + "-".join((*inside.parent.parts, inside.stem)) + suffix + ".json"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def load_trained(run_dir: Path, ckpt: str, overrides: list[str] | None = None):
    """(run config, data module, trained Classifier, checkpoint path): a run rebuilt from its own saved config
    (`overrides`, dotted key=value, change it, e.g. dataset.root) with the weights of checkpoint `ckpt`."""
    from binexp.train import forget_checkpoints

    try:
        return _load_trained(run_dir, ckpt, overrides)[:4]
    finally:
        forget_checkpoints()  # the weights are in the module now


def _load_trained(run_dir: Path, ckpt: str, overrides: list[str] | None = None):
    """load_trained's result and the checkpoint as read (eval records where in training it was saved)."""
    from binexp.train import build_data, build_method, build_module, other_job, read_checkpoint

    cfg = load_run_config(run_dir)
    path = find_checkpoint(run_dir, ckpt)
    try:
        saved = read_checkpoint(path)
    except ConfigError as err:  # a damaged or cut-short file
        raise ConfigError(f"ckpt={ckpt}: {err}") from None
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise ConfigError(f"ckpt={ckpt}: {path} holds no state_dict; it is not a checkpoint of `binexp train`")
    differ = other_job(saved, cfg)
    if differ:  # its tensors may fit (fp, ste, bnn and xnor's LeNets do): tested as this run, it would mean nothing
        raise ConfigError(f"ckpt={ckpt}: {path} was trained as another job than {run_dir}'s ({'; '.join(differ[:3])}); "
                          f"give the run directory that trained it as run=")
    cfg = as_tested(cfg, saved)
    if overrides:
        from binexp.config import check_override_keys, check_override_types
        from binexp.ranges import check_ranges

        check_run_overrides(overrides)
        check_override_keys(cfg, overrides, f"the config of {run_dir}")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        check_override_types(cfg, overrides)
        check_ranges(cfg, only=[o.partition("=")[0] for o in overrides])
    dm = build_data(cfg)
    module = build_module(cfg, dm, build_method(cfg))
    detail = _load_weights(module, saved)
    if detail is not None:
        network = f"(method={cfg.method.name}, architecture={cfg.architecture.name})"
        as_saved = load_run_config(run_dir) if overrides else None  # does the checkpoint fit it, overrides aside?
        if as_saved is not None and _load_weights(build_module(as_saved, dm, build_method(as_saved)), saved) is None:
            raise ConfigError(f"ckpt={ckpt}: {path} does not fit the network that run_overrides={list(overrides)} "
                              f"make of {run_dir} {network}: an override that changes the network's layers cannot "
                              f"take the run's weights ({detail})") from None
        raise ConfigError(f"ckpt={ckpt}: {path} does not fit the network of {run_dir} {network}; was it saved by "
                          f"another run? ({detail})") from None
    _feed_as_trained(dm, saved)
    return cfg, dm, module, path, saved


# the device eval runs on is its own option (accelerator=), one device whatever the run trained on
EVAL_DECIDES = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy")


def check_run_overrides(overrides: list[str]) -> None:
    """run_overrides change values of the run's config: adding or deleting a key, or setting one eval decides
    itself, would be refused in a way that does not say so, or ignored."""
    for item in overrides:
        key = item.partition("=")[0]
        if item.startswith(("+", "~")):
            raise ConfigError(f"run_overrides: {item}: takes key=value changes of the run's own keys only (no + or ~)")
        if key in EVAL_DECIDES:
            raise ConfigError(f"run_overrides: {item}: eval tests on one device, chosen with accelerator=<auto|cpu|gpu>, "
                              f"not with the run's {key}")


# what the launch that saved a checkpoint tested with, which a resume may have changed since the first launch's
# .hydra/config.yaml: eval's numbers are those of that launch's metrics.json
TESTED_WITH = ("trainer.limit_test_batches", "trainer.limit_val_batches", "trainer.precision", "protocol")


def as_tested(cfg: DictConfig, saved: dict) -> DictConfig:
    config = OmegaConf.create(saved.get("hyper_parameters", {}).get("config") or {})
    for key in TESTED_WITH:
        value = OmegaConf.select(config, key, default=None)
        if value is not None:
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def _feed_as_trained(dm, saved: dict) -> None:
    """The test images normalised as the network trained on them (the checkpoint's record), not as statistics
    recomputed from a training split that run_overrides may have changed (dataset.subset moves the hold-out)."""
    from binexp.data.loader import InputNorm

    recorded = saved.get("hyper_parameters", {}).get("input_norm")
    if not recorded:  # a checkpoint from before the record
        return
    trained = InputNorm(**recorded)
    if trained.mode != dm.normalize:
        raise ConfigError(f"dataset.normalize={dm.normalize}, but the network trained on inputs normalised as "
                          f"{trained.mode}; it cannot be tested on others (leave dataset.normalize as the run had it)")
    dm.norm = trained


def _load_weights(module, saved: dict) -> str | None:
    """The checkpoint's weights into `module` (Section 4.4's layers frozen first, as saved); how they do not fit,
    if they do not."""
    from binexp.train import weights_mismatch

    if saved.get(BINARY_WEIGHTS_KEY):
        freeze_sign_weights(module.net)
    mismatch = weights_mismatch(module.state_dict(), saved["state_dict"])
    if mismatch is None:
        module.load_state_dict(saved["state_dict"])
    return mismatch


def evaluate(cfg: DictConfig) -> dict[str, float]:
    try:
        return _evaluate(cfg)
    except Exception as raised:
        from binexp.errors import user_error

        if user_error(raised) is not None:
            _discard_eval_folder()
        raise


def _discard_eval_folder() -> None:
    """A refused eval leaves no `<run>/eval/<time>/` folder (Hydra made it before binexp could check anything)."""
    from binexp.hydra_output import RECORD, discard_refused_first_launch, running_hydra

    hc = running_hydra()
    if hc is None:
        return
    folder = Path(hc.runtime.output_dir)
    if folder.parent.name != "eval":
        return
    discard_refused_first_launch(folder, folder / RECORD)  # Hydra's record and log, as a refused train's
    try:
        folder.parent.rmdir()  # only where it is empty
    except OSError:  # it holds other evals, or another refused eval removed it first
        pass


def _evaluate(cfg: DictConfig) -> dict[str, float]:
    from binexp.module import scalar_metrics
    from binexp.train import forget_checkpoints, print_summary

    run_dir = Path(cfg.run)
    if cfg.protocol and cfg.ckpt in DERIVED_CHECKPOINTS:
        raise ConfigError(f"protocol=true with ckpt={cfg.ckpt}: the protocol starts from a trained run's "
                          f"checkpoint (allowed: last, best, or a checkpoint path)")
    try:
        run_cfg, dm, module, ckpt, saved = _load_trained(run_dir, cfg.ckpt, list(cfg.run_overrides))
    finally:
        forget_checkpoints()
    # the run's own test limits, so eval's numbers are those of its metrics.json ('run_overrides=["trainer.
    # limit_test_batches=1.0"]' tests a smoke run on the whole test set)
    limits = {k: run_cfg.trainer[k] for k in ("limit_test_batches", "limit_val_batches") if run_cfg.trainer.get(k) is not None}
    precision = run_cfg.trainer.get("precision") or "32-true"  # test/acc in bf16-mixed is not float32's
    trainer = _tester(cfg, precision, limits)
    metrics = scalar_metrics(trainer.test(module, datamodule=dm, verbose=False)[0])
    if has_step_form(module.net):
        # the binary network as deployed (and as protocol/binary tests it): in half precision the sums of +-1
        # products round before BinaryBN's comparison
        with step_mode(module.net):
            stepped = _tester(cfg, "32-true", limits).test(module, datamodule=dm, verbose=False)[0]
        metrics.update({f"{k}_step": v for k, v in scalar_metrics(stepped).items()})
    if cfg.protocol:
        module.to(trainer.strategy.root_device)  # Lightning hands the model back on the CPU
        metrics.update(protocol_metrics(run_cfg, dm, module, run_dir))
    out = run_dir / eval_result_name(run_dir, ckpt, list(cfg.run_overrides))
    # where in training the checkpoint was saved: a resume moves last.ckpt on, and this record says which it tested
    at = {f"checkpoint_{k}": saved[k] for k in ("epoch", "global_step") if k in saved}
    record = {"checkpoint": str(ckpt), **at, "precision": precision, "run_overrides": list(cfg.run_overrides), **metrics}
    atomic_files.write_text(out, json.dumps(record, indent=2) + "\n")
    print_summary(run_dir, metrics)
    return metrics


def _tester(cfg: DictConfig, precision, limits: dict) -> pl.Trainer:
    try:
        return pl.Trainer(
            accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, precision=precision, **limits,
        )
    except (MisconfigurationException, ValueError) as err:  # Lightning's words for an accelerator it cannot take
        message = str(err).splitlines()[0]  # (the limits were checked with the run's config: binexp.ranges)
        hint = "" if str(precision) in ("32-true", "32") else (
            f" with the run's trainer.precision={precision} ('run_overrides=[\"trainer.precision=32-true\"]' tests in "
            "float32)")
        raise ConfigError(f"accelerator={cfg.accelerator}{hint}: {message} (allowed: auto, cpu, gpu, and what "
                          "Lightning names)") from None


def protocol_metrics(run_cfg: DictConfig, dm, module, run_dir: Path) -> dict[str, float]:
    from binexp.train import build_method

    return run_protocol(module.net, build_method(run_cfg), dm, protocol_config(run_cfg), seed=dm.seed,
                        save_to_run=run_dir)
