"""`binexp report <run dirs or multirun dirs ...>`: one table of runs, report.csv, and plots.

A run is any folder holding `.hydra/config.yaml` (Hydra's copy of its config); a multirun folder is searched for
them. A run without `metrics.json` is listed as unfinished (stopped, or still running) or diverged (its log says it
stopped on a non-finite loss), with its curves so far.
The table shows the overrides and config groups that differ between runs and their final metrics, the runs in the order of those
overrides' values (numbers as numbers: t_clip 0.25 before 1.0 before 10). Runs that also vary `seed` get a second
table and report-over-seeds.csv: each setting's mean and standard deviation over its seeds (binexp.report.seeds). A run is named by its path below the
folder all the runs share, so two sweeps' job 0 under one folder are `a/0` and `b/0`. Plots and further tables (the
runs beside their experiments' published numbers) are produced by the functions registered in `PLOTTERS` (each
gets the runs and the output folder, and returns the files it wrote), so a method adds its figures without
touching this module's logic.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from binexp.errors import BinexpError
from binexp.hydra_output import LENGTH_KEYS, recorded_overrides
from binexp.metric_format import format_metric


@dataclass
class Run:
    path: Path
    metrics: dict[str, float]
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict | None = None
    label: str = ""  # set by find_runs: the path below the runs' common folder
    choices: dict[str, str] = field(default_factory=dict)  # config group -> the option composed ("" for none)

    @property
    def name(self) -> str:
        return self.label or self.path.resolve().name  # `binexp report .` inside a run names it, not ""

    def value(self, key: str) -> str:
        """The run's override of `key`; where it has none, the option a config group composed (a run that left
        `architecture` at its default shows lenet, and `schedule` shows the one its method brought), or the value in
        its composed config (a sweep's runs that left `seed` at its default show 0, not a blank), or "" where that is
        not a plain value. An override of null shows what the run put there (`seed=null`: the seed it drew)."""
        if key in self.overrides:
            text = canonical(self.overrides[key])
            return text if text != "null" else self._configured(key) or text
        if key in self.choices:
            return self.choices[key]
        return self._configured(key)

    def _configured(self, key: str) -> str:
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return ""
            node = node[part]
        return "" if isinstance(node, (dict, list)) else "null" if node is None else canonical(str(node))

    @property
    def file_stem(self) -> str:
        """The name as one file-name part, for the figures written per run."""
        return self.name.replace("/", "_")

    @property
    def finished(self) -> bool:
        return bool(self.metrics)

    @property
    def state(self) -> str:
        """finished; diverged (stopped on a non-finite loss: its log says so); or unfinished (stopped or running)."""
        if self.finished:
            return "finished"
        log = self.path / "train.log"
        errors = [line for line in log.read_text(errors="replace").splitlines() if "[ERROR]" in line] if log.exists() else []
        return "diverged" if errors and "non-finite" in errors[-1] else "unfinished"


def load_run(path: Path) -> Run:
    metrics_file = path / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    except json.JSONDecodeError as err:
        raise ReportInputError(f"{metrics_file}: not readable as JSON ({err}); move the run aside or rerun it") from None
    overrides: dict[str, str] = {}
    launches, choices = recorded_overrides(path)
    for i, launch in enumerate(launches):
        for item in launch:
            key, _, value = item.partition("=")
            key = key.lstrip("+~")
            if key.startswith("hydra.") or key in ("resume", "existing_run"):  # how it was launched, not a setting
                continue
            # the settings the results come from: the first launch's, and the last resume's on top (an earlier
            # resume's started again from the saved config, but for the run's length)
            if i in (0, len(launches) - 1) or key in LENGTH_KEYS:
                overrides[key] = value
    cfg_file = path / ".hydra" / "config.yaml"
    config = OmegaConf.to_container(OmegaConf.load(cfg_file), resolve=False) if cfg_file.exists() else None
    # the option each config group composed, Hydra's own groups left out
    groups = {str(g): "" if o is None else str(o) for g, o in choices.items() if not str(g).startswith("hydra")}
    return Run(path, metrics, overrides, config, choices=groups)


def find_runs(paths: list[Path]) -> list[Run]:
    found: dict[Path, Run] = {}
    for root in paths:
        candidates = [root] if _has_run_files(root) else sorted(
            {p.parent for p in root.rglob("metrics.json")} | {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
        )
        for run_dir in candidates:
            run = load_run(run_dir)
            # `binexp eval` leaves a Hydra folder (task_name eval, no metrics.json) under the run's eval/: not a run
            if run.finished or (run.config or {}).get("task_name") == "train":
                found.setdefault(run_dir.resolve(), run)
    runs = list(found.values())
    if len(runs) > 1:
        common = Path(os.path.commonpath(list(found)))
        for resolved, run in found.items():
            run.label = resolved.relative_to(common).as_posix() if resolved != common else resolved.name
    return runs


def canonical(text: str) -> str:
    """One spelling per value, so one setting is one row: Hydra's sweeper records a job's `false` as False and
    `1e-2` as 0.01, a run launched alone keeps what was typed, and a key left at its default shows the config's
    value (Python's True). Booleans and null in lower case (Hydra reads them in any case), integers as integers,
    other numbers as Python writes the float; anything else as it is."""
    if text.lower() in ("true", "false", "null"):
        return text.lower()
    n = number(text)
    if n is None or not math.isfinite(n):
        return text
    try:
        return str(int(text))
    except ValueError:
        return repr(n)


def number(text: str | None) -> float | None:
    """An override's value as a number, or None where it is not one."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def value_order(text: str) -> tuple:
    """How an override's value sorts and compares: as a number where it is one (1 and 1.0 are equal), numbers
    before text."""
    n = number(text)
    return (0, n, "") if n is not None else (1, 0.0, text)


def in_override_order(runs: list[Run], keys: list[str]) -> list[Run]:
    """The runs sorted by the values of `keys`, numbers numerically and before text, then by name."""
    return sorted(runs, key=lambda run: (*[value_order(run.value(k)) for k in keys], run.name))


def never_started(sweep_dir: Path) -> list[int]:
    """The job numbers of the sweep recorded in `sweep_dir`/multirun.yaml that have no folder: a sweep stopped before
    them (Ctrl-C, a kill) leaves them unrun, and the table could not say so; so does a job refused at start (binexp
    removes the folder of a launch it refuses, and the sweep stops there). Only Hydra's basic sweeper over
    command-line sweeps into job-number folders is counted; anything else returns []."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = OmegaConf.to_container(OmegaConf.load(sweep_dir / "multirun.yaml"), resolve=False).get("hydra") or {}
    if (hydra.get("sweeper") or {}).get("params") or (hydra.get("sweep") or {}).get("subdir") != "${hydra.job.num}":
        return []
    try:
        parsed = OverridesParser.create().parse_overrides([str(o) for o in hydra["overrides"]["task"]])
        jobs = math.prod(len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override())
    except Exception:  # a sweep this count cannot expand (interval, an unparsable override)
        return []
    return [n for n in range(jobs) if not (sweep_dir / str(n)).exists()]


def run_labels(runs: list[Run]) -> dict[str, str]:
    """name -> how figures label the run: multirun jobs are named 0, 1, ... (or a/0, b/0 for two sweeps), so there
    the overrides and groups that vary are added (fp and ste jobs are told apart by `method=...`)."""
    numbered = any(r.name.rpartition("/")[2].isdigit() for r in runs)
    keys = varying_overrides(runs) if numbered else []
    return {r.name: ", ".join([r.name, *(f"{k}={v}" for k in keys if (v := r.value(k)))]) for r in runs}


def _has_run_files(path: Path) -> bool:
    return (path / "metrics.json").exists() or (path / ".hydra" / "config.yaml").exists()


def varying_overrides(runs: list[Run]) -> list[str]:
    """The overrides and config groups whose values differ between the runs (a method's own schedule included)."""
    keys = sorted({k for r in runs for k in [*r.overrides, *r.choices]})
    return [k for k in keys if len({value_order(r.value(k)) for r in runs}) > 1]


DEFAULT_METRICS = (
    "test/acc", "val/acc", "test/loss",
    # the evaluation protocol (binexp.protocol): ABR's Table 1/2 columns
    "protocol/phase1_regular", "protocol/phase1_binary", "protocol/regular", "protocol/binary", "protocol/binary_bn_reestimated", "protocol/finetuned",
    "protocol/binary_weights", "protocol/binary_fixed_bn", "protocol/fixed_bn_flips",
    "size/bytes_binary", "size/bytes_float",
)

def default_metrics(runs: list[Run]) -> list[str]:
    """DEFAULT_METRICS the runs have, with the protocol's measures at any schedule's milestones (ABR's phase1 is
    one; a schedule kept outside binexp names its own) beside the protocol's other columns."""
    found = {k for r in runs for k in r.metrics}
    milestones = sorted(k for k in found - set(DEFAULT_METRICS) if re.fullmatch(r"protocol/\w+_(regular|binary)", k))
    listed = [m for m in DEFAULT_METRICS if m in found]
    sizes = [m for m in listed if m.startswith("size/")]
    return [m for m in listed if m not in sizes] + milestones + sizes


Plotter = Callable[[list[Run], Path], list[Path]]
PLOTTERS: list[Plotter] = []


def write_csv(runs: list[Run], out: Path, keys: list[str], metrics: list[str]) -> Path:
    path = out / "report.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        # run: the name the table and paper.csv use; unfinished: stopped or still running, no metrics.json
        writer.writerow(["run", *keys, *metrics, "finished", "path"])
        for r in runs:
            writer.writerow([r.name, *[r.value(k) for k in keys], *[r.metrics.get(m, "") for m in metrics],
                             str(r.finished).lower(), str(r.path)])
    return path


def print_table(runs: list[Run], keys: list[str], metrics: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(runs)} runs")
    table.add_column("run")
    for k in keys:
        table.add_column(k)
    for m in metrics:
        table.add_column(m, justify="right")
    for r in runs:
        values = [format_metric(r.metrics[m]) if m in r.metrics else "-" for m in metrics]
        table.add_row(r.name if r.finished else f"{r.name} ({r.state})", *[r.value(k) for k in keys], *values)
    Console(width=None if sys.stdout.isatty() else 10_000).print(table)  # logs and pipes get every column whole


class ReportInputError(BinexpError, ValueError):
    """Paths or options `binexp report` cannot tabulate; printed without a traceback, exit status 2."""


def report(paths: list[Path], out: Path | None = None, metrics: list[str] | None = None) -> tuple[list[Run], list[Path]]:
    missing = [f"{p}: {'not a directory' if p.exists() else 'no such directory'}" for p in paths if not p.is_dir()]
    if missing:  # a mistyped run would otherwise just be missing from the table
        raise ReportInputError(f"{'; '.join(missing)} (give run or multirun directories)")
    if out is not None and out.exists() and not out.is_dir():
        raise ReportInputError(f"--out {out}: exists and is not a directory")
    runs = find_runs(paths)
    if not runs:
        raise ReportInputError(f"no runs (folders with .hydra/config.yaml or metrics.json) under {', '.join(map(str, paths))}")
    keys = varying_overrides(runs)
    runs = in_override_order(runs, keys)
    finished = [r for r in runs if r.metrics]
    unknown = [m for m in metrics or [] if finished and not any(m in r.metrics for r in finished)]  # a sweep in
    if unknown:  # progress, with no run finished yet, is still tabulated
        known = sorted({k for r in finished for k in r.metrics})
        raise ReportInputError(f"--metrics {' '.join(unknown)}: in no run's metrics.json; they hold "
                         f"{', '.join(known)}")
    metrics = metrics or default_metrics(runs)
    out = out or paths[0]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where a folder of the path should be
        raise ReportInputError(f"--out {out}: cannot be made a directory ({err.strerror}: {err.filename})") from None
    print_table(runs, keys, metrics)
    for sweep_dir in sorted({p.parent for root in paths for p in [root / "multirun.yaml", *root.rglob("multirun.yaml")]
                             if p.exists()}):
        missing = never_started(sweep_dir)
        if missing:
            print(f"sweep {sweep_dir}: job{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} never started "
                  f"(the sweep stopped before them, or was refused at the first of them: the sweep's output has the "
                  f"error); its command again with hydra.sweep.dir={sweep_dir} runs them")
    written = [write_csv(runs, out, keys, metrics)]
    seed_groups = group_over_seeds(runs, keys)
    if seed_groups:
        print_seed_table(seed_groups, metrics)
        written.append(write_seed_csv(seed_groups, out, metrics))
    for plot in PLOTTERS:
        written += plot(runs, out)
    return runs, written


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="binexp report", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or multirun directories")
    parser.add_argument("--out", type=Path, default=None, help="where report.csv and plots go (default: the first path)")
    parser.add_argument("--metrics", nargs="+", default=None, help="metric keys to tabulate")
    args = parser.parse_args(argv)
    _, written = report(args.paths, args.out, args.metrics)
    for path in written:
        print(f"wrote {path}")


from binexp.report.curves import plot_binarization  # noqa: E402  (needs Run above)
from binexp.report.learning import plot_learning_curves  # noqa: E402
from binexp.report.papers import write_paper_table  # noqa: E402
from binexp.report.seeds import group_over_seeds, plot_seed_means, print_seed_table, write_seed_csv  # noqa: E402
from binexp.report.sweeps import plot_sweeps  # noqa: E402

PLOTTERS += [write_paper_table, plot_sweeps, plot_seed_means, plot_learning_curves, plot_binarization]
