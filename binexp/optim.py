"""What the optimizer sees: its parameter groups (with Caffe's bias multipliers), and the learning-rate
schedules that torch does not ship."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from binexp.builder import build, locate_target, parameters_of
from binexp.errors import ConfigError

# keys of the optimizer config that shape the parameter groups; the torch optimizer never sees them
GROUP_KEYS = ("bias_lr_mult", "bias_decay")


@dataclass(frozen=True)
class BiasRule:
    """Caffe's per-blob multipliers for the biases of conv and linear layers: its reference nets train them at
    twice the learning rate (`lr_mult: 2`) and decay them like the weights (`decay_mult` defaults to 1)."""

    lr_mult: float = 1.0
    decay: bool = False

    @property
    def is_default(self) -> bool:
        return self.lr_mult == 1.0 and not self.decay


PLAIN_BIASES = BiasRule()  # biases at the base lr, without weight decay


def build_optimizer(node: DictConfig) -> tuple[Callable[..., torch.optim.Optimizer], BiasRule]:
    """The optimizer factory (a partial taking `params`) and the bias rule from an `optimizer` config node (a run
    saved before the bias keys existed has none: `binexp eval` rebuilds it with plain biases)."""
    factory = build(node, drop=GROUP_KEYS, later=("params",))
    return factory, BiasRule(float(node.get("bias_lr_mult", 1.0)), bool(node.get("bias_decay", False)))


def param_groups(net: nn.Module, decays: Callable[[str, torch.Tensor], bool], lr: float,
                 bias: BiasRule = PLAIN_BIASES) -> list[dict[str, Any]]:
    """The trainable parameters in groups flagged `decays` (the ScheduleCallback changes the weight decay of
    those only): weights that decay, then those that do not (slopes, BN, biases), then, only when `bias` asks
    for something else, the conv and linear biases at `lr * bias.lr_mult`."""
    layer_biases = set()
    if not bias.is_default:
        layer_biases = {id(m.bias) for m in net.modules()
                        if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(m.bias, nn.Parameter)}
    decay, no_decay, biases = [], [], []
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in layer_biases:
            biases.append(param)
        else:
            (decay if decays(name, param) else no_decay).append(param)
    # named, so the learning-rate curves say which group they are (lr-SGD/decay, not lr-SGD/pg1)
    groups = [{"params": decay, "decays": True, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "decays": False, "name": "no_decay"}]
    if biases:
        group = {"params": biases, "lr": lr * bias.lr_mult, "decays": bias.decay, "name": "bias"}
        if not bias.decay:
            group["weight_decay"] = 0.0
        groups.append(group)
    return groups


def check_scheduler_keys(node: DictConfig) -> None:
    """Name an `lr_scheduler.scheduler` key its class does not take (left behind, e.g., by an experiment that set
    one for another scheduler) before Lightning meets it as a TypeError."""
    if not isinstance(node.get("_target_"), str):
        return  # build names it
    if "last_epoch" in node:
        raise ConfigError("lr_scheduler.scheduler.last_epoch: set by binexp, not by the config (a new run starts the "
                          "scheduler at its first step, a resume restores its step from last.ckpt); delete it")
    params = parameters_of(locate_target(node._target_, "lr_scheduler.scheduler._target_"))
    if params is None:
        return
    unknown = [key for key in node if not str(key).startswith("_") and key not in params]
    if unknown:
        allowed = [name for name in params if name not in ("self", "optimizer", "last_epoch")]
        raise ConfigError(
            f"lr_scheduler.scheduler.{unknown[0]} is not a parameter of {node._target_} (it takes {allowed}); "
            f"if an experiment set it for another scheduler, delete it with '~lr_scheduler.scheduler.{unknown[0]}'"
        )


def build_lr_scheduler(node: DictConfig) -> Callable[..., torch.optim.lr_scheduler.LRScheduler]:
    """The lr scheduler factory (a partial taking `optimizer`) from an `lr_scheduler.scheduler` config node."""
    check_scheduler_keys(node)
    return build(node, named=False, later=("optimizer",))


class CaffeInvLR(torch.optim.lr_scheduler.LRScheduler):
    """Caffe's "inv" policy, stepped per iteration: lr = base_lr * (1 + gamma * iter) ** (-power)."""

    def __init__(self, optimizer: torch.optim.Optimizer, gamma: float = 1e-4, power: float = 0.75, last_epoch: int = -1):
        self.gamma, self.power = gamma, power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = (1 + self.gamma * self.last_epoch) ** (-self.power)
        return [base * factor for base in self.base_lrs]


class MultiStepAt(torch.optim.lr_scheduler.MultiStepLR):
    """Multiply the lr by `gamma` at given fractions of training (0.8 = after 80% of the epochs), so a recipe
    keeps its shape when the number of epochs changes. Stepped per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_epochs: int, at: list[float], gamma: float = 0.1, last_epoch: int = -1):
        super().__init__(optimizer, milestones=drop_epochs(total_epochs, at), gamma=gamma, last_epoch=last_epoch)


def drop_epochs(total_epochs: int, at: list[float]) -> list[int]:
    """The epochs MultiStepAt drops the lr at: two fractions rounding to one epoch make one drop there."""
    return sorted({max(1, int(round(f * total_epochs))) for f in at})
