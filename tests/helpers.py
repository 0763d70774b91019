"""Callbacks the tests plug into runs through config (`+callbacks.x._target_=tests.helpers.X`)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class PoisonWeightsAtStep(pl.Callback):
    """Make the network's weights non-finite at a given step, as a diverging run would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


class ShiftBiasesAtStep(pl.Callback):
    """Set every bias of the network to `value` at a given step, saturating the units after them."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for name, p in pl_module.named_parameters():
                    if name.endswith(".bias"):
                        p.fill_(self.value)


class RecordBatches(pl.Callback):
    """Append (global_step, first labels of the batch, lr) of every training batch to a list file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {batch_idx} {batch[1][:4].tolist()} {lr:.8f}\n")
