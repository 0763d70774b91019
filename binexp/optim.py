"""Learning-rate schedules that torch does not ship."""

from __future__ import annotations

import torch


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
