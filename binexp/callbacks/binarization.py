"""Per-layer binarization curves (the ABR paper's Figures 2 and 4 left) and the firing matrix (Section 4.3).

Over the whole test set, for every layer that is a `BinarizationProbe`, the statistics it names: for ABR the share
of units whose output is binary at least 90%, 99% and 99.9% of the time, the share of saturated outputs, the share
of units stuck at one value, and the median |slope|; for SBN the share of |tanh| values above thresholds; for sign
activations (STE, BNN, XNOR) the share of inputs inside the gradient window |x| <= t_clip. Logged to the loggers and appended to `<run dir>/binarization.csv` before
training, every `every_n_epochs` epochs and every `every_n_steps` steps. When a layer's units are (nearly)
all stuck at one value for every test image, training has collapsed: the run stops with a message.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from binexp.atomic_files import replacing
from binexp.binarize.base import evaluating, probes
from binexp.distributed import share_rank_zero_buffers, sum_over_shards
from binexp.errors import BinexpError

log = logging.getLogger(__name__)

CSV_NAME = "binarization.csv"


class TrainingCollapsed(BinexpError):
    exit_code = 4


def measure(net: torch.nn.Module, batches, reduce=None, before_training: bool = False) -> dict[str, dict[str, float]]:
    """{layer name: statistics} over all batches; `reduce(tensor)` sums counts over ranks when given. Before
    training, layers whose statistics need trained BN running statistics (`measured_after_training_starts`) are left
    out; so is a layer the pass never reached (it recorded nothing)."""
    layers = [p for p in probes(net) if not (before_training and p.measured_after_training_starts)]
    if not layers:
        return {}
    for layer in layers:
        layer.probe_reset()
        layer.probing = True
    try:
        with evaluating(net):
            for x, _ in batches:
                net(x)
    finally:
        for layer in layers:
            layer.probing = False
    out = {}
    for layer in layers:
        counts = layer.probe_counts()
        if not counts:  # every rank runs the same layers, so every rank skips it
            continue
        if reduce is not None:
            counts = {k: reduce(v) for k, v in counts.items()}
        out[layer.layer_name] = layer.probe_summary(counts)
    return out


def append_csv(path: Path, step: int, epoch: int, stats: dict[str, dict[str, float]]) -> None:
    """Rows of `stats`; the columns are every statistic the file has seen (blank where a layer's kind has none). A row
    with statistics the header lacks widens it, the earlier rows blank there: the record before training leaves out
    the sign layers, whose statistics start with training."""
    given = {k for values in stats.values() for k in values}
    rows: list[list[str]] = []
    keys: list[str] = []
    if path.exists():
        _drop_torn_row(path)
    if path.exists():
        with path.open(newline="") as f:
            keys = next(csv.reader(f), [])[3:]  # the header only: the rows are read again only to widen them
    if not path.exists() or not given <= set(keys):
        if path.exists():
            with path.open(newline="") as f:
                rows = list(csv.reader(f))[1:]
        wider = sorted(set(keys) | given)
        with replacing(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "epoch", "layer", *wider])
            for row in rows:
                old = dict(zip(keys, row[3:]))
                writer.writerow([*row[:3], *[old.get(k, "") for k in wider]])
        keys = wider
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        for layer, values in stats.items():
            writer.writerow([step, epoch, layer, *[f"{values[k]:.6g}" if k in values else "" for k in keys]])


def drop_rows_after(path: Path, step: int) -> None:
    """The rows measured after `step`: a run killed without warning measured on past its last checkpoint, and its
    resume from that checkpoint measures those steps again."""
    if path.exists():
        _drop_torn_row(path)
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= step]
    if len(kept) < len(rows):
        with replacing(path) as tmp, tmp.open("w", newline="") as f:
            csv.writer(f).writerows(kept)


def _drop_torn_row(path: Path) -> None:
    """A row cut short by a kill mid-append (no final newline) is dropped, so the next row does not run into it; a
    file left without its header goes, and is begun again."""
    with path.open("rb") as f:  # the last byte only: the file grows with the run
        size = f.seek(0, 2)
        if size:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if keep:
        with path.open("r+b") as f:
            f.truncate(len(keep))
    else:
        path.unlink()


def activation_probes(net: torch.nn.Module) -> list:
    return [p for p in probes(net) if p.measures_activations]


def firing_matrix(net: torch.nn.Module, batches, num_classes: int) -> np.ndarray:
    """classes x units: how often each unit of the last probed activation outputs more than 0.5 in step mode
    (1 for ABR's step, +1 for sign), per class."""
    fired = []
    sums: Optional[torch.Tensor] = None
    seen: Optional[torch.Tensor] = None
    handle = activation_probes(net)[-1].register_forward_hook(lambda _m, _i, out: fired.append(out.detach().flatten(1)))
    try:
        with evaluating(net, step=True):
            for x, y in batches:
                net(x)
                onehot = torch.nn.functional.one_hot(y, num_classes).to(torch.float64)
                batch = onehot.T @ (fired.pop() > 0.5).to(torch.float64)
                sums = batch if sums is None else sums + batch
                seen = onehot.sum(0) if seen is None else seen + onehot.sum(0)
    finally:
        handle.remove()
    # integer-valued counts: summed over the ranks' shards they are exactly the whole test set's
    sums, seen = sum_over_shards(sums, batches), sum_over_shards(seen, batches)
    return (sums / seen.clamp_min(1)[:, None]).cpu().numpy()


def clear_units(matrix: np.ndarray, classes: list[str], margin: float = 0.01) -> dict[int, dict[str, list[str]]]:
    """Units with at least one class that always fires them and one that never does (within `margin`)."""
    units = {}
    for u in range(matrix.shape[1]):
        positive = [classes[c] for c in np.flatnonzero(matrix[:, u] >= 1 - margin)]
        negative = [classes[c] for c in np.flatnonzero(matrix[:, u] <= margin)]
        if positive and negative:
            units[u] = {"positive": positive, "negative": negative}
    return units


class BinarizationCurves(pl.Callback):
    def __init__(self, every_n_epochs: Optional[int] = 1, every_n_steps: Optional[int] = None,
                 stop_on_collapse: Optional[float] = 0.99, firing_matrix: bool = True):
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.stop_on_collapse = stop_on_collapse
        self.firing_matrix = firing_matrix
        self._last_step: Optional[int] = None

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_step == trainer.global_step:
            return
        self._last_step = trainer.global_step
        test = trainer.datamodule.batches("test")  # this rank's shard; the counts are summed over ranks
        if len(test) == 0:  # trainer.limit_test_batches=0
            return
        share_rank_zero_buffers(pl_module.net)
        stats = measure(pl_module.net, test, reduce=lambda t: sum_over_shards(t, test),
                        before_training=trainer.global_step == 0)
        if not stats:
            return
        flat = {f"binarization/{layer}/{k}": v for layer, values in stats.items() for k, v in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=trainer.global_step)
        if trainer.is_global_zero:
            # the epoch the step is in, 0-based: after the last epoch Lightning's counter has moved on to max_epochs
            epoch = min(trainer.current_epoch, trainer.max_epochs - 1) if trainer.max_epochs not in (None, -1) \
                else trainer.current_epoch
            append_csv(Path(trainer.default_root_dir) / CSV_NAME, trainer.global_step, epoch, stats)
        self._check_collapse(trainer, stats)

    def _check_collapse(self, trainer: pl.Trainer, stats: dict[str, dict[str, float]]) -> None:
        if self.stop_on_collapse is None:
            return
        for layer, values in stats.items():
            # ABR's and SBN's units that saturate stop learning; a sign layer's `constant` units still pass gradients
            if values.get("stuck", 0.0) >= self.stop_on_collapse:
                raise TrainingCollapsed(
                    f"training collapsed at step {trainer.global_step}: {values['stuck']:.1%} of the units of layer "
                    f"{layer} output the same value for every test image (saturated, so no gradient flows). "
                    f"Try a smaller optimizer.lr (ABR: a smaller schedule.lambda1, and inputs scaled as the paper's, "
                    f"dataset.normalize=mean_only). Checkpoints so far are in {trainer.default_root_dir}."
                )

    def state_dict(self) -> dict[str, Any]:
        # a run resumed from an epoch-end checkpoint starts at a step already measured: no second row for it
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step")

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0:  # the record before training; a resumed run's curve goes on at its next point
            self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._record(trainer, pl_module)
        elif trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            self._record(trainer, pl_module)  # the last step, before CutEpochCheckpoint saves the state after it

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._record(trainer, pl_module)
        if self.firing_matrix and activation_probes(pl_module.net):
            self._write_firing(trainer, pl_module)

    def _write_firing(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        # every rank measures its shard (the sum is a collective); rank zero writes
        test = dm.batches("test", device=pl_module.device)
        if len(test) == 0:  # trainer.limit_test_batches=0
            return
        share_rank_zero_buffers(pl_module.net)
        matrix = firing_matrix(pl_module.net, test, dm.num_classes)
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir)
        np.save(run_dir / "firing_matrix.npy", matrix)
        units = clear_units(matrix, dm.classes)
        (run_dir / "firing_units.json").write_text(json.dumps({str(k): v for k, v in units.items()}, indent=1) + "\n")
        log.info("firing matrix: %d of %d units have classes that always / never fire them", len(units), matrix.shape[1])
        for logger in trainer.loggers:
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_image"):
                writer.add_image("firing_matrix", torch.from_numpy(matrix).float()[None], trainer.global_step)
