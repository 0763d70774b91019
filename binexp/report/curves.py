"""Binarization curves from a run's binarization.csv, drawn like the ABR paper's figures.

- `<run>-binarization.png` (Figure 2): the last binarized layer, the share of units binary at least 90%, 99%
  and 99.9% of the time against the training step.
- `<run>-binarization-layers.png` (Figure 4 left): one curve per layer, share of units binary 99% of the time.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from binexp.binarize.sbn import THRESHOLDS as SBN_THRESHOLDS
from binexp.callbacks.binarization import CSV_NAME

THRESHOLDS = (("binary90", "90%"), ("binary99", "99%"), ("binary999", "99.9%"))


def curve_labels(curves: dict[str, dict[str, list[float]]]) -> tuple[dict[str, str], str, str]:
    """(legend label per threshold column, y label of the last-layer figure, y label of the per-layer figure).

    ABR's rows count units binary a share of the time; SBN's rows (they carry `mean_abs`) count weight or
    activation values with |tanh| above a threshold, so the same columns need other words."""
    if curves and "mean_abs" in next(iter(curves.values())):
        return ({key: f"|value| > {t:g}" for key, t in SBN_THRESHOLDS.items()}, "% of values",
                f"% of values with |value| > {SBN_THRESHOLDS['binary99']:g}")
    return ({key: f"binary {share} of the time" for key, share in THRESHOLDS}, "% of units",
            "% of units binary 99% of the time")


def read_curves(path: Path) -> dict[str, dict[str, list[float]]]:
    """{layer: {column: values by step}}, in the file's layer order; a step recorded twice (a resumed run) keeps
    its last row."""
    rows: dict[tuple[str, int], dict[str, str]] = {}
    layers: list[str] = []
    with path.open() as f:
        for row in csv.DictReader(f):
            rows[(row["layer"], int(row["step"]))] = row
            if row["layer"] not in layers:
                layers.append(row["layer"])
    curves: dict[str, dict[str, list[float]]] = {layer: defaultdict(list) for layer in layers}
    for (layer, step), row in sorted(rows.items(), key=lambda item: item[0][1]):
        curves[layer]["step"].append(step)
        for key, value in row.items():
            if key not in ("step", "layer"):
                curves[layer][key].append(float(value))
    return curves


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG and free a matplotlib figure; every report plot ends this way."""
    import warnings

    import matplotlib.pyplot as plt

    with warnings.catch_warnings():  # a legend beside the axes cannot be laid out inside: bbox_inches="tight" makes room
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def crowded(entries: int) -> bool:
    """More legend entries than a legend inside the axes can hold without hiding the curves."""
    return entries > 6


def add_legend(ax, entries: int, **inside) -> None:
    """Inside the axes (`inside`: legend options), or beside them when crowded (two columns past 12 entries)."""
    if crowded(entries):
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", ncol=2 if entries > 12 else 1)
    else:
        ax.legend(**inside)


def _block_and_kind(layer: str) -> tuple[str, str]:
    """SBN's "conv1.weight" -> ("conv1", "weight"), "conv1.act" -> ("conv1", "act"); ABR's "fc1" -> ("fc1", "")."""
    head, _, tail = layer.rpartition(".")
    return (head, tail) if tail in ("weight", "act") else (layer, "")


def plot_binarization(runs, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    for run in runs:
        path = run.path / CSV_NAME
        if not path.exists():
            continue
        curves = read_curves(path)
        if not curves:
            continue
        last_layer = list(curves)[-1]
        legend, ylabel, layers_ylabel = curve_labels(curves)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for key, _ in THRESHOLDS:
            ax.plot(curves[last_layer]["step"], [100 * v for v in curves[last_layer][key]], label=legend[key])
        ax.set(xlabel="training step", ylabel=ylabel, ylim=(0, 101), title=f"{run.name}: {last_layer}")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # more 5-digit step labels overlap at this width
        ax.legend(loc="lower right")
        written.append(save_figure(fig, out / f"{run.file_stem}-binarization.png"))

        fig, ax = plt.subplots(figsize=(8, 4) if crowded(len(curves)) else (5, 3.5))
        blocks = list(dict.fromkeys(_block_and_kind(layer)[0] for layer in curves))
        for layer, values in curves.items():
            block, kind = _block_and_kind(layer)
            ax.plot(values["step"], [100 * v for v in values["binary99"]], label=layer,
                    color=f"C{blocks.index(block) % 10}", linestyle="--" if kind == "act" else "-")
        ax.set(xlabel="training step", ylabel=layers_ylabel, ylim=(0, 101), title=run.name)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        add_legend(ax, len(curves), loc="lower right")
        written.append(save_figure(fig, out / f"{run.file_stem}-binarization-layers.png"))
    return written
