"""What the optimizer sees: its parameter groups (with Caffe's bias multipliers), and the learning-rate
schedules that torch does not ship."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from binexp.builder import build

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
    factory = build(node, drop=GROUP_KEYS)
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
    groups = [{"params": decay, "decays": True}, {"params": no_decay, "weight_decay": 0.0, "decays": False}]
    if biases:
        group = {"params": biases, "lr": lr * bias.lr_mult, "decays": bias.decay}
        if not bias.decay:
            group["weight_decay"] = 0.0
        groups.append(group)
    return groups


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
        milestones = sorted({max(1, int(round(f * total_epochs))) for f in at})
        super().__init__(optimizer, milestones=milestones, gamma=gamma, last_epoch=last_epoch)
