"""Lightning's CSVLogger, kept across the launches of one run. Lightning's writer deletes `metrics.csv` when it
starts, so a run that went on from its last.ckpt (a resume, a re-run of an unfinished job) kept only the rows of its
last launch. Given `purge_step` (the step after the checkpoint fit goes on from), the rows before it stay and those
a kill without warning left after it go, as TensorBoard's purge does with its events."""

from __future__ import annotations

import csv
from typing import Any, Optional

from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from binexp.atomic_files import replacing


class _KeptRowsWriter(ExperimentWriter):
    def __init__(self, log_dir: str, purge_step: Optional[int]):
        self._purge_step = purge_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if self._purge_step is None or not self._fs.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()  # a new run: Lightning's (an old file goes)
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [row for row in reader if _step(row) is None or _step(row) < self._purge_step]
            keys = sorted(reader.fieldnames or [])  # in the order the rows to come are appended in (Lightning's)
        with replacing(self.metrics_file_path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys  # widened, and the file rewritten, when new keys come


def _step(row: dict[str, Any]) -> Optional[int]:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class CSVLogger(LightningCSVLogger):
    def __init__(self, *args: Any, purge_step: Optional[int] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._purge_step = purge_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptRowsWriter(log_dir=self.log_dir, purge_step=self._purge_step)
        return self._experiment
