"""Lightning DDP for Hydra runs, and the helpers that make sharded evaluation add up to one process's numbers.

    binexp train trainer=ddp trainer.devices=4                        # one node, 4 GPUs
    binexp train trainer=ddp trainer.accelerator=cpu trainer.devices=2  # 2 CPU processes over gloo

Lightning starts ranks 1..N-1 by re-running the command line; under Hydra that means re-composing the config
(timestamps and all) and, when `binexp` runs a task word before Hydra, a command Lightning cannot rebuild.
`DDPStrategy` keeps Lightning's DDP but starts the other ranks as `python -m binexp.distributed` with the
launching rank's *resolved* config in the environment: they train the same job into the same run directory
and never run Hydra. Where the cluster starts the processes itself (SLURM tasks, torchrun), nothing changes.

Evaluation data is sharded without padding (`DeviceBatches` gives rank r the samples r, r+W, ...), so sums
of counts over ranks (`sum_over_shards`) and features gathered back in dataset order (`gather_in_order`) give
exactly what one process computes over the whole set.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import subprocess
import sys
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch.nn.modules.batchnorm import _BatchNorm

from binexp.errors import ConfigError

log = logging.getLogger(__name__)

RANK_CONFIG_ENV = "BINEXP_RANK_CONFIG"
LAUNCHER_PID_ENV = "BINEXP_LAUNCHER_PID"
# what Lightning's launcher writes into the launching process's environment
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class ChildRankLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher, but each child runs `python -m binexp.distributed` on `rank_config`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rank_config: str | None = None  # the resolved config as YAML, set by binexp.train
        self._saved_env: dict[str, str | None] | None = None

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        self.procs = []
        if self.rank_config is None:
            raise RuntimeError("binexp DDPStrategy: no config for the child ranks; start runs through binexp.train.train")
        self._saved_env = {k: os.environ.get(k) for k in _LAUNCH_ENV}
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank), RANK_CONFIG_ENV: self.rank_config,
                         LAUNCHER_PID_ENV: str(os.getpid())}
            if os.environ.get("PL_GLOBAL_SEED") is None:
                child_env.pop("PL_GLOBAL_SEED", None)
            self.procs.append(subprocess.Popen([sys.executable, "-m", "binexp.distributed"], env=child_env))

    def finish(self, timeout_s: float = 120.0) -> None:
        """After a run in the launching process: reap the children and undo the environment, so the next job
        of an in-process sweep launches its own ranks instead of believing it is one of these."""
        # Lightning's observer thread watches this very list and SIGKILLs the launching process once a child has
        # died by a signal: emptied, it stops, and a child killed here does not take a sweep's next job with it
        procs, self.procs[:] = list(self.procs), []
        for proc in procs:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("rank process %d did not exit; killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self._saved_env is not None:
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved_env = None
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


class DDPStrategy(pl.strategies.DDPStrategy):
    """Lightning's DDP (`trainer=ddp`); child ranks get the run's config instead of the command line."""

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        self._launcher = ChildRankLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


class StepFormSyncBatchNorm(TorchSyncBatchNorm):
    """`trainer.sync_batchnorm=true` that keeps every batch norm's own class. Lightning's plugin replaces each by a
    plain SyncBatchNorm and, after fit, by a plain batch norm: a SignBatchNorm lost its BinaryBN step form, so the
    protocol's 8-bit thresholds and the export no longer found it. Here each layer's class is swapped in place (a
    SyncBatchNorm is a batch norm with a process group) and swapped back, so parameters, buffers and attributes
    stay the layer's own."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        from binexp.binarize.binary_bn import SyncSignBatchNorm, _BinaryBNStepForm

        for module in model.modules():
            if isinstance(module, _BatchNorm) and not isinstance(module, torch.nn.SyncBatchNorm):
                module._unsynced_class = type(module)
                module.__class__ = SyncSignBatchNorm if isinstance(module, _BinaryBNStepForm) else torch.nn.SyncBatchNorm
                module.process_group = None  # the whole world, as Lightning's
        return model

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        for module in model.modules():
            original = module.__dict__.pop("_unsynced_class", None)
            if original is not None:
                module.__class__ = original
                del module.process_group
        return model


def share_rank_zero_buffers(net: torch.nn.Module) -> None:
    """Every rank takes rank zero's buffers (BN running statistics), which the checkpoint saves. DDP copies them only
    at the next forward through its wrapper, and each rank's BN has run on its own shard since: a measurement that
    calls the network directly (the curves, the firing matrix, a milestone's protocol) would mix the ranks'
    statistics. Collective: every rank calls it at the same point; a no-op without a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)


def die_with_parent() -> None:
    """A child rank ends when the launching process does (Linux: PR_SET_PDEATHSIG). Killed before Lightning's
    handlers were in, the launcher left its children waiting in the rendezvous, orphaned, for the process group's
    30-minute timeout."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the launcher's own stop handling is all there is
        return
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and os.getppid() != int(launcher):  # the launcher was gone before the request took effect
        os._exit(143)


def several_devices(devices: Any) -> bool:
    """`trainer.devices` asks for more than one device (a count, a list, \"0,1\", or all of them)."""
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if isinstance(devices, str):
        devices = devices.strip()
        if devices in ("auto", "-1"):
            return True
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()]) > 1
        return devices.isdigit() and int(devices) > 1
    return devices == -1 or (isinstance(devices, int) and devices > 1)


def strategy_for(strategy: Any, devices: Any, num_nodes: int) -> Any:
    """`trainer.strategy=ddp`, or `auto` on several devices or nodes (where Lightning would pick its own DDP
    and re-run the command line), becomes binexp's DDPStrategy; anything else is passed to Lightning as is."""
    if isinstance(strategy, str) and (strategy == "ddp" or (strategy == "auto" and (several_devices(devices) or num_nodes > 1))):
        return DDPStrategy()
    return strategy


STRATEGY_NAMES = ("auto", "ddp")
BACKENDS = ("gloo", "nccl", "mpi", "ucc")


def check_strategy(strategy: Any) -> None:
    """trainer.strategy as binexp runs it: Lightning's other strategy names (ddp_spawn pickles the trainer, which
    binexp's signal handling does not survive; FSDP and DeepSpeed shard what the methods read whole) are refused, and a
    strategy node's keys are checked against the parameters of its class and of torch's DistributedDataParallel,
    to which DDPStrategy hands on what it does not take itself (a typo reached it as a TypeError)."""
    if isinstance(strategy, str):
        if strategy not in STRATEGY_NAMES:
            raise ConfigError(f"trainer.strategy={strategy}: allowed are {', '.join(STRATEGY_NAMES)} (binexp's DDP, whose "
                              f"other ranks train the launching rank's config), or trainer=ddp")
        return
    if not OmegaConf.is_dict(strategy) or not isinstance(strategy.get("_target_"), str):
        return  # build names a node without a _target_
    from binexp.builder import locate_target

    cls = locate_target(strategy._target_, "trainer.strategy._target_")
    if not (isinstance(cls, type) and issubclass(cls, pl.strategies.DDPStrategy)):
        return
    named = [*inspect.signature(pl.strategies.DDPStrategy.__init__).parameters.values(),
             *inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters.values()]
    takes = [p.name for p in named if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in (
        "self", "module", "accelerator", "parallel_devices", "cluster_environment", "checkpoint_io", "precision_plugin")]
    unknown = [k for k in strategy if not str(k).startswith("_") and k not in takes]
    if unknown:
        raise ConfigError(f"trainer.strategy.{unknown[0]}: not a parameter of {strategy._target_} or of torch's "
                          f"DistributedDataParallel (they take {', '.join(dict.fromkeys(takes))})")
    backend = strategy.get("process_group_backend")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"trainer.strategy.process_group_backend={backend!r}: allowed are null (Lightning's choice: "
                          f"nccl on GPUs, gloo on CPUs), {', '.join(BACKENDS)}")


def launcher_of(trainer: pl.Trainer) -> ChildRankLauncher | None:
    launcher = getattr(trainer.strategy, "launcher", None)
    return launcher if isinstance(launcher, ChildRankLauncher) else None


# ---- sharded evaluation ----------------------------------------------------------------------------------
def world_of(batches: Any) -> int:
    return int(getattr(batches, "world_size", 1))


def _require_group(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{what}: the batches are one shard of {what}, but torch.distributed is not initialized")


def sum_over_shards(t: torch.Tensor, batches: Any) -> torch.Tensor:
    """`t` summed over the ranks when `batches` is one rank's shard (world_size > 1); else `t` itself."""
    if world_of(batches) == 1:
        return t
    _require_group("sum_over_shards")
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_in_order(t: torch.Tensor, batches: Any) -> torch.Tensor:
    """Rows of every rank's shard put back in dataset order: rank r holds rows r, r+W, r+2W, ... of the whole.

    Shards differ in length by at most one row; they are padded for all_gather and cut back after."""
    world = world_of(batches)
    if world == 1:
        return t
    _require_group("gather_in_order")
    lengths = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor([len(t)], dtype=torch.long, device=t.device))
    lengths = [int(n.item()) for n in lengths]
    longest = max(lengths)
    padded = torch.zeros(longest, *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    out = torch.empty(sum(lengths), *t.shape[1:], dtype=t.dtype, device=t.device)
    for rank, (part, n) in enumerate(zip(parts, lengths)):
        out[rank::world] = part[:n]
    return out


def quiet_other_ranks(rank: int) -> None:
    """Only rank zero logs progress: the others keep warnings and errors (Hydra gives every SLURM task the
    same train.log, and children of the launcher print to the same terminal)."""
    if rank != 0:
        for name in ("binexp", "pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    """Entry of ranks 1..N-1 started by `ChildRankLauncher`: train the launching rank's config, no Hydra."""
    from omegaconf import OmegaConf

    from binexp.callbacks.binarization import TrainingCollapsed
    from binexp.config import register_configs
    from binexp.errors import BinexpError, NonFiniteLossError, RunInterrupted
    from binexp.train import train

    text = os.environ.get(RANK_CONFIG_ENV)
    if not text:
        raise SystemExit(f"python -m binexp.distributed is started by binexp's DDPStrategy ({RANK_CONFIG_ENV} is unset)")
    die_with_parent()
    rank = int(os.environ.get("LOCAL_RANK", "1"))  # a child: never rank zero
    logging.basicConfig(level=logging.WARNING, format=f"[local rank {rank}] %(levelname)s %(name)s: %(message)s")
    quiet_other_ranks(rank)
    register_configs()
    try:
        train(OmegaConf.create(text))
    except (RunInterrupted, NonFiniteLossError, TrainingCollapsed):
        # every rank stops (or collapses) alike and rank zero reports it (the resume command); a non-zero exit here would make Lightning's
        # process observer kill rank zero before it does, and with it a sweep's later jobs
        raise SystemExit(0) from None
    except BinexpError as err:
        print(f"binexp (rank {rank}): error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    main()
