"""`binexp eval run=<run dir> [ckpt=last|best|<path>]`: test a run's checkpoint on its dataset's test set.

The network is rebuilt from the run's own saved config, so it is evaluated exactly as it was trained;
layers with a step-function form are also evaluated in step mode (`test/acc_step`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from binexp.binarize.base import step_mode
from binexp.errors import ConfigError
from binexp.protocol import BINARY_WEIGHTS_KEY, freeze_sign_weights, has_step_form

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    run: str = "???"
    ckpt: str = "last"
    accelerator: str = "auto"


def load_run_config(run_dir: Path) -> DictConfig:
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"run={run_dir}: {saved} not found; `run` takes a directory made by `binexp train`")
    from binexp.config import register_configs

    register_configs()  # the saved config keeps interpolations (${floordiv:...}) that need binexp's resolvers
    cfg = OmegaConf.load(saved)
    cfg.run_dir = str(run_dir)
    return cfg


def find_checkpoint(run_dir: Path, which: str) -> Path:
    ckpt_dir = run_dir / "checkpoints"
    if which == "last":
        path = ckpt_dir / "last.ckpt"
    elif which == BINARY_WEIGHTS_KEY:
        path = ckpt_dir / f"{BINARY_WEIGHTS_KEY}.ckpt"
    elif which == "best":
        best = sorted(ckpt_dir.glob("best-*.ckpt"))
        path = best[-1] if best else ckpt_dir / "best-*.ckpt"
    else:
        path = Path(which)
    if not path.exists():
        raise ConfigError(
            f"ckpt={which}: {path} not found (allowed: last, best, {BINARY_WEIGHTS_KEY} (Section 4.4's network, saved "
            f"when protocol.binary_weights_epochs > 0), or a checkpoint path)"
        )
    return path


def load_trained(run_dir: Path, ckpt: str, overrides: list[str] | None = None):
    """(run config, data module, trained Classifier, checkpoint path): a run rebuilt from its own saved config
    (`overrides`, dotted key=value, change it, e.g. dataset.root) with the weights of checkpoint `ckpt`."""
    from binexp.train import build_data, build_method, build_module

    cfg = load_run_config(run_dir)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    path = find_checkpoint(run_dir, ckpt)
    dm = build_data(cfg)
    module = build_module(cfg, dm, build_method(cfg))
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get(BINARY_WEIGHTS_KEY):
        freeze_sign_weights(module.net)
    module.load_state_dict(saved["state_dict"])
    return cfg, dm, module, path


def evaluate(cfg: DictConfig) -> dict[str, float]:
    from binexp.train import print_summary, scalar_metrics

    run_dir = Path(cfg.run)
    _, dm, module, ckpt = load_trained(run_dir, cfg.ckpt)
    trainer = pl.Trainer(
        accelerator=cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    metrics = scalar_metrics(trainer.test(module, datamodule=dm, verbose=False)[0])
    if has_step_form(module.net):
        with step_mode(module.net):
            stepped = scalar_metrics(trainer.test(module, datamodule=dm, verbose=False)[0])
        metrics.update({f"{k}_step": v for k, v in stepped.items()})
    out = run_dir / f"eval-{ckpt.stem}.json"
    out.write_text(json.dumps({"checkpoint": str(ckpt), **metrics}, indent=2) + "\n")
    print_summary(run_dir, metrics)
    return metrics
