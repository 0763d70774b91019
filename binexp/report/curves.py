"""Binarization curves from a run's binarization.csv, drawn like the ABR paper's figures.

- `<run>-binarization.png` (Figure 2): the last binarized layer (its activations, where the run binarizes any:
  the layer whose firing matrix the run writes), the share of units binary at least 90%, 99% and 99.9% of the
  time against the training step.
- `<run>-binarization-layers.png` (Figure 4 left): one curve per layer, share of units binary 99% of the time.

SBN's and the sign activations' rows measure other things (`curve_kind`), drawn the same two ways.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from binexp.binarize.sbn import THRESHOLDS as SBN_THRESHOLDS
from binexp.callbacks.binarization import CSV_NAME

THRESHOLDS = (("binary90", "90%"), ("binary99", "99%"), ("binary999", "99.9%"))


@dataclass(frozen=True)
class CurveKind:
    """What a binarization.csv's rows measure and how to draw them: the columns (and their legends) of the
    last-layer figure, and the one column drawn per layer."""

    last: tuple[tuple[str, str], ...]
    ylabel: str
    per_layer: str
    per_layer_ylabel: str
    percent: bool = True  # shares, drawn in % on 0-100; a probe of a method's own draws its values as they are


def curve_kind(columns: dict[str, list[float]]) -> CurveKind:
    """The kind of one layer's curves (read_curves' value for a layer). ABR's rows count units binary a share of
    the time; SBN's rows (they carry `mean_abs`) count weight or activation values with |tanh| above a threshold;
    sign activations' rows (they carry `passing`) count the inputs inside the gradient window |x| <= t_clip. A probe
    of a method kept outside binexp gets its own columns, drawn as they are. A net mixing kinds leaves the other
    kinds' columns blank (NaN here)."""

    def has(key: str) -> bool:
        return any(v == v for v in columns.get(key, []))  # a column of NaN is another kind's

    if has("passing"):
        return CurveKind((("passing", "inputs with |x| <= t_clip (gradient passes)"), ("ones", "outputs +1"),
                          ("constant", "units with one sign on every image")), "%", "passing",
                         "% of inputs with |x| <= t_clip")
    if has("mean_abs"):
        return CurveKind(tuple((key, f"|value| > {t:g}") for key, t in SBN_THRESHOLDS.items()), "% of values",
                         "binary99", f"% of values with |value| > {SBN_THRESHOLDS['binary99']:g}")
    if has("binary99"):
        return CurveKind(tuple((key, f"binary {share} of the time") for key, share in THRESHOLDS), "% of units",
                         "binary99", "% of units binary 99% of the time")
    own = [key for key in columns if key not in ("step", "epoch") and has(key)]
    return CurveKind(tuple((key, key) for key in own), "value", own[0] if own else "", own[0] if own else "",
                     percent=False)


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
                curves[layer][key].append(float(value) if value != "" else float("nan"))
    return curves


def pyplot_to_files():
    """matplotlib's pyplot drawing into files. Labels and titles are run names and settings, never math: a `$` in
    them (an interpolation, `${floordiv:...}`) made matplotlib parse math and the report end in a traceback."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


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


def figure_layer(curves: dict) -> str:
    """The layer Figure 2 draws: the last activation layer (an SBN network's curves end with its classifier's
    weights), else the last layer."""
    activations = [layer for layer in curves if _block_and_kind(layer)[1] != "weight"]
    return (activations or list(curves))[-1]


def plot_binarization(runs, out: Path) -> list[Path]:
    plt = pyplot_to_files()
    from matplotlib.ticker import MaxNLocator

    from binexp.report import run_labels

    labels = run_labels(runs)  # a sweep's job 4 is titled with its method and seed too
    written = []
    for run in runs:
        path = run.path / CSV_NAME
        if not path.exists():
            continue
        curves = read_curves(path)
        if not curves:
            continue
        last_layer = figure_layer(curves)
        kinds = {layer: curve_kind(values) for layer, values in curves.items()}
        kind = kinds[last_layer]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        scale = 100 if kind.percent else 1
        for key, label in kind.last:
            ax.plot(curves[last_layer]["step"], [scale * v for v in curves[last_layer][key]], label=label)
        ax.set(xlabel="training step", ylabel=kind.ylabel, title=f"{labels[run.name]}: {last_layer}")
        if kind.percent:
            ax.set_ylim(0, 101)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # more 5-digit step labels overlap at this width
        ax.legend(loc="best", fontsize="small")
        written.append(save_figure(fig, out / f"{run.file_stem}-binarization.png"))

        fig, ax = plt.subplots(figsize=(8, 4) if crowded(len(curves)) else (5, 3.5))
        blocks = list(dict.fromkeys(_block_and_kind(layer)[0] for layer in curves))
        for layer, values in curves.items():
            block, part = _block_and_kind(layer)
            kind = kinds[layer]
            if not kind.per_layer:
                continue
            ax.plot(values["step"], [(100 if kind.percent else 1) * v for v in values[kind.per_layer]], label=layer,
                    color=f"C{blocks.index(block) % 10}", linestyle="--" if part == "act" else "-")
        ylabels = {k.per_layer_ylabel for k in kinds.values()}
        percent = all(k.percent for k in kinds.values())
        ax.set(xlabel="training step", ylabel=ylabels.pop() if len(ylabels) == 1 else
               "% (each layer's own measure)" if percent else "each layer's own measure", title=labels[run.name])
        if percent:
            ax.set_ylim(0, 101)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        add_legend(ax, len(curves), loc="lower right")
        written.append(save_figure(fig, out / f"{run.file_stem}-binarization-layers.png"))
    return written
