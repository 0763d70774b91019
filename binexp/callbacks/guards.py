"""Stop a run cleanly: on a non-finite loss, and on SIGINT/SIGTERM/SIGUSR1 with a resumable checkpoint."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch

from binexp.errors import NonFiniteLossError, RunInterrupted

log = logging.getLogger(__name__)


class FiniteLossGuard(pl.Callback):
    """Raise `NonFiniteLossError` once the training loss is NaN or inf.

    The check accumulates on the device and reads back every `check_every_n_steps` steps, so a GPU run
    does not synchronise each step. The error keeps the last good checkpoint (nothing is saved after it).
    """

    def __init__(self, check_every_n_steps: int = 10):
        self.check_every_n_steps = max(1, check_every_n_steps)
        self._bad: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        self._bad = bad if self._bad is None else (self._bad | bad)
        if (trainer.global_step % self.check_every_n_steps == 0) and bool(self._bad):
            ckpt = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            kept = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint had been saved yet"
            raise NonFiniteLossError(
                f"training loss became {loss.item()} by step {trainer.global_step} (epoch {trainer.current_epoch}); "
                f"stopped, {kept}. Try a lower optimizer.lr, or check the inputs (dataset.normalize)."
            )


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


class GracefulStop(pl.Callback):
    """On the first SIGINT/SIGTERM/SIGUSR1, finish the current batch, save `checkpoints/last.ckpt` and stop.

    It stops by raising `RunInterrupted` right after saving: letting the epoch wind down instead would let
    ModelCheckpoint overwrite last.ckpt with the epoch marked finished, and a resume would skip its rest.
    On an epoch's last batch it waits for the epoch's end instead (validation included): a checkpoint taken in
    the last batch's end hook counts that batch as not completed, and a resume then loses the next epoch.
    A second Ctrl-C interrupts at once.
    """

    def __init__(self, signals: tuple[str, ...] = STOP_SIGNALS, sync_every_n_steps: int = 10):
        self.sync_every_n_steps = max(1, sync_every_n_steps)
        self.signals = [getattr(signal, s) for s in signals if hasattr(signal, s)]
        self.received: int | None = None
        self.checkpoint: Path | None = None
        self._previous: dict[int, object] = {}
        self._stop_at_epoch_end = False

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: stopping after this batch and saving a checkpoint", signal.Signals(signum).name)

    def on_train_start(self, trainer, pl_module) -> None:
        if not _main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank must stop at the same step; agree every few steps
            if trainer.global_step % self.sync_every_n_steps:
                return
            flag = torch.tensor(float(stop), device=pl_module.device)
            stop = trainer.strategy.reduce(flag, reduce_op="max").item() > 0
        if not stop:
            return
        self.received = self.received or signal.SIGTERM
        if batch_idx + 1 >= trainer.num_training_batches:
            self._stop_at_epoch_end = True
        else:
            self._save_and_stop(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._stop_at_epoch_end:
            self._save_and_stop(trainer)

    def _save_and_stop(self, trainer) -> None:
        run_dir = Path(trainer.default_root_dir)
        self.checkpoint = run_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(self.checkpoint)
        raise RunInterrupted(
            f"stopped at step {trainer.global_step} (epoch {trainer.current_epoch}); saved {self.checkpoint}.\n"
            f"Resume with: binexp train resume={run_dir}"
        )

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_handlers()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class SignalAtStep(pl.Callback):
    """Debugging aid: send this process a signal while it runs the batch that starts at `step`
    (tests preemption and Ctrl-C; the checkpoint then holds step + 1)."""

    def __init__(self, step: int, signal_name: str = "SIGINT"):
        self.step, self.signal_name = step, signal_name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))
