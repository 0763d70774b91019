"""Schedules: pure functions of training progress.

A schedule maps (global step, steps per epoch, total epochs) to named values such as nu or lambda. The
`ScheduleCallback` writes them into the 0-d buffers of the same name on the model's layers before every
step, so a resumed run recomputes exactly the values it had, and checkpoints carry them for free.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    step: int  # optimizer steps taken so far
    steps_per_epoch: int
    max_epochs: int

    @property
    def epoch(self) -> int:
        return self.step // max(self.steps_per_epoch, 1)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.max_epochs


@dataclass
class ScheduleConfig:
    _target_: str = "???"
    name: str = "???"


class Schedule:
    """Base: provides no values."""

    provides: tuple[str, ...] = ()

    def values(self, progress: Progress) -> dict[str, float]:
        return {}


@dataclass
class ConstantConfig(ScheduleConfig):
    _target_: str = "binexp.schedules.Constant"
    name: str = "constant"


class Constant(Schedule):
    """Nothing changes during training (full-precision and hard-binarized methods)."""
