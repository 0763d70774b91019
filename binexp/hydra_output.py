"""Where Hydra writes a launch's copy of its config (config.yaml, hydra.yaml, overrides.yaml) in a run directory.

Hydra writes them before binexp's code runs, so a job re-run into a directory that already holds a run (a sweep
re-run with its old `hydra.sweep.dir`, `hydra.run.dir=<old run>`) would overwrite the record of the run that
produced its checkpoints and metrics, even when binexp then skips the job or refuses it as a different job.
`conf/hydra/default.yaml` therefore sets `hydra.output_subdir` through `launch_subdir`: `.hydra` for a fresh
directory, `.hydra/rerun-<time>` when `.hydra/config.yaml` is already there. Only when the re-run then trains
from scratch (`existing_run=restart`, or the old run had not saved anything) does its record replace the old one
(`adopt_launch_record`). `resume=` keeps its own `.hydra/resumed-<time>` (binexp.cli). A launch that does not
train (refused with a config error, or skipped because the run finished) removes its record again.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from binexp import atomic_files

RECORD = ".hydra"
RECORD_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
LAUNCH_PREFIXES = (f"{RECORD}/rerun-", f"{RECORD}/resumed-")  # a launch's own record beside the run's

def running_hydra() -> Any | None:
    """The running Hydra job's `hydra` config; None when Hydra is not running (a test composed the config itself,
    a DDP child rank got its resolved config)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get()
    except ValueError:
        return None


_chosen: dict[str, str] = {}  # output dir -> this launch's subdir: Hydra resolves it more than once


def launch_subdir(output_dir: str) -> str:
    """The `hydra.output_subdir` of a launch into `output_dir` (the resolver `binexp_output_subdir`)."""
    key = str(Path(output_dir).resolve())
    if key not in _chosen:
        record = Path(key) / RECORD
        name = f"rerun-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
        count = 1
        while (record / (name if count == 1 else f"{name}-{count}")).exists():  # two re-runs within a second
            count += 1
        rerun = f"{RECORD}/{name if count == 1 else f'{name}-{count}'}"
        _chosen[key] = rerun if (record / "config.yaml").exists() else RECORD
    return _chosen[key]


def launch_record(run_dir: Path) -> Path | None:
    """Where this launch's record went (`.hydra`, `.hydra/rerun-<time>` or `.hydra/resumed-<time>`); None when
    Hydra is not running (a test, a child rank). A later launch into the same directory decides afresh."""
    hc = running_hydra()
    if hc is None:
        return None
    subdir = hc.output_subdir
    _chosen.pop(str(run_dir.resolve()), None)
    return run_dir / subdir if subdir else None


def adopt_launch_record(run_dir: Path, record: Path | None) -> None:
    """Make a re-run's record the run's own (`.hydra/`): called when the re-run trains from scratch. The earlier
    run's launch records (its resumes, its re-runs) go with it."""
    if record is None or not _is_launch_record(run_dir, record):
        return
    for name in RECORD_FILES:
        if (record / name).exists():
            atomic_files.write_bytes(run_dir / RECORD / name, (record / name).read_bytes())
    for old in [*run_dir.glob(f"{RECORD}/rerun-*"), *run_dir.glob(f"{RECORD}/resumed-*")]:
        if old != record:
            shutil.rmtree(old, ignore_errors=True)


# what a resume's overrides carry on to the next resume (its last.ckpt records them); every other key of a resume
# starts again from the run's saved config
LENGTH_KEYS = ("trainer.max_epochs", "trainer.max_steps")


def recorded_overrides(run_dir: Path) -> tuple[list[list[str]], dict[str, Any]]:
    """The overrides of each launch that trained the run, the first launch's (`.hydra/`) and then each resume's
    (`.hydra/resumed-<time>/`, in order), and the option each config group composed at the first launch (None:
    a group left out)."""
    from omegaconf import OmegaConf

    record, overrides = run_dir / RECORD, []
    for path in [record / "overrides.yaml", *sorted(record.glob("resumed-*/overrides.yaml"))]:
        if path.exists():
            overrides.append([str(o) for o in OmegaConf.to_container(OmegaConf.load(path), resolve=False) or []])
    hydra_file = record / "hydra.yaml"
    choices = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices", default=None) if hydra_file.exists() else None
    return overrides, dict(choices or {})


def discard_launch_record(run_dir: Path, record: Path | None) -> None:
    """A launch that did not train (refused, or skipped as finished) leaves no record of its own."""
    if record is not None and _is_launch_record(run_dir, record):
        shutil.rmtree(record, ignore_errors=True)


def discard_refused_first_launch(run_dir: Path, record: Path | None) -> None:
    """A refused launch that made the directory's first record (`.hydra/` is chosen only where none was) removes it;
    and when Hydra's log of the launch is then all the directory holds, the log and the directory too (and its empty
    parents below the working directory), so no folder reads as an unfinished run. A user's own files in the folder
    are never touched."""
    if record != run_dir / RECORD or any((run_dir / name).exists() for name in ("checkpoints", "metrics.json")):
        return
    logs = close_file_logs_in(run_dir)
    shutil.rmtree(record, ignore_errors=True)
    try:
        if set(run_dir.iterdir()) <= set(logs):
            for log in logs:
                log.unlink(missing_ok=True)
            run_dir.rmdir()
            _remove_empty_parents(run_dir, stop=Path.cwd())
    except OSError:  # another launch into the same folder (two evals in one second) removed it, or wrote into it
        return


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Hydra makes a run directory's parents too (`logs/train/runs/`): the empty ones below `stop` go with it, so a
    first run refused in a fresh folder leaves it as it was. Nothing outside `stop` is touched."""
    folder, stop = folder.resolve(), stop.resolve()
    for parent in folder.parents:
        if parent == stop or stop not in parent.parents or any(parent.iterdir()):
            return
        parent.rmdir()


def close_file_logs_in(folder: Path) -> list[Path]:
    """Close and detach the logging handlers writing into `folder` (Hydra's job log), so it can be removed; returns
    their files."""
    import logging

    root, files = logging.getLogger(), []
    for handler in list(root.handlers):
        path = Path(getattr(handler, "baseFilename", "/"))
        if path.parent == folder:
            handler.close()
            root.removeHandler(handler)
            files.append(path)
    return files


def _is_launch_record(run_dir: Path, record: Path) -> bool:
    try:
        return str(record.relative_to(run_dir)).startswith(LAUNCH_PREFIXES)
    except ValueError:
        return False


def launch_overrides() -> list[str] | None:
    """This launch's command-line overrides; None when Hydra is not running."""
    hc = running_hydra()
    return None if hc is None else list(hc.overrides.task)
