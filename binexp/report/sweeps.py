"""Accuracy against a swept numeric key (BMXNet's Figure 4a for method.t_clip): `accuracy-vs-<key>.png`.

Every varying override whose values are all numbers gets a plot; runs that also differ in other overrides are
drawn as separate lines.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def plot_sweeps(runs, out: Path, metric: str = "test/acc") -> list[Path]:
    from binexp.report import number, varying_overrides
    from binexp.report.curves import add_legend, crowded, save_figure

    keys = varying_overrides(runs)
    numeric = [k for k in keys if all(number(r.value(k)) is not None for r in runs)]
    if len(runs) < 2 or not numeric:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key in numeric:
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in runs:
            if metric in r.metrics:
                label = ", ".join(f"{k}={v}" for k in keys if k != key and (v := r.value(k))) or metric
                lines[label].append((number(r.value(key)), 100 * r.metrics[metric]))
        if not lines:  # no run has finished
            continue
        fig, ax = plt.subplots(figsize=(8, 3.5) if crowded(len(lines)) else (5, 3.5))
        for label, points in sorted(lines.items()):
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=label)
        ax.set(xlabel=key, ylabel=f"{metric} (%)", title=f"{metric} vs {key}")
        if len(lines) > 1:
            add_legend(ax, len(lines), fontsize="small")
        written.append(save_figure(fig, out / f"accuracy-vs-{key.replace('/', '_')}.png"))
    return written
