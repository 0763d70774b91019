"""Each run beside the published numbers of the experiment it ran (the experiment's `paper:` block): `paper.csv`.

An experiment names its source, the group options (and keys) the numbers are for, and, per metrics.json key, the paper's
value in %; a run whose config has such a block, and those options, gets one row per key: ours, the paper's, the
difference, and the run's own overrides of the experiment's recipe (`trainer.max_epochs=2 dataset.subset=2000`:
then the difference is not the paper's).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional


@dataclass
class PaperRow:
    run: str
    source: str
    metric: str
    ours: Optional[float]  # % ; None when the run has no such metric (stopped early, or a protocol turned off)
    paper: float
    changed: str = ""  # the run's own overrides of the experiment's recipe (epochs, subset, ...): not the paper's setup

    @property
    def difference(self) -> Optional[float]:
        return None if self.ours is None else self.ours - self.paper


def _chosen(config: dict, key: str) -> str:
    """A group's option (its `name`), or a dotted key's value; "" where the run's config has neither."""
    node: object = config
    for part in key.split(".") if "." in key else (key, "name"):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, Enum):  # a composed config's typed option; a saved one holds its name
        node = node.value
    return "" if node is None or isinstance(node, (dict, list)) else str(node)


def other_choices(config: dict, paper: dict) -> dict[str, str]:
    """key -> the run's option or value, where it is not the one the paper's numbers are for."""
    ran = {key: _chosen(config, key) for key in paper.get("choices") or {}}
    return {key: value for key, value in ran.items() if value != str(paper["choices"][key])}


def paper_rows(runs) -> tuple[list[PaperRow], list[str]]:
    """The rows beside the papers, and a line for each run of an experiment that picked what its numbers are not for."""
    rows, left_out = [], []
    for r in runs:
        paper = (r.config or {}).get("paper") or {}
        other = other_choices(r.config or {}, paper)
        if other:
            left_out.append(f"{r.name}: not beside {paper.get('source', 'the paper')}, whose numbers are for "
                            + ", ".join(f"{g}={paper['choices'][g]}" for g in other) + " (the run: "
                            + ", ".join(f"{g}={o}" for g, o in other.items()) + ")")
            continue
        changed = " ".join(f"{k}={v}" for k, v in sorted(r.overrides.items()) if not _not_recipe(k)
                           and k not in (paper.get("choices") or {}))
        for metric, value in (paper.get("metrics") or {}).items():
            ours = r.metrics.get(metric)
            rows.append(PaperRow(r.name, paper.get("source", ""), metric, None if ours is None else 100 * ours,
                                 float(value), changed))
    return rows, left_out


# where and how a run ran, which `trainer=gpu` / `trainer=cluster` choose: the trainer's other keys
# (`trainer.max_epochs`, `limit_train_batches`, `accumulate_grad_batches`, ...) are the recipe's
HARDWARE_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.precision",
                 "trainer.sync_batchnorm", "trainer.deterministic", "trainer.benchmark", "trainer.enable_progress_bar",
                 "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.profiler", "channels_last",
                 "dataset.root", "dataset.download", "dataset.cache_dir")


def _not_recipe(key: str) -> bool:
    """Which recipe a run took, its draw, where it ran and what it measured and logged: not a change of the
    recipe."""
    return key in ("experiment", "seed", "trainer", "logger", "existing_run", *HARDWARE_KEYS) or key.startswith(
        ("paths.", "hydra.", "callbacks.", "logger."))


def _pct(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def write_paper_table(runs, out: Path) -> list[Path]:
    rows, left_out = paper_rows(runs)
    for line in left_out:
        print(line)
    if not rows:
        return []
    from rich.console import Console
    from rich.table import Table

    table = Table(title="against the papers (%)")
    changed = any(row.changed for row in rows)
    columns = [("run", "left"), ("paper", "left"), ("metric", "left"), ("ours", "right"), ("paper's", "right"),
               ("ours - paper's", "right"), *([("the run changed", "left")] if changed else [])]
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(row.run, row.source, row.metric, _pct(row.ours), _pct(row.paper), _pct(row.difference, signed=True),
                      *([row.changed] if changed else []))
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)  # logs and pipes get every column whole
    if changed:
        print("Runs with changes did not train the experiment's recipe as it is: their difference is not the paper's.")
    path = out / "paper.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "source", "metric", "ours", "paper", "difference", "changed"])
        for row in rows:
            writer.writerow([row.run, row.source, row.metric,
                             *("" if v is None else round(v, 2) for v in (row.ours, row.paper, row.difference)), row.changed])
    return [path]
