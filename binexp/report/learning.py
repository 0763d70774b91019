"""Validation accuracy against epochs for every run, read from its TensorBoard events: `learning-curves.png`.

Unfinished runs (stopped, or still running) are drawn too, so a sweep can be compared before it ends.
"""

from __future__ import annotations

from pathlib import Path

TAG = "val/acc"


def read_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """{global step: value} of one scalar over all of the run's event files (a resumed run writes several)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted(run_dir.glob("tb/**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def learning_curve(run_dir: Path, tag: str = TAG) -> list[tuple[float, float]]:
    """[(epochs completed, value)]: Lightning logs the epoch counter at the steps it logs the metric at."""
    values, epochs = read_scalars(run_dir, tag), read_scalars(run_dir, "epoch")
    return [(epochs[step] + 1 if step in epochs else float(step), value) for step, value in sorted(values.items())]


def plot_learning_curves(runs, out: Path) -> list[Path]:
    curves = {r.name: learning_curve(r.path) for r in runs}
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from binexp.report.curves import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(curves.items()):
        xs, ys = zip(*points)
        ax.plot(xs, [100 * y for y in ys], marker=".", label=name)
    ax.set(xlabel="epoch", ylabel=f"{TAG} (%)", title=f"{TAG} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(curves) > 6 else 1)
    return [save_figure(fig, out / "learning-curves.png")]
