"""Runs that differ only in `seed`, summarised: mean, standard deviation and count per setting.

A fair comparison of two methods is over several seeds. When the runs of a report vary `seed`, each setting of the
other varying overrides (a method, a t_clip, ...) becomes one row over its finished runs: `report-over-seeds.csv`,
a second table, and, when no other swept key is a number (methods side by side), `accuracy-over-seeds.png`.
Statistics use the finite values a metric has (a diverged run's NaN loss is left out) and say how many that is;
the standard deviation is the sample's (n - 1), empty for one value. Settings are equal when their values are
equal as numbers (t_clip 1 and 1.0 are one setting). A seed appears once per setting: a second run with it (the same
sweep in another folder) is named and left out.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from binexp.metric_format import format_metric

SEED_KEY = "seed"


@dataclass
class Summary:
    mean: float | None
    sd: float | None
    n: int


def summarize(values: list[float]) -> Summary:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return Summary(None, None, 0)
    return Summary(statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else None, len(finite))


@dataclass
class SeedGroup:
    setting: dict[str, str]  # the other varying overrides' values, as the group's first run has them
    runs: list  # binexp.report.Run, finished, in report order

    @property
    def seeds(self) -> list[str]:
        return [r.value(SEED_KEY) for r in self.runs]

    def summary(self, metric: str) -> Summary:
        return summarize([r.metrics[metric] for r in self.runs if metric in r.metrics])

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.setting.items() if v) or "all runs"


def group_over_seeds(runs: list, keys: list[str]) -> list[SeedGroup]:
    """The finished runs grouped by every varying key but `seed`, ordered as the run table orders those keys' values;
    [] when `seed` does not vary or no setting has two runs (then the run table says it all)."""
    from binexp.report import in_override_order, value_order

    if SEED_KEY not in keys:
        return []
    others = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple, SeedGroup] = {}
    for run in in_override_order([r for r in runs if r.finished], others):
        key = tuple(value_order(run.value(k)) for k in others)
        group = groups.setdefault(key, SeedGroup({k: run.value(k) for k in others}, []))
        twin = next((r for r in group.runs if value_order(r.value(SEED_KEY)) == value_order(run.value(SEED_KEY))), None)
        if twin is None:
            group.runs.append(run)
        else:  # the same run twice (a sweep run again into another folder): one seed's result counted once
            print(f"{group.label}: {run.name} repeats seed {run.value(SEED_KEY)} of {twin.name}; the statistics over "
                  f"seeds count {twin.name} only")
    if all(len(g.runs) < 2 for g in groups.values()):
        return []
    return list(groups.values())


def write_seed_csv(groups: list[SeedGroup], out: Path, metrics: list[str]) -> Path:
    path = out / "report-over-seeds.csv"
    keys = list(groups[0].setting)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*keys, "runs", "seeds", *[f"{m}_{stat}" for m in metrics for stat in ("mean", "sd", "n")]])
        for g in groups:
            cells = []
            for m in metrics:
                s = g.summary(m)
                cells += ["" if s.mean is None else s.mean, "" if s.sd is None else s.sd, s.n]
            writer.writerow([*g.setting.values(), len(g.runs), " ".join(g.seeds), *cells])
    return path


def _cell(s: Summary, runs: int) -> str:
    if s.mean is None:
        return "-"
    if s.n > 1:  # a spread of 0 (a size, or two seeds that hit the same count) is still a mean of n
        text = f"{format_metric(s.mean)} ± {format_metric(s.sd) if s.sd else 0}"
    else:
        text = format_metric(s.mean)
    return text if s.n == runs else f"{text} (n={s.n})"  # some runs lack it, or it is not finite there


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
        table.add_row(*g.setting.values(), " ".join(g.seeds), *[_cell(g.summary(m), len(g.runs)) for m in metrics])
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)  # logs and pipes get every column whole


def plot_seed_means(runs, out: Path, metric: str = "test/acc") -> list[Path]:
    """Settings side by side, each its mean over seeds with a one-sd bar and each run's value faintly; drawn when
    no other swept key is a number (accuracy-vs-<key>.png shows those)."""
    from binexp.report import varying_overrides
    from binexp.report.curves import pyplot_to_files, save_figure
    from binexp.report.sweeps import numeric_keys

    keys = varying_overrides(runs)
    if numeric_keys(runs, keys):
        return []
    groups = [g for g in group_over_seeds(runs, keys) if g.summary(metric).n]
    if not groups:
        return []
    plt = pyplot_to_files()

    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.45 * len(groups)))
    for y, g in enumerate(groups):
        s = g.summary(metric)
        ax.errorbar([100 * s.mean], [y], xerr=[100 * s.sd] if s.sd else None, marker="o", capsize=3, color="C0")
        values = [100 * r.metrics[metric] for r in g.runs if metric in r.metrics and math.isfinite(r.metrics[metric])]
        ax.scatter(values, [y] * len(values), s=12, alpha=0.4, color="C0")
    ax.set_yticks(range(len(groups)), [f"{g.label} (n={g.summary(metric).n})" for g in groups])
    ax.set_ylim(len(groups) - 0.5, -0.5)  # the first setting on top
    ax.set(xlabel=f"{metric} (%)", title=f"{metric}, mean ± sd over seeds")
    ax.grid(axis="x", alpha=0.3)
    return [save_figure(fig, out / "accuracy-over-seeds.png")]
