"""Plain-text progress for batch jobs (`trainer=cluster`): a log line every N steps and one per epoch.

Live progress bars draw nothing useful into a SLURM output file; these lines go through Python logging, so they
land in the job's output and in the run's train.log. Throughput counts the images of all ranks.
"""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)


class LogProgress(pl.Callback):
    def __init__(self, every_n_steps: int = 100):
        self.every_n_steps = max(1, every_n_steps)
        self._t0 = 0.0
        self._images = 0
        self._epoch_t0 = 0.0
        self._reported = 0  # the last optimizer step reported: with gradient accumulation a step spans batches

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = self._epoch_t0 = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images += len(batch[1]) * trainer.world_size  # ranks train equal-sized shards
        step = trainer.global_step
        if step > self._reported and step % self.every_n_steps == 0:
            self._reported = step
            now = time.perf_counter()
            rate = self._images / max(now - self._t0, 1e-9)
            self._t0, self._images = now, 0
            self._report(trainer, f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
                                  f"{batch_idx + 1}/{trainer.num_training_batches}): {rate:.0f} img/s", ("train/loss_step",))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._report(trainer, f"epoch {trainer.current_epoch} done in {time.perf_counter() - self._epoch_t0:.1f}s "
                              "(validation included)", ("train/loss_epoch", "train/acc", "val/acc", "val/loss"))

    @rank_zero_only
    def _report(self, trainer, where: str, keys: tuple[str, ...]) -> None:
        shown = {k: float(trainer.callback_metrics[k]) for k in keys if k in trainer.callback_metrics}
        log.info("%s %s", where, " ".join(f"{k}={v:.4f}" for k, v in shown.items()))
