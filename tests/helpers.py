"""Callbacks and a method the tests plug into runs through config (`+callbacks.x._target_=tests.helpers.X`,
`method._target_=tests.helpers.ShiftedInsideBinarize`)."""

from __future__ import annotations

from typing import Literal, Optional

import pytorch_lightning as pl
import torch

from binexp.binarize.functional import SignActivation, sign_ste
from binexp.binarize.ste import STE


class PoisonWeightsAtStep(pl.Callback):
    """Make the network's weights non-finite at a given step, as a diverging run would: before that step's batch
    (its loss is NaN), or with `after`, once the optimizer step that brings the count to `step` is done (the
    losses so far were all finite)."""

    def __init__(self, step: int, after: bool = False):
        self.step, self.after = step, after

    def _poison(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.after:
            self._poison(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.after:
            self._poison(trainer, pl_module)


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


class _ShiftedSign(SignActivation):
    def binarize(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x - 0.5, self.t_clip)  # wrong: a shift belongs in `threshold`, which step mode honours


class ShiftedInsideBinarize(STE):
    """STE whose activations write a shift into binarize(): its step form (BinaryBN, then the sign) drops it."""

    def act(self, name, channels, *, last=False):
        return _ShiftedSign(name, self.t_clip)


class SignalWhileEvaluating(pl.Callback):
    """Send this process `signal_name` once, at the first batch of the validation of epoch `epoch` (after that
    epoch's training), with `stage="sanity"` of the sanity check before training, or with `stage="test"` of the
    test after training."""

    def __init__(self, stage: str = "validation", epoch: int = 0, signal_name: str = "SIGTERM"):
        self.stage, self.epoch, self.signal_name = stage, epoch, signal_name
        self._sent = False

    def _send(self) -> None:
        import os
        import signal

        if not self._sent:
            self._sent = True
            os.kill(os.getpid(), getattr(signal, self.signal_name))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.stage == "validation" and trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            self._send()
        if self.stage == "sanity" and trainer.sanity_checking:
            self._send()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.stage == "test":
            self._send()


class TypedOptions:
    """A class kept outside binexp's schemas (as a researcher's method is): only its signature types its keys."""

    def __init__(self, flag: bool = False, rate: float = 1.0, count: int = 1, mode: str = "a",
                 limit: Optional[float] = None, kind: Literal["x", "y"] = "x", items: list = (),
                 names: str | list[str] = "all", pair: tuple[int, str] = (1, "a")):
        self.flag, self.rate, self.count, self.mode, self.limit, self.kind = flag, rate, count, mode, limit, kind


class ChangeProcessState(pl.Callback):
    """What Lightning's DDP launcher and a GPU run change process-wide: threads, OMP_NUM_THREADS, cuBLAS's workspace,
    cuDNN's flags."""

    def on_fit_start(self, trainer, pl_module):
        import os

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
        torch.backends.cudnn.deterministic = not torch.backends.cudnn.deterministic


class ValueBranchNet(torch.nn.Module):
    """An architecture whose forward reads a value (as a researcher's may): the meta device cannot run it."""

    def __init__(self, method, image_shape, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(image_shape[0], 4, 3)
        self.head = torch.nn.Linear(max(1, 4 * (image_shape[1] - 2) * (image_shape[2] - 2)), num_classes)

    def forward(self, x):
        if x.abs().max() > 100:  # a tensor's value: .item() on the meta device
            x = x / 100
        return self.head(self.conv(x).flatten(1))
