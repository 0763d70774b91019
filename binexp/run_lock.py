"""One `binexp train` at a time in a run directory.

Two launches into one folder (a sweep started twice, a requeued job while the first copy still runs) would both
train there and mix their checkpoints, event files and metrics. The first holds an advisory lock on
`.hydra/train.lock` while it runs (released by the kernel if the process dies); a second is refused at start. The
other ranks of a DDP or multi-task SLURM job train in the folder their rank zero holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from binexp.errors import ConfigError

LOCK_FILE = Path(".hydra") / "train.lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def other_rank() -> bool:
    """Whether a launcher started this process as a rank other than zero (a child inherits its parent's variables
    and adds its own, so any non-zero one counts)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in RANK_VARIABLES)


class RunDirLock:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._file = None

    def acquire(self) -> RunDirLock:
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: unguarded
            return self
        if other_rank():
            return self
        path = self.run_dir / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")  # never written: a skipped re-run leaves the folder as it was
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(f"{self.run_dir}: another `binexp train` is training in this run directory; wait for it "
                              f"to end, or give this launch another hydra.run.dir (hydra.sweep.dir for a sweep)") from None
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
