"""`binexp train`: compose -> seed -> build -> fit -> test -> metrics.json.

    binexp train                                          # LeNet on MNIST, Caffe's recipe
    binexp train dataset=cifar10 architecture=cifar_quick # the ABR paper's CIFAR-10 baseline
    binexp train -m optimizer.lr=1e-3,3e-3                # a sweep: one run directory per job
    binexp train resume=logs/train/runs/<time>            # continue an interrupted run
    binexp train trainer=ddp trainer.devices=4            # Lightning DDP (binexp.distributed)
    binexp train -m ... hydra.sweep.dir=<old sweep>       # re-run a sweep: finished jobs skipped, others continued
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.plugins import TorchCheckpointIO

from binexp import atomic_files
from binexp.binarize.base import Method
from binexp.builder import build, locate_target
from binexp.callbacks.binarization import CSV_NAME
from binexp.callbacks.guards import stop_after_fit
from binexp.callbacks.schedule import ScheduleCallback
from binexp.config import check_override_types
from binexp.csv_logger import CSVLogger
from binexp.data.datamodule import ImageData, draw_seed
from binexp.distributed import (
    StepFormSyncBatchNorm,
    check_strategy,
    launcher_of,
    quiet_other_ranks,
    several_devices,
    strategy_for,
)
from binexp.errors import ConfigError, OtherJobThere, raised_from, user_error
from binexp.hparams import log_hparams
from binexp.hydra_output import (
    LENGTH_KEYS,
    adopt_launch_record,
    discard_launch_record,
    discard_refused_first_launch,
    launch_overrides,
    launch_record,
    running_hydra,
)
from binexp.models import build_model, check_input_fits
from binexp.module import Classifier, fit_metrics, scalar_metrics
from binexp.optim import build_lr_scheduler, build_optimizer
from binexp.process_state import restored_process_state
from binexp.profiling import NoProfiler
from binexp.protocol import PhaseEvaluation, check_protocol_fits, protocol_config, run_protocol
from binexp.ranges import check_ranges
from binexp.run_lock import RunDirLock
from binexp.schedules import WEIGHT_DECAY, Progress, Schedule
from binexp.size import model_size

log = logging.getLogger(__name__)


def build_data(cfg: DictConfig) -> ImageData:
    dm: ImageData = build(cfg.dataset, expect=ImageData, channels_last=bool(cfg.get("channels_last", False)))
    dm.setup()
    return dm


def build_method(cfg: DictConfig) -> Method:
    return build(cfg.method, expect=Method)


def build_schedule(cfg: DictConfig, method: Method) -> Schedule:
    schedule: Schedule = build(cfg.schedule, expect=Schedule)
    missing = [key for key in method.schedule_keys if key not in schedule.provides]
    if missing:
        raise ConfigError(
            f"method={cfg.method.name} reads {missing} from its schedule, but schedule={cfg.schedule.name} "
            f"provides {list(schedule.provides) or 'nothing'}; choose a schedule that provides them."
        )
    unread = [key for key in schedule.provides if key not in method.schedule_keys]
    if schedule.provides and len(unread) == len(schedule.provides) and not _schedules_weight_decay(schedule, cfg):
        raise ConfigError(
            f"schedule={cfg.schedule.name} drives {unread}, which method={cfg.method.name} does not read: the run "
            f"would train as with schedule=constant, under a name that says otherwise; choose schedule=constant "
            f"(method=abr reads two_phase's values, method=sbn exp_nu's)"
        )
    schedule.check(cfg.trainer.max_epochs)
    return schedule


def _schedules_weight_decay(schedule: Schedule, cfg: DictConfig) -> bool:
    """Whether the schedule changes the weight decay at some epoch (two_phase's weight_decay2): that it does for
    any method."""
    epochs = max(int(cfg.trainer.max_epochs or 1), 1)
    return any(WEIGHT_DECAY in schedule.values(Progress(step=e, steps_per_epoch=1, max_epochs=epochs))
               for e in range(epochs))


def build_module(cfg: DictConfig, dm: ImageData, method: Method) -> Classifier:
    net = build_model(cfg.architecture, method, dm.image_shape, dm.num_classes)
    if cfg.get("channels_last", False):
        net = net.to(memory_format=torch.channels_last)
    scheduler = None
    if cfg.get("lr_scheduler"):
        scheduler = OmegaConf.to_container(cfg.lr_scheduler, resolve=True)
        scheduler["scheduler"] = build_lr_scheduler(cfg.lr_scheduler.scheduler)
    hparams = {"config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "input_norm": dm.norm.__dict__}
    optimizer, bias_rule = build_optimizer(cfg.optimizer)
    return Classifier(net, method, dm.num_classes, optimizer, scheduler, hparams=hparams, bias_rule=bias_rule)


def build_callbacks(cfg: DictConfig, schedule: Schedule, method: Method, dm: ImageData) -> list[pl.Callback]:
    callbacks = [build(c, named=False, expect=pl.Callback) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):  # trainer=cluster: Lightning refuses a bar it may not draw
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    if not [lg for lg in (cfg.get("logger") or {}).values() if lg is not None]:  # `~logger`: no learning rate to log
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    if not dm.has_validation:  # dataset.val_size=0: nothing to rank checkpoints by, keep last.ckpt only
        callbacks = [cb for cb in callbacks if not (isinstance(cb, ModelCheckpoint) and cb.monitor)]
    callbacks.insert(0, ScheduleCallback(schedule))  # first: it sets the layers' values that others measure
    if schedule.milestones():
        callbacks.append(PhaseEvaluation(schedule.milestones()))
    return callbacks + method.callbacks()


def check_devices_are_gpus(trainer: DictConfig) -> None:
    """Several devices under accelerator=auto mean GPUs; on a machine without one Lightning would quietly run that
    many CPU processes instead (a GPU job landed on a CPU node runs for days). CPU DDP stays one key away."""
    devices = trainer.get("devices", 1)
    if str(devices).strip() == "auto":  # one CPU process where there is no GPU
        return
    if trainer.get("accelerator", "auto") != "auto" or torch.cuda.is_available() or not several_devices(devices):
        return
    raise ConfigError(f"trainer.devices={devices}: this machine has no GPU, and with trainer.accelerator=auto Lightning "
                      f"would run the devices as CPU processes; set trainer.accelerator=cpu for DDP over CPU "
                      f"processes (gloo), or trainer.devices=1")


def check_sync_batchnorm_has_gpus(trainer: DictConfig) -> None:
    """torch's SyncBatchNorm runs on GPUs only; on CPU processes every rank would fail in its first step."""
    on_cpu = trainer.get("accelerator", "auto") == "cpu" or not torch.cuda.is_available()
    if trainer.get("sync_batchnorm", False) and on_cpu:
        raise ConfigError("trainer.sync_batchnorm=true: torch's SyncBatchNorm needs GPUs, and this run's processes are "
                          "on the CPU; allowed there is false (each rank normalises with its own batch statistics)")


def check_no_time_limit(trainer: DictConfig) -> None:
    """Lightning's max_time ends training inside an epoch and the run then reports itself finished; a resume would
    skip the rest of that epoch. A signal stops a run resumably instead."""
    if trainer.get("max_time") is not None:
        raise ConfigError(f"trainer.max_time={trainer.max_time}: allowed is null. A time limit would end the epoch "
                          f"early and report the run as finished; to stop a run after a time, send it SIGTERM "
                          f"(`timeout -s TERM 4h binexp train ...`; on SLURM the launcher's signal does it): it saves "
                          f"checkpoints/last.ckpt and says how to resume")


def check_nodes_are_started(trainer: DictConfig) -> None:
    """Several nodes need something that starts the process on each of them (a cluster's scheduler, torchrun, or
    NODE_RANK set by hand on each): alone, rank zero waits in the rendezvous for nodes that never come."""
    from pytorch_lightning.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    nodes = trainer.get("num_nodes", 1)
    if nodes == 1:
        return
    started = ("NODE_RANK" in os.environ or {"RANK", "WORLD_SIZE"} <= set(os.environ)  # by hand; Kubeflow's
               or any(env.detect() for env in (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment)))
    if not started:
        raise ConfigError(f"trainer.num_nodes={nodes}: nothing here starts the other nodes (no SLURM job, torchrun, "
                          f"LSF or MPI, and no NODE_RANK or RANK/WORLD_SIZE), so this process would wait for them forever; "
                          f"run it through hydra/launcher=slurm or torchrun, or set trainer.num_nodes=1")


def check_trainer(trainer: DictConfig, on_this_machine: bool = True) -> None:
    """The trainer settings binexp refuses before Lightning sees them; a sweep checks them before its first job,
    those that depend on the machine only where its jobs run on this one (not through a cluster launcher)."""
    check_no_time_limit(trainer)
    check_strategy(trainer.get("strategy", "auto"))
    if on_this_machine:
        check_devices_are_gpus(trainer)
        check_nodes_are_started(trainer)
        check_sync_batchnorm_has_gpus(trainer)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoints through `atomic_files.replacing`. Lightning's own save writes its temporary file in
    TMPDIR and, where that is another filesystem (tmpfs /tmp, a node's own disk under a run on NFS), copies it over
    the checkpoint in place: a kill during the copy left half a last.ckpt and no earlier one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_files.torch_save(checkpoint, path)


def build_loggers(cfg: DictConfig, resumed_at: int | None) -> list[Logger]:
    """The run's loggers. Fit going on from a checkpoint at step N (a resume, a re-run continuing an unfinished run)
    drops what an earlier launch logged after N (see drop_curves_after); a CSV logger is told N + 1, where it
    starts again."""
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        target = locate_target(str(node.get("_target_")), "logger._target_") if node.get("_target_") else None
        kept = resumed_at is not None and isinstance(target, type) and issubclass(target, CSVLogger)
        loggers.append(build(node, named=False, expect=Logger, **({"purge_step": resumed_at + 1} if kept else {})))
    return loggers


def drop_curves_after(trainer: pl.Trainer, step: int) -> None:
    """A run killed without warning (SIGKILL, a lost node) logged on past its last checkpoint, at step N; going on
    from it logs those steps again, and readers drew the curves doubling back. TensorBoard's events and
    binarization.csv's rows after N go (not N's: the curves measured at the end of the epoch that ends at step N
    were logged before that checkpoint was saved)."""
    from binexp.callbacks.binarization import drop_rows_after
    from binexp.tb_events import drop_events_after

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and Path(logger.log_dir).is_dir():
            drop_events_after(Path(logger.log_dir), step)
    drop_rows_after(Path(trainer.default_root_dir) / CSV_NAME, step)


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], run_dir: Path, resumed_at: int | None = None) -> pl.Trainer:
    loggers = build_loggers(cfg, resumed_at)
    check_trainer(cfg.trainer)
    extra = {}
    strategy = cfg.trainer.get("strategy", "auto")
    chosen = strategy_for(strategy, cfg.trainer.get("devices", 1), int(cfg.trainer.get("num_nodes", 1)))
    if chosen is not strategy:
        extra["strategy"] = chosen
    if cfg.trainer.get("profiler") is None:
        extra["profiler"] = NoProfiler()
    if cfg.trainer.get("plugins") is None:
        extra["plugins"] = [AtomicCheckpointIO()]  # last.ckpt is never left half-written by a kill
        if cfg.trainer.get("sync_batchnorm"):  # Lightning's would drop BinaryBN
            extra["plugins"].append(StepFormSyncBatchNorm())
    if cfg.trainer.get("benchmark") and cfg.trainer.get("deterministic") in (True, "warn"):
        # torch ignores cudnn.deterministic while cudnn.benchmark autotunes, so trainer=gpu's benchmark would
        # undo what was asked for (a resume equal to an uninterrupted run, bit for bit)
        log.info("trainer.deterministic=%s: cuDNN autotuning (trainer.benchmark) is off", cfg.trainer.deterministic)
        extra["benchmark"] = False
    try:
        return build(cfg.trainer, drop=tuple(extra), callbacks=callbacks, logger=loggers or False,
                     default_root_dir=str(run_dir), **extra)
    except Exception as err:  # Lightning's refusal (no GPU for accelerator=gpu, device ids on the CPU), wrapped by Hydra
        from pytorch_lightning.utilities.exceptions import MisconfigurationException

        refusal = raised_from(err, (ConfigError, MisconfigurationException, ValueError, TypeError))
        if refusal is None or isinstance(refusal, ConfigError):
            raise
        chosen = ", ".join(f"trainer.{k}={cfg.trainer.get(k)}" for k in ("accelerator", "devices", "precision", "strategy"))
        raise ConfigError(f"trainer: Lightning refused {chosen}: {refusal}") from None


_READ: dict[tuple, dict] = {}


def read_checkpoint(path: Path) -> dict:
    """A checkpoint as torch loads it onto the CPU, read once while the file stays as it is: a launch's start-up
    reads last.ckpt in several steps (the seed, the job, the length), and the file can be large."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _READ:
        _READ.clear()  # one at a time: a sweep's jobs do not pile up their checkpoints
        try:
            _READ[key] = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # pickle, zip and I/O errors alike: no checkpoint, or a damaged one
            raise ConfigError(f"{path} is not a checkpoint torch can read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return _READ[key]


def read_last_checkpoint(path: Path) -> dict:
    """read_checkpoint of a run's last.ckpt, with what to do when a kill (or a full disk) has damaged it."""
    try:
        return read_checkpoint(path)
    except ConfigError as err:
        best = sorted(path.parent.glob("best-*.ckpt"), key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)])
        earlier = f"copy an earlier checkpoint over it (cp {best[-1]} {path}) and launch again, or " if best else ""
        raise ConfigError(f"{err}: cut short or damaged (a process killed while writing it?); {earlier}train the run "
                          f"again from scratch (its command with existing_run=restart)") from None


def forget_checkpoints() -> None:
    _READ.clear()


def last_checkpoint(run_dir: Path) -> Path:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise ConfigError(f"resume={run_dir}: no checkpoint at {ckpt}; nothing to resume from")
    return ckpt


# what a resume may change: how long it trains, where and how it runs, what it logs and evaluates; not what it trains
# (optimizer and scheduler state come back from last.ckpt; seed, data and batching define the steps it continues)
RESUMABLE = (
    "trainer.max_epochs", "trainer.max_steps", "trainer.accelerator", "trainer.strategy", "trainer.precision",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.val_check_interval",
    "trainer.check_val_every_n_epoch", "trainer.num_sanity_val_steps", "trainer.log_every_n_steps",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.deterministic", "trainer.benchmark",
    "trainer.profiler", "trainer.detect_anomaly", "dataset.root", "dataset.download", "dataset.cache_dir",
    "dataset.eval_batch_size", "paths.", "callbacks.", "logger.", "protocol.", "existing_run", "channels_last",
)


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def other_job(saved: dict, cfg: DictConfig) -> list[str]:
    """How checkpoint `saved` was trained unlike the job `cfg` describes ("key: value there, value here"), the keys a
    resume may change left out; [] for this job's checkpoint, or one that records no config (a derived one)."""
    config = saved.get("hyper_parameters", {}).get("config")
    if not config:
        return []
    before, now = job_identity(config), job_identity(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    return [f"{k}: {before[k]!r} there, {now[k]!r} here" for k in sorted(set(before) & set(now))
            if before[k] != now[k] and not resumable(k)]


def check_resume_overrides(overrides: list[str], run_dir: Path, run_cfg: DictConfig) -> None:
    """A resume continues the run it names (`run_cfg`, its saved config): an override of what is trained is refused
    rather than half applied, unless it gives the value the run has (the first launch's command typed again)."""
    for item in overrides:
        key = item.partition("=")[0].lstrip("+~")
        if key.startswith("hydra.") or resumable(key):
            continue
        given = OmegaConf.select(OmegaConf.from_dotlist([item.lstrip("+~")]), key, default="<unset>")
        if given == OmegaConf.select(run_cfg, key, default="<absent>"):
            continue
        raise ConfigError(
            f"{item}: resume={run_dir} continues that run as it was trained (its optimizer and lr scheduler state "
            f"come back from last.ckpt; its seed, data and batching define the steps it goes on with), so {key} "
            f"cannot change; start a new run. A resume takes trainer.max_epochs / max_steps, where and how it runs "
            f"(trainer.accelerator, precision, dataset.root, ...) and callbacks.*, logger.*, protocol.*")


def continue_last_launch(cfg: DictConfig, ckpt: Path, run_dir: Path) -> dict:
    """`resume=`: train for as long as the launch that saved last.ckpt asked (an earlier resume may have extended
    the run), unless this launch sets trainer.max_epochs / max_steps itself; the schedules follow that length.
    A finished run with nothing left to train is refused rather than tested again over its metrics."""
    saved = read_last_checkpoint(ckpt)
    differ = other_job(saved, cfg)
    if differ:  # an override of what is trained, or a last.ckpt copied in from another run: it would train on as this
        raise ConfigError(f"resume={cfg.resume}: {ckpt} trained another job than this launch composes "
                          f"({'; '.join(differ[:3])}); a resume continues the job its last.ckpt trained: start a new "
                          f"run for another")
    overrides = launch_overrides()
    extended = False
    if overrides is not None:  # a config composed by the caller (a test, a script) is taken as it is
        given = {o.partition("=")[0].lstrip("+") for o in overrides}
        before = saved.get("hyper_parameters", {}).get("config", {}).get("trainer", {})
        for dotted in LENGTH_KEYS:
            key = dotted.partition(".")[2]
            if dotted not in given and key in before:
                cfg.trainer[key] = before[key]
            extended = extended or (dotted in given and cfg.trainer[key] != before.get(key))
    epochs = saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    steps = saved["global_step"]
    if extended:
        check_extension_keeps_schedules(cfg, saved.get("hyper_parameters", {}).get("config", {}), epochs)
    max_epochs, max_steps = cfg.trainer.max_epochs, cfg.trainer.max_steps
    done = (max_epochs is not None and max_epochs != -1 and epochs >= max_epochs) or (max_steps != -1 and steps >= max_steps)
    # a checkpoint saved at a validation's end may count its epoch as not yet processed: a run with metrics that
    # this launch does not lengthen is finished all the same
    done = done or (overrides is not None and not extended)
    if done and recorded_at(run_dir) == steps:  # metrics of an earlier, shorter launch leave a stopped extension to go on
        raise ConfigError(
            f"resume={cfg.resume}: the run has trained its trainer.max_epochs={max_epochs} (trainer.max_steps="
            f"{max_steps}): {epochs} epochs, {steps} steps in last.ckpt; pass a larger trainer.max_epochs (or "
            f"max_steps) to train on, or `binexp eval run=...` to evaluate it"
        )
    return saved


def recorded_at(run_dir: Path) -> float | None:
    """The step the run's metrics.json was written at; None without one."""
    path = run_dir / "metrics.json"
    return read_metrics(path).get("trainer/global_step") if path.exists() else None


def check_extension_keeps_schedules(cfg: DictConfig, before: dict, epochs: int) -> None:
    """A resume that lengthens a run keeps what its schedules did over the epochs already trained: a schedule that
    follows trainer.max_epochs would move back (ABR's phase 2 -> 1, SBN's nu 1000 -> 10), and an lr scheduler
    that does (cosine's T_max) comes back from last.ckpt with the old length, so the two would disagree."""
    length = f"trainer.max_epochs={cfg.trainer.max_epochs}"
    if before.get("lr_scheduler") and cfg.get("lr_scheduler"):
        then = before["lr_scheduler"].get("scheduler", {})
        now = OmegaConf.to_container(cfg.lr_scheduler.scheduler, resolve=True, enum_to_str=True)
        changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
        if changed:
            key = changed[0]
            raise ConfigError(
                f"{length}: lr_scheduler.scheduler.{key} follows the run's length ({then.get(key)} -> {now.get(key)}), "
                f"but a resume restores the scheduler from last.ckpt as it was; start a new run with {length}")
    old_epochs = before.get("trainer", {}).get("max_epochs")
    if not before.get("schedule") or old_epochs in (None, -1) or cfg.trainer.max_epochs in (None, -1):
        return
    then, now = build(OmegaConf.create(before["schedule"])), build(cfg.schedule)
    for epoch in range(epochs + 1):
        a = then.values(Progress(step=epoch, steps_per_epoch=1, max_epochs=old_epochs))
        b = now.values(Progress(step=epoch, steps_per_epoch=1, max_epochs=cfg.trainer.max_epochs))
        differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if differing:
            key = differing[0]
            raise ConfigError(
                f"{length}: schedule={cfg.schedule.name} follows the run's length, and over the {epochs} epochs this "
                f"run has trained it would change ({key} at epoch {epoch}: {a.get(key):g} -> {b.get(key):g}); start "
                f"a new run with {length}")


def check_checkpoint_fits(module: pl.LightningModule, saved: dict, cfg: DictConfig) -> None:
    """A resume whose overrides change the network's layers (architecture.width=2) cannot load the run's weights:
    refused before anything is written, rather than by Lightning's size-mismatch traceback inside fit."""
    found = weights_mismatch(module.state_dict(), saved.get("state_dict", {}))
    if found:
        raise ConfigError(f"resume={cfg.resume}: last.ckpt does not fit the network this launch builds ({found}); "
                          f"an override that changes the network's layers cannot continue the run: start a new run")


def weights_mismatch(own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str | None:
    """How the saved `theirs` does not fit the state dict `own` of a built module (keys missing or unexpected,
    shapes that differ), or None where it fits."""
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    shapes = sorted(k for k in set(own) & set(theirs) if own[k].shape != theirs[k].shape)
    if not (missing or unexpected or shapes):
        return None
    return (f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
            if unexpected else ", ".join(f"{k} {tuple(theirs[k].shape)} saved, {tuple(own[k].shape)} built"
                                         for k in shapes[:3]))


def clear_earlier_run(run_dir: Path) -> None:
    """`existing_run=restart`, once the new run's config has been built without error: the earlier run's results go."""
    log.warning("existing_run=restart: %s held an earlier run; training from scratch over it", run_dir)
    for old in (run_dir / "metrics.json", *(run_dir / name for name in EARLIER_RESULTS),
                *run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("eval-*.json")):
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)


def clear_unsaved_curves(run_dir: Path) -> None:
    """A launch killed before its first checkpoint leaves curves and nothing to continue from: the same command
    trains the run from its start, and the old points would be drawn beside the new."""
    for old in (run_dir / CSV_NAME, run_dir / "tb", run_dir / "csv"):
        if old.exists():
            log.info("%s: curves of an earlier launch that saved no checkpoint; the run starts again", old)
            shutil.rmtree(old) if old.is_dir() else old.unlink()


EXISTING_RUN = ("continue", "restart")
# what `existing_run=restart` clears besides metrics.json and the checkpoints: its curves would mix with the new
# run's (TensorBoard reads every event file in tb/), its derived files would describe the old network
EARLIER_RESULTS = (CSV_NAME, "tb", "csv", "fixed_bn.json", "firing_matrix.npy", "firing_units.json", "export", "eval")
# what makes two jobs the same job: a re-run into a directory that holds another job's results is refused
JOB_KEYS = ("dataset", "architecture", "method", "schedule", "optimizer", "lr_scheduler", "protocol", "seed",
            "trainer.max_epochs", "trainer.max_steps")
MACHINE_KEYS = ("dataset.root", "dataset.download")  # may differ between the first run and a requeue


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def job_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved values of JOB_KEYS, flattened (`config` as saved in a checkpoint's hyper-parameters)."""
    out = {}
    for key in JOB_KEYS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out.update(_flat(node, f"{key}."))
    return {k: v for k, v in out.items() if k not in MACHINE_KEYS}


def recorded_job_identity(path: Path) -> dict[str, Any]:
    """job_identity of a run's saved `.hydra/config.yaml`, each job key resolved on its own (the file keeps
    interpolations, some of them Hydra's, which resolve only while Hydra runs); a key that does not resolve is left
    out."""
    from binexp.config import register_configs

    register_configs()  # binexp's resolvers (floordiv, ...)
    return composed_job_identity(OmegaConf.load(path))


def composed_job_identity(saved: DictConfig) -> dict[str, Any]:
    """job_identity of a composed config whose interpolations may include Hydra's (resolved only while Hydra
    runs): each job key resolved on its own, one that does not resolve left out."""
    resolved = OmegaConf.create()
    for key in JOB_KEYS:
        try:
            node = OmegaConf.select(saved, key, default=None)
            value = OmegaConf.to_container(node, resolve=True, enum_to_str=True) if OmegaConf.is_config(node) else node
        except Exception:  # an interpolation only a running Hydra resolves
            continue
        OmegaConf.update(resolved, key, value, merge=False)
    return job_identity(OmegaConf.to_container(resolved))


def _job_label(run_dir: Path) -> str:
    hc = running_hydra()
    if hc is not None and hc.mode is not None and hc.mode.name == "MULTIRUN":
        return f"job {hc.job.num} ({' '.join(hc.overrides.task) or 'no overrides'})"
    return f"run {run_dir}"


def launched_lengths(run_dir: Path) -> dict[str, int]:
    """trainer.max_epochs / max_steps as the run's first launch composed them (`.hydra/config.yaml`, which a resume
    leaves alone), where they are plain numbers."""
    saved = run_dir / ".hydra" / "config.yaml"
    trainer = OmegaConf.load(saved).get("trainer") if saved.exists() else None
    if not OmegaConf.is_dict(trainer):
        return {}
    values = OmegaConf.to_container(trainer, resolve=False)
    return {f"trainer.{key}": values[key] for key in ("max_epochs", "max_steps")
            if isinstance(values.get(key), int) and not isinstance(values.get(key), bool)}


def existing_run(cfg: DictConfig, run_dir: Path) -> tuple[str, Any]:
    """What a run finds in its directory: ("new", None), ("finished", metrics), ("unfinished", last.ckpt) or, with
    `existing_run=restart` over earlier results, ("restart", None): cleared by the caller once its config built.

    A run directory holds results before the run starts only when a job is re-run into it: a sweep re-run with
    the old `hydra.sweep.dir`, a requeued cluster job, `hydra.run.dir=<old run>`. `existing_run=continue`
    (default) skips a finished job and continues an unfinished one from its last.ckpt; `restart` trains from
    scratch. A directory that holds a different job (JOB_KEYS) is refused, naming the keys that differ.
    """
    mode = cfg.get("existing_run", "continue")
    if mode not in EXISTING_RUN:
        raise ConfigError(f"existing_run={mode!r}: allowed are {', '.join(EXISTING_RUN)}")
    metrics_path, ckpt = run_dir / "metrics.json", run_dir / "checkpoints" / "last.ckpt"
    if cfg.get("resume") or not (metrics_path.exists() or ckpt.exists()):
        return "new", None
    if mode == "restart":
        return "restart", None
    saved = read_last_checkpoint(ckpt) if ckpt.exists() else None
    first_launch = run_dir / ".hydra" / "config.yaml"
    before: dict[str, Any] = {}
    if saved is not None:
        before = job_identity(saved.get("hyper_parameters", {}).get("config", {}))
        if metrics_path.exists():  # a resume may have lengthened the finished job: it is the job as first launched
            before.update(launched_lengths(run_dir))
    elif first_launch.exists():  # finished without last.ckpt (callbacks.last_checkpoint=null, or deleted since)
        before = recorded_job_identity(first_launch)
    if before:
        now = job_identity(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        # a key only one side has came or went with a binexp version (a new protocol key, say), not with this job
        differ = sorted(k for k in set(before) & set(now) if before[k] != now[k])
        if before and differ:
            shown = ", ".join(f"{k}: {before.get(k)!r} there, {now.get(k)!r} now" for k in differ[:5])
            raise OtherJobThere(
                f"{run_dir} holds a different job ({shown}). Re-run a sweep with the same overrides as before, pass "
                f"a new hydra.sweep.dir / hydra.run.dir, or existing_run=restart to overwrite it; "
                f"to extend a finished run use resume=<run dir>."
            )
    if metrics_path.exists():
        metrics = read_metrics(metrics_path)
        log.info("SKIPPED %s: %s already holds final metrics (test/acc=%s); delete it or pass "
                 "existing_run=restart to train it again", _job_label(run_dir), metrics_path, metrics.get("test/acc"))
        return "finished", metrics
    log.info("CONTINUING %s from %s (step %s): the run in this directory did not finish",
             _job_label(run_dir), ckpt, saved["global_step"])
    return "unfinished", ckpt


def settle_seed(cfg: DictConfig, run_dir: Path) -> None:
    """`seed=null` becomes one drawn seed, written into the run's saved config: a resume, `binexp eval`, export and
    verify, and every DDP rank then rebuild the same hold-out, normalisation and batch order. A launch into the
    directory of an unfinished run takes the seed that run drew."""
    if cfg.get("seed") is not None:
        return
    last = run_dir / "checkpoints" / "last.ckpt"
    seed = None
    if last.exists():
        seed = read_last_checkpoint(last).get("hyper_parameters", {}).get("config", {}).get("seed")
    if seed is None:
        seed = draw_seed()
    cfg.seed = seed
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.exists():
        recorded = OmegaConf.load(saved)
        recorded.seed = seed
        atomic_files.write_text(saved, OmegaConf.to_yaml(recorded))
    log.info("seed=null: this run's seed is %d (written into %s)", seed, saved)


def read_metrics(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError:  # written whole (os.replace), so only a crash of the machine cuts it
        raise ConfigError(f"{path} is not JSON (cut short?): delete it, and the run goes on from its last.ckpt "
                          f"(or, if that has all the steps, tests it again)") from None


def write_metrics(run_dir: Path, metrics: dict[str, float]) -> Path:
    path = run_dir / "metrics.json"
    atomic_files.write_text(path, json.dumps(dict(sorted(metrics.items())), indent=2) + "\n")
    return path


def print_summary(run_dir: Path, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    from binexp.metric_format import format_metric

    table = Table(title="final metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.items()):
        table.add_row(key, format_metric(value))
    console = Console()
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/bold]")


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job described by a composed config; returns (and writes) its final metrics."""
    started = time.time()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = launch_record(run_dir)
    lock = RunDirLock(run_dir)
    try:
        lock.acquire()
    except ConfigError:
        discard_launch_record(run_dir, record)  # its own re-run record only: `.hydra/` is the running launch's
        raise
    try:
        with restored_process_state():
            return _train(cfg, run_dir, record, started)
    finally:
        lock.release()


def _train(cfg: DictConfig, run_dir: Path, record: Path | None, started: float) -> dict[str, float]:
    try:
        saved = None
        if cfg.get("resume"):
            check_override_types(cfg, launch_overrides() or [])  # types first: a resumed config has no schema
        check_ranges(cfg)  # before a resume reads the given length against the checkpoint's
        if cfg.get("resume"):
            saved = continue_last_launch(cfg, last_checkpoint(Path(cfg.resume)), run_dir)
        settle_seed(cfg, run_dir)
        state, found = existing_run(cfg, run_dir)
        if state == "finished":
            forget_checkpoints()
            discard_launch_record(run_dir, record)
            return found
        pl.seed_everything(cfg.seed, workers=True)
        method = build_method(cfg)
        schedule = build_schedule(cfg, method)
        protocol = protocol_config(cfg)  # checked before the data loads, used after training
        dm = build_data(cfg)
        check_input_fits(cfg.architecture, lambda: build_method(cfg), dm.image_shape, dm.num_classes)
        module = build_module(cfg, dm, method)
        check_protocol_fits(module.net, protocol, f"method={cfg.method.name} architecture={cfg.architecture.name}")
        if saved is not None:
            check_checkpoint_fits(module, saved, cfg)
        callbacks = build_callbacks(cfg, schedule, method, dm)
        resumed_at = saved["global_step"] if saved is not None else (
            read_last_checkpoint(found)["global_step"] if state == "unfinished" else None)
        trainer = build_trainer(cfg, callbacks, run_dir, resumed_at)
        dm.check_training_batches(trainer.world_size)
        dm.check_batch_limits(trainer.world_size, cfg.trainer.limit_train_batches, cfg.trainer.val_check_interval,
                              validates=cfg.trainer.check_val_every_n_epoch is not None)
        dm.check_eval_shards(trainer.world_size, {"val": trainer.limit_val_batches, "test": trainer.limit_test_batches})
        ckpt = last_checkpoint(Path(cfg.resume)) if cfg.get("resume") else found
    except Exception as raised:
        forget_checkpoints()
        err = user_error(raised)  # a constructor's ConfigError comes wrapped by Hydra's instantiate
        if err is None:
            raise
        discard_launch_record(run_dir, record)  # refused before training: this launch leaves no trace
        discard_refused_first_launch(run_dir, record)
        raise err from None
    forget_checkpoints()  # Lightning reads last.ckpt itself, into the trainer
    if state == "restart" and trainer.is_global_zero:  # a DDP child rank must not clear what rank zero writes
        clear_earlier_run(run_dir)
    if state == "new" and not cfg.get("resume") and trainer.is_global_zero:
        clear_unsaved_curves(run_dir)
    if resumed_at is not None and trainer.is_global_zero:
        drop_curves_after(trainer, resumed_at)
    if state in ("new", "restart") and not cfg.get("resume"):
        adopt_launch_record(run_dir, record)
    quiet_other_ranks(trainer.global_rank)
    launcher = launcher_of(trainer)
    if launcher is not None:  # the other DDP ranks train this very config (resolved: same run_dir)
        launcher.rank_config = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        return _fit_test_evaluate(cfg, run_dir, dm, method, module, callbacks, trainer, ckpt, protocol, started)
    finally:
        if launcher is not None:
            launcher.finish()


def _fit_test_evaluate(cfg, run_dir, dm, method, module, callbacks, trainer, ckpt, protocol, started) -> dict[str, float]:
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)  # a signal raises RunInterrupted
    with stop_after_fit(run_dir, trainer):  # fit's signal handling has ended; the trained network is in last.ckpt
        return _test_and_evaluate(cfg, run_dir, dm, method, module, callbacks, trainer, protocol, started)


def _test_and_evaluate(cfg, run_dir, dm, method, module, callbacks, trainer, protocol, started) -> dict[str, float]:
    continued = trainer.ckpt_path is not None  # fit went on from a checkpoint (the test below resets it)
    metrics = fit_metrics(trainer.callback_metrics) or dict(module.fit_metrics_at_checkpoint)
    for cb in callbacks:
        if isinstance(cb, ScheduleCallback):
            metrics.update({f"schedule/{k}": float(v) for k, v in cb.last_values.items()})
    for result in trainer.test(module, datamodule=dm, verbose=False):
        metrics.update(scalar_metrics(result))
    for ckpt_cb in trainer.checkpoint_callbacks:
        if ckpt_cb.monitor == "val/acc" and ckpt_cb.best_model_score is not None:
            metrics["val/acc_best"] = float(ckpt_cb.best_model_score)
    for cb in callbacks:
        if isinstance(cb, PhaseEvaluation):
            metrics.update(cb.results)
    module.to(trainer.strategy.root_device)  # Lightning hands the model back on the CPU
    save_to_run = run_dir if trainer.is_global_zero else None
    metrics.update(run_protocol(module.net, method, dm, protocol, seed=dm.seed, save_to_run=save_to_run))
    metrics.update(model_size(module.net, method.schedule_keys))
    metrics.update({"trainer/epochs": float(trainer.current_epoch), "trainer/global_step": float(trainer.global_step)})
    metrics["time/wall_s"] = time.time() - started
    if trainer.is_global_zero:
        write_metrics(run_dir, metrics)
        log_hparams(trainer, cfg, metrics, continued=continued)
        print_summary(run_dir, metrics)
    return metrics
