"""A run's hyper-parameters and final metrics in TensorBoard's HParams tab.

TensorBoard compares runs by a few named values, so a run logs what defines its job, not its whole config: the
config-group choices (`architecture: resnet18`, `method: ste`) and every key the job overrides, resolved
(`method.t_clip: 0.5`, `optimizer.lr: 0.05`), next to its final metrics. A sweep
(`binexp train -m method.t_clip=0.25,0.5`) then shows up as one row per job, and `tensorboard --logdir
<multirun dir>` plots accuracy against t_clip. Lightning's own start-of-fit call logs no HParams summary
(the loggers have `default_hp_metric: false`); train() calls `log_hparams` once the final metrics are known.
"""

from __future__ import annotations

import logging
import shutil
from enum import Enum
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.core.saving import save_hparams_to_yaml
from pytorch_lightning.loggers import TensorBoardLogger

from binexp.hydra_output import recorded_overrides, running_hydra
from binexp.tb_events import rewrite_events

log = logging.getLogger(__name__)

GROUPS = ("dataset", "architecture", "method", "schedule", "optimizer", "lr_scheduler", "experiment")
METRIC_PREFIXES = ("test/", "protocol/")
METRIC_KEYS = ("val/acc_best",)
# run-management keys that say where or how a run happens, not what it is
NOT_HPARAMS = ("resume", "existing_run", "run_dir", "task_name", "paths", "logger", "callbacks", "debug", "hydra")


def job_overrides(run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The job's command-line overrides and config-group choices: those its launches recorded in `.hydra/`, and the
    running launch's."""
    launches, choices = recorded_overrides(run_dir)
    overrides = list(dict.fromkeys(o for launch in launches for o in launch))
    hc = running_hydra()
    if hc is not None:
        overrides += [o for o in hc.overrides.task if o not in overrides]  # a resume's extra overrides
        choices.update(hc.runtime.choices)
    # a resume composes the saved config, which has no defaults list: its empty choices do not count
    return overrides, {k: str(v) for k, v in choices.items() if v is not None}


def _hparam_value(value: Any) -> int | float | str:
    # the HParams plugin takes numbers and strings; torch's summary would turn a bool into 1.0, so it is spelled
    # as on the command line, like null; a list or a dict is shown as its text
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (int, float, str)):
        return value
    if value is None:
        return "null"
    return str(OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)


def job_hparams(cfg: DictConfig, overrides: list[str], choices: dict[str, Any]) -> dict[str, int | float | str]:
    """Group choices and overridden keys -> their resolved values in `cfg`, flattened to dotted names."""
    params: dict[str, int | float | str] = {
        group: str(choices[group]) for group in GROUPS if choices.get(group) is not None
    }
    for item in overrides:
        key, sep, text = str(item).partition("=")
        key = key.lstrip("+~")
        if not sep or key.split(".")[0].split("/")[0] in NOT_HPARAMS or "@" in key:
            continue
        if key in choices or key in GROUPS or "/" in key:  # a group choice: its option name, not the composed node
            params[key] = text
            continue
        value = OmegaConf.select(cfg, key, default=text, throw_on_missing=False)
        params[key] = _hparam_value(value)
    return dict(sorted(params.items()))


def hparam_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(METRIC_PREFIXES) or k in METRIC_KEYS}


def log_hparams(trainer: pl.Trainer, cfg: DictConfig, metrics: dict[str, float], continued: bool = False) -> dict[str, Any]:
    """Write the HParams summary (job hyper-parameters + final metrics) to each TensorBoard logger; rank zero.
    `continued`: this launch went on from a checkpoint, so an earlier launch may have written a session."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if not loggers:
        return {}
    params = job_hparams(cfg, *job_overrides(Path(cfg.run_dir)))
    values = hparam_metrics(metrics)
    from torch.utils.tensorboard.summary import hparams

    _, start, end = hparams(params, values)
    for logger in loggers:
        if continued:  # a run from before FINAL kept its session among the curves
            drop_earlier_sessions(Path(logger.log_dir))
        # the values no other logging wrote at this step, for the Scalars tab (trainer.test wrote test/*, the
        # protocol's first phase its phase1_* when it measured them)
        logger.log_metrics({k: v for k, v in values.items() if not k.startswith(ALREADY_LOGGED)}, step=trainer.global_step)
        logger.experiment.flush()
        logger.experiment.close()  # trainer.test already closed it; logging reopened a new event file
        write_session(Path(logger.log_dir) / FINAL, start, end, values, trainer.global_step)
        hparams_file = Path(logger.log_dir) / logger.NAME_HPARAMS_FILE
        if hparams_file.exists():  # Lightning writes it once; a resume's config (a longer max_epochs) replaces it
            save_hparams_to_yaml(hparams_file, logger.hparams)
    log.info("HParams: %s -> %s", params, values)
    return params


ALREADY_LOGGED = ("test/", "protocol/phase1_")
# the HParams session and its metrics, a run of its own beside the curves: the tab's metric columns are the scalar
# tags of the session's run and the runs under it, so in tb/ every curve (187 columns for SBN's ResNet-18) buried
# the final metrics
FINAL = "final"


def write_session(folder: Path, start, end, values: dict[str, float], step: int) -> None:
    """The session alone, no experiment summary: TensorBoard takes the columns from the first experiment summary
    it finds, so one run's would hide the keys and metrics the other runs of a sweep (or of logs/) have; without
    any it builds them from every session. An earlier launch's session (a resume that lengthened the run) goes:
    the tab shows a run's first session. (The logger's own log_hyperparams writes an experiment summary, and
    merges these flat keys into its hparams.yaml, the full config.)"""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(folder, ignore_errors=True)
    writer = SummaryWriter(str(folder))
    try:
        events = writer._get_file_writer()
        events.add_summary(start, step)
        events.add_summary(end, step)
        for key, value in values.items():
            writer.add_scalar(key, value, step)
    finally:
        writer.close()


def drop_earlier_sessions(log_dir: Path) -> None:
    """Remove the HParams sessions an earlier launch of the run wrote (a resume that lengthened it): TensorBoard's
    tab shows the first session it reads in a run, so it kept the first launch's hyper-parameters. The events' other
    values stay."""
    def without_sessions(event):
        values = [v for v in event.summary.value if v.metadata.plugin_data.plugin_name != "hparams"]
        if len(values) == len(event.summary.value):
            return event
        if not values:
            return None
        kept = type(event)()
        kept.CopyFrom(event)
        del kept.summary.value[:]
        kept.summary.value.extend(values)
        return kept

    rewrite_events(log_dir, without_sessions)
