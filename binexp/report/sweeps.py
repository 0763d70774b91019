"""Accuracy against a swept numeric key (BMXNet's Figure 4a for method.t_clip): `accuracy-vs-<key>.png`.

Every varying override with two or more numeric values gets a plot, `seed` excepted; runs without a number for it
(a baseline of another method, a null) are left out of that plot, and the report names them. Runs that also differ
in other overrides are drawn as separate lines. Runs that differ only in `seed` are one point: their mean, with a bar of one
standard deviation, and each run's value drawn faintly around it (binexp.report.seeds).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from binexp.report.seeds import SEED_KEY, Summary, summarize


def sweep_points(runs, key: str, keys: list[str], metric: str) -> dict[str, list[tuple[float, Summary, list[float]]]]:
    """{line label: [(value of `key`, summary of `metric` in %, the runs' values in %)]} sorted by the value; the
    label names the other varying keys but `seed`, so a setting's seeds are one point."""
    from binexp.report import number, value_order

    others = [k for k in keys if k not in (key, SEED_KEY)]
    labels: dict[tuple, str] = {}  # a line per setting of the other keys, compared as the seeds table compares them
    # {setting: {x: {seed: value}}}: a seed's run found twice (a sweep run again elsewhere) counts once, the first
    lines: dict[tuple, dict[float, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        if metric in r.metrics and number(r.value(key)) is not None:
            setting = tuple(value_order(r.value(k)) for k in others)
            labels.setdefault(setting, ", ".join(f"{k}={v}" for k in others if (v := r.value(k))) or metric)
            lines[setting][number(r.value(key))].setdefault(value_order(r.value(SEED_KEY)), 100 * r.metrics[metric])
    return {labels[s]: [(x, summarize(list(points[x].values())), list(points[x].values())) for x in sorted(points)]
            for s, points in sorted(lines.items(), key=lambda item: labels[item[0]])}


def numeric_keys(runs, keys: list[str]) -> list[str]:
    """The varying keys, `seed` excepted, with two or more numeric values: each gets an accuracy-vs-<key>.png."""
    from binexp.report import number

    return [k for k in keys if k != SEED_KEY and len({number(r.value(k)) for r in runs} - {None}) >= 2]


def plot_sweeps(runs, out: Path, metric: str = "test/acc") -> list[Path]:
    from binexp.report import number, varying_overrides
    from binexp.report.curves import add_legend, crowded, pyplot_to_files, save_figure

    keys = varying_overrides(runs)
    numeric = numeric_keys(runs, keys)
    if len(runs) < 2 or not numeric:
        return []
    plt = pyplot_to_files()

    written = []
    for key in numeric:
        lines = sweep_points(runs, key, keys, metric)
        if not lines:  # no run has finished
            continue
        fig, ax = plt.subplots(figsize=(8, 3.5) if crowded(len(lines)) else (5, 3.5))
        for label, points in lines.items():
            points = [(x, s, values) for x, s, values in points if s.n]  # all NaN: nothing to draw
            if not points:
                continue
            xs, summaries, values = zip(*points)
            sds = [s.sd or 0.0 for s in summaries]
            drawn = ax.errorbar(xs, [s.mean for s in summaries], yerr=sds if any(sds) else None, marker="o", capsize=3,
                                label=label)
            if any(len(v) > 1 for v in values):
                ax.scatter([x for x, v in zip(xs, values) for _ in v], [y for v in values for y in v], s=10, alpha=0.35,
                           color=drawn[0].get_color())
        title = f"{metric} vs {key}" + (" (mean ± sd over seeds)" if SEED_KEY in keys else "")
        ax.set(xlabel=key, ylabel=f"{metric} (%)", title=title)
        if len(lines) > 1:
            add_legend(ax, len(lines), fontsize="small")
        written.append(save_figure(fig, out / f"accuracy-vs-{key.replace('/', '_')}.png"))
        left_out = [f"{r.name} ({key}={r.value(key) or 'unset'})" for r in runs if number(r.value(key)) is None]
        if left_out:
            print(f"{written[-1].name} leaves out the runs without a number for {key}: {', '.join(left_out)}")
    return written
