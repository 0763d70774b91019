"""Writes the schedule's values into the layers' 0-d buffers before every training step."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from binexp.schedules import WEIGHT_DECAY, Progress, Schedule


def write_buffers(model: torch.nn.Module, values: dict[str, float]) -> int:
    """Fill every buffer named like a schedule value, in place; returns how many buffers were written."""
    written = 0
    for module in model.modules():
        for key, value in values.items():
            buf = module._buffers.get(key)
            if buf is not None:
                buf.fill_(value)
                written += 1
    return written


def set_weight_decay(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set the decay of the groups that decay; slopes, biases and BN stay at 0 (the `decays` group flag)."""
    for group in optimizer.param_groups:
        if group.get("decays", group["weight_decay"] > 0):  # checkpoints from before the flag
            group["weight_decay"] = value


class ScheduleCallback(pl.Callback):
    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self._values: dict[str, float] = {}  # those of the last step trained (or restored)

    def progress(self, trainer: pl.Trainer) -> Progress:
        # Lightning also steps on an epoch's last batch when the accumulation is short, so an epoch is ceil(n/a) steps
        steps_per_epoch = max(-(-int(trainer.num_training_batches) // int(trainer.accumulate_grad_batches)), 1)
        return Progress(trainer.global_step, steps_per_epoch, int(trainer.max_epochs or 1))

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        values = self.schedule.values(self.progress(trainer))
        if values:
            write_buffers(pl_module, values)
            if WEIGHT_DECAY in values:
                for optimizer in trainer.optimizers:
                    set_weight_decay(optimizer, values[WEIGHT_DECAY])
        return values

    def on_train_start(self, trainer, pl_module) -> None:
        # the layers hold the values of the step about to train before anything measures them (the curves' record
        # before training runs next, in on_train_start: this callback comes first)
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        values = self._apply(trainer, pl_module)
        if not values:
            return
        self._values = values
        # on the steps the logger writes, as the module's step values: logged at another step, a value would be
        # written steps later under a later step, or dropped at an epoch's end
        if trainer._logger_connector.should_update_logs:
            pl_module.log_dict({f"schedule/{k}": float(v) for k, v in values.items()}, on_step=True, on_epoch=False)

    @property
    def last_values(self) -> dict[str, float]:
        """The values of the last step trained: metrics.json's `schedule/*` (the step log above samples every
        trainer.log_every_n_steps steps, and its last sample can be from an earlier phase)."""
        return dict(self._values)

    def state_dict(self) -> dict[str, Any]:
        # a run resumed after its last step (stopped in the test or the protocol) trains none, and reports these
        return {"values": dict(self._values)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._values = dict(state_dict.get("values", {}))
