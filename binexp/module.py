"""The LightningModule: a classifier whose network is built from a binarization method's blocks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from binexp.binarize.base import Method
from binexp.optim import PLAIN_BIASES, BiasRule, param_groups

TRAIN_TOTALS_KEY = "binexp_train_epoch_totals"
FIT_METRICS_KEY = "binexp_fit_metrics"


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def fit_metrics(callback_metrics: dict[str, Any]) -> dict[str, float]:
    """What metrics.json keeps of the values the fit logged: not the per-step, per-epoch or learning-rate copies."""
    return {k: v for k, v in scalar_metrics(callback_metrics).items()
            if not (k.startswith("lr-") or k.endswith("_step") or k.endswith("_epoch"))}


# the metrics Classifier logs once per epoch: the ones a checkpoint callback can rank the epochs by
EPOCH_METRICS = ("val/acc", "val/loss", "train/acc", "train/loss", "train/loss_epoch")


class Classifier(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        method: Method,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Optional[dict[str, Any]] = None,
        hparams: Optional[dict[str, Any]] = None,
        bias_rule: BiasRule = PLAIN_BIASES,
    ):
        super().__init__()
        self.net = net
        self.method = method
        self.optimizer_factory = optimizer
        self.lr_scheduler_spec = lr_scheduler
        self.bias_rule = bias_rule
        if hparams:
            self.save_hyperparameters(hparams)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        # loss sums and image counts added over DDP ranks: Lightning's own sync_dist mean averages the ranks' image
        # counts as integers, and an odd test set (151 + 150 images) came out 301/300 too large
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self._loss_in_bar = True
        # this epoch's training totals: [loss summed over its images, correct predictions] on the device (no step
        # waits for the GPU to read them), and the number of its images on the host. Not a torchmetrics metric:
        # these go into the checkpoint, so a run resumed mid-epoch still reports the whole epoch.
        self._train_totals: Optional[torch.Tensor] = None
        self._train_images = 0
        self.fit_metrics_at_checkpoint: dict[str, float] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name before and after every hook it calls, about 50 times a training step. It is
        # a plain string, which needs none of nn.Module.__setattr__'s parameter, buffer and submodule checks (with
        # binexp.profiling.NoProfiler: 22% less of Lightning's per-step host overhead, docs/RESULTS.md).
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def on_fit_start(self) -> None:
        # Lightning turns a progress-bar metric into a Python number every step, which waits for the GPU;
        # with no bar on screen (batch jobs, benchmarks) the step loss stays on the device.
        self._loss_in_bar = self.trainer.progress_bar_callback is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        # device-resident batches draw their order and augmentation from (seed, epoch)
        set_epoch = getattr(self.trainer.train_dataloader, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.current_epoch)

    def on_train_start(self) -> None:
        if self._train_totals is not None:  # restored from a checkpoint before the module moved to its device
            self._train_totals = self._train_totals.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        totals, images = self._train_totals, self._train_images
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank saves; rank zero writes: every shard
            local = torch.zeros(3, device=self.device)
            if images:
                local[:2] = totals
                local[2] = images
            summed = self.trainer.strategy.reduce(local, reduce_op="sum")
            totals, images = summed[:2], int(summed[2].item())
        checkpoint[TRAIN_TOTALS_KEY] = {"images": images, "totals": None if totals is None else totals.cpu()}
        # A run stopped after its last checkpoint (in the test or the protocol) trains nothing when resumed, so its
        # fit logs nothing: metrics.json then takes the fit's values from here.
        checkpoint[FIT_METRICS_KEY] = fit_metrics(self.trainer.callback_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint taken inside an epoch holds its totals so far (after an epoch's last batch they are reset),
        # so a run resumed there logs that epoch's loss and accuracy over all its batches, not only the later ones.
        # Under DDP they are every shard's, summed: rank zero takes them up and the others start from nothing, so the
        # epoch's sum over the ranks counts each image once.
        self.fit_metrics_at_checkpoint = checkpoint.get(FIT_METRICS_KEY, {})
        saved = checkpoint.get(TRAIN_TOTALS_KEY)
        if saved is not None and saved["images"] and (self._trainer is None or self.trainer.global_rank == 0):
            self._train_totals, self._train_images = saved["totals"], saved["images"]

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum()
            totals = torch.stack((loss.detach().float() * len(y), correct.float()))
        self._train_totals = totals if self._train_images == 0 else self._train_totals + totals
        self._train_images += len(y)
        # Each self.log call costs about a millisecond of host time (Lightning's result collection), which a
        # short GPU step cannot hide: step values are logged only on the steps the logger writes (every step
        # while a progress bar shows the loss), and the epoch values once, on the epoch's last batch.
        # should_update_logs is Lightning's private test for a writing step; test_train pins the steps it gives
        log_step = self._loss_in_bar or self.trainer._logger_connector.should_update_logs
        if log_step:
            self.log("train/loss_step", loss, prog_bar=self._loss_in_bar)
        if self.trainer.is_last_batch or batch_idx + 1 >= self.trainer.num_training_batches:
            self._log_train_epoch()
        extra = self.method.regularization(self.net)
        if extra is not None:
            if log_step:
                self.log("train/regularization_step", extra)  # a step's sample: not a metrics.json key
            return loss + extra
        return loss

    def _log_train_epoch(self) -> None:
        # summed over the processes first, so under DDP both numbers cover every shard, not rank 0's
        totals = torch.cat((self._train_totals, self._train_totals.new_tensor([self._train_images])))
        loss_sum, correct, images = self.trainer.strategy.reduce(totals, reduce_op="sum")
        mean_loss = loss_sum / images
        self.log("train/loss_epoch", mean_loss, on_step=False, on_epoch=True)
        self.log("train/loss", mean_loss, on_step=False, on_epoch=True, logger=False)  # metrics.json's key
        self.log("train/acc", correct / images, on_step=False, on_epoch=True)
        self._train_images = 0  # the next batch starts the next epoch's totals

    def _evaluate(self, batch, stage: str, metric: MulticlassAccuracy, loss: MeanMetric) -> None:
        x, y = batch
        logits = self.net(x)
        metric.update(logits, y)
        loss.update(F.cross_entropy(logits, y), weight=y.numel())
        self.log(f"{stage}/loss", loss, on_epoch=True)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", self.test_acc, self.test_loss)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.method.after_optimizer_step(self.net)

    def configure_optimizers(self):
        lr = self.optimizer_factory.keywords["lr"]
        optimizer = self.optimizer_factory(params=param_groups(self.net, self.method.decays, lr, self.bias_rule))
        if not self.lr_scheduler_spec:
            return optimizer
        spec = dict(self.lr_scheduler_spec)
        scheduler = spec.pop("scheduler")(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **spec}}
