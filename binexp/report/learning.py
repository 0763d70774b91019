"""Validation accuracy against epochs for every run, read from its TensorBoard events: `learning-curves.png`.

Unfinished runs (stopped, or still running) are drawn too, so a sweep can be compared before it ends.
"""

from __future__ import annotations

from pathlib import Path

TAG = "val/acc"


def read_scalars(run_dir: Path, tags: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """{tag: {global step: value}} over all of the run's event files (a resumed run writes several), each read once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, dict[int, float]] = {tag: {} for tag in tags}
    for events in sorted(run_dir.glob("tb/**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        logged = acc.Tags().get("scalars", [])
        for tag in tags:
            if tag in logged:
                values[tag].update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def learning_curve(run_dir: Path, tag: str = TAG) -> list[tuple[float, float]]:
    """[(epochs completed, value)]: Lightning logs the epoch counter at the steps it logs the metric at."""
    scalars = read_scalars(run_dir, (tag, "epoch"))
    values, epochs = scalars[tag], scalars["epoch"]
    return [(epochs[step] + 1, value) for step, value in sorted(values.items()) if step in epochs]


def plot_learning_curves(runs, out: Path) -> list[Path]:
    from binexp.report import run_labels

    labels = run_labels(runs)
    curves = {labels[r.name]: points for r in runs if (points := learning_curve(r.path))}  # in the table's order
    if not curves:
        return []
    from matplotlib.ticker import MaxNLocator

    from binexp.report.curves import add_legend, crowded, pyplot_to_files, save_figure

    plt = pyplot_to_files()

    fig, ax = plt.subplots(figsize=(8, 4) if crowded(len(curves)) else (6, 4))
    for i, (name, points) in enumerate(curves.items()):
        xs, ys = zip(*points)
        # ten colours, then the next line style: runs 0 and 10 are not drawn alike
        ax.plot(xs, [100 * y for y in ys], marker=".", label=name, color=f"C{i % 10}",
                linestyle=("-", "--", ":", "-.")[i // 10 % 4])
    ax.set(xlabel="epoch", ylabel=f"{TAG} (%)", title=f"{TAG} during training")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 between two of them
    ax.grid(alpha=0.3)
    add_legend(ax, len(curves), fontsize="small")
    return [save_figure(fig, out / "learning-curves.png")]
