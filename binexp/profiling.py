"""The profiler binexp's trainer runs with when `trainer.profiler` is null (the default)."""

from __future__ import annotations

import contextlib

from pytorch_lightning.profilers import PassThroughProfiler


class NoProfiler(PassThroughProfiler):
    """Lightning wraps every hook it calls, each callback's included (about 70 a training step in bench_train, more
    with all of binexp's callbacks), in `profiler.profile(name)`; its pass-through profiler builds a generator
    context manager for each.
    This one hands back one shared do-nothing context: the same (no) profile, less host time per step."""

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._nothing
