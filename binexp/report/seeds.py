"""Runs that differ only in `seed`, summarised: mean, standard deviation and count per setting.

A fair comparison of two methods is over several seeds. When the runs of a report vary `seed`, each setting of the
other varying overrides (a method, a t_clip, ...) becomes one row over its finished runs:
`report-over-seeds.csv` and a second table. The standard deviation is the sample's (n - 1), empty for one run.
"""

from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

SEED_KEY = "seed"


@dataclass
class SeedGroup:
    setting: dict[str, str]  # the other varying overrides' values
    runs: list  # binexp.report.Run, finished, in report order

    @property
    def seeds(self) -> list[str]:
        return [r.value(SEED_KEY) for r in self.runs]

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]

    def mean_sd(self, metric: str) -> tuple[float | None, float | None]:
        values = self.values(metric)
        if not values:
            return None, None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def group_over_seeds(runs: list, keys: list[str]) -> list[SeedGroup]:
    """The finished runs grouped by every varying key but `seed`, in the runs' order; [] when `seed` does not vary
    or no setting has two seeds (then the run table says it all)."""
    if SEED_KEY not in keys:
        return []
    others = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple[str, ...], SeedGroup] = {}
    for run in runs:
        if run.finished:
            setting = tuple(run.value(k) for k in others)
            groups.setdefault(setting, SeedGroup(dict(zip(others, setting)), [])).runs.append(run)
    if all(len(g.runs) < 2 for g in groups.values()):
        return []
    return list(groups.values())


def write_seed_csv(groups: list[SeedGroup], out: Path, metrics: list[str]) -> Path:
    path = out / "report-over-seeds.csv"
    keys = list(groups[0].setting)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "runs", "seeds", *[f"{m}_{stat}" for m in metrics for stat in ("mean", "sd")]])
        for g in groups:
            stats = [("" if v is None else v) for m in metrics for v in g.mean_sd(m)]
            writer.writerow([*g.setting.values(), len(g.runs), " ".join(g.seeds), *stats])
    return path


def _cell(mean: float | None, sd: float | None) -> str:
    from binexp.report import _format  # the run table's number format

    if mean is None:
        return "-"
    return _format(mean) if not sd else f"{mean:.4f} ± {sd:.4f}"  # equal over the seeds (a size): the value


def print_seed_table(groups: list[SeedGroup], metrics: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mean ± sd over seeds ({sum(len(g.runs) for g in groups)} finished runs)")
    for key in groups[0].setting:
        table.add_column(key)
    table.add_column("seeds")
    for m in metrics:
        table.add_column(m, justify="right")
    for g in groups:
        cells = [_cell(*g.mean_sd(m)) for m in metrics]
        table.add_row(*g.setting.values(), " ".join(g.seeds), *cells)
    Console(width=None if sys.stdout.isatty() else 220).print(table)
