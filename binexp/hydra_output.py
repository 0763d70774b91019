"""Where Hydra writes a launch's copy of its config (config.yaml, hydra.yaml, overrides.yaml) in a run directory.

Hydra writes them before binexp's code runs, so a job re-run into a directory that already holds a run (a sweep
re-run with its old `hydra.sweep.dir`, `hydra.run.dir=<old run>`) would overwrite the record of the run that
produced its checkpoints and metrics, even when binexp then skips the job or refuses it as a different job.
`conf/hydra/default.yaml` therefore sets `hydra.output_subdir` through `launch_subdir`: `.hydra` for a fresh
directory, `.hydra/rerun-<time>` when `.hydra/config.yaml` is already there. Only when the re-run then trains
from scratch (`existing_run=restart`, or the old run had not saved anything) does its record replace the old one
(`adopt_launch_record`). `resume=` keeps its own `.hydra/resumed-<time>` (binexp.cli).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

RECORD = ".hydra"
RECORD_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def launch_subdir(output_dir: str) -> str:
    """The `hydra.output_subdir` of a launch into `output_dir` (the resolver `binexp_output_subdir`)."""
    record = Path(output_dir) / RECORD
    if not (record / "config.yaml").exists():
        return RECORD
    name = f"rerun-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
    count = 1
    while (record / (name if count == 1 else f"{name}-{count}")).exists():  # two re-runs within a second
        count += 1
    return f"{RECORD}/{name if count == 1 else f'{name}-{count}'}"


def adopt_launch_record(run_dir: Path) -> None:
    """Make this launch's record the run's own (`.hydra/`): called when a re-run trains from scratch."""
    try:
        from hydra.core.hydra_config import HydraConfig

        subdir = HydraConfig.get().output_subdir
    except ValueError:  # Hydra not running: a test or a child rank wrote no record of its own
        return
    if not str(subdir or "").startswith(f"{RECORD}/rerun-"):
        return
    for name in RECORD_FILES:
        source = run_dir / subdir / name
        if source.exists():
            shutil.copyfile(source, run_dir / RECORD / name)


def launch_overrides() -> list[str]:
    """This launch's command-line overrides; none when Hydra is not running (a test, a child rank)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []
