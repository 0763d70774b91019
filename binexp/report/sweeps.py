"""Accuracy against a swept numeric key (BMXNet's Figure 4a for method.t_clip): `accuracy-vs-<key>.png`.

Every varying override whose values are all numbers gets a plot, `seed` excepted; runs that also differ in other
overrides are drawn as separate lines. Runs that differ only in `seed` are one point: their mean, with a bar of one
standard deviation, and each run's value drawn faintly around it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path


def plot_sweeps(runs, out: Path, metric: str = "test/acc") -> list[Path]:
    from binexp.report import number, varying_overrides
    from binexp.report.curves import add_legend, crowded, save_figure
    from binexp.report.seeds import SEED_KEY

    keys = varying_overrides(runs)
    numeric = [k for k in keys if k != SEED_KEY and all(number(r.value(k)) is not None for r in runs)]
    if len(runs) < 2 or not numeric:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in numeric:
        lines: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in runs:
            if metric in r.metrics:
                label = ", ".join(f"{k}={v}" for k in keys if k not in (key, SEED_KEY) and (v := r.value(k))) or metric
                lines[label][number(r.value(key))].append(100 * r.metrics[metric])
        if not lines:  # no run has finished
            continue
        fig, ax = plt.subplots(figsize=(8, 3.5) if crowded(len(lines)) else (5, 3.5))
        for label, points in sorted(lines.items()):
            xs = sorted(points)
            means = [statistics.fmean(points[x]) for x in xs]
            sds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
            drawn = ax.errorbar(xs, means, yerr=sds if any(sds) else None, marker="o", capsize=3, label=label)
            if any(len(points[x]) > 1 for x in xs):
                seeds_x = [x for x in xs for _ in points[x]]
                ax.scatter(seeds_x, [v for x in xs for v in points[x]], s=10, alpha=0.35, color=drawn[0].get_color())
        seeds = any(len(p) > 1 for pts in lines.values() for p in pts.values())
        ax.set(xlabel=key, ylabel=f"{metric} (%)", title=f"{metric} vs {key}" + (" (mean ± sd over seeds)" if seeds else ""))
        if len(lines) > 1:
            add_legend(ax, len(lines), fontsize="small")
        written.append(save_figure(fig, out / f"accuracy-vs-{key.replace('/', '_')}.png"))
    return written
