"""Schedules: pure functions of training progress.

A schedule maps (global step, steps per epoch, total epochs) to named values such as nu or lambda. The
`ScheduleCallback` writes them into the 0-d buffers of the same name on the model's layers before every
step, so a resumed run recomputes exactly the values it had, and checkpoints carry them for free.
"""

from __future__ import annotations

from dataclasses import dataclass

from binexp.errors import ConfigError


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

    def check(self, max_epochs: int) -> None:
        """Refuse a schedule that cannot run within trainer.max_epochs."""

    def milestones(self) -> dict[str, int]:
        """Named points of training, as epochs completed (the evaluation protocol measures there too)."""
        return {}


@dataclass
class ConstantConfig(ScheduleConfig):
    _target_: str = "binexp.schedules.Constant"
    name: str = "constant"


class Constant(Schedule):
    """Nothing changes during training (full-precision and hard-binarized methods)."""


@dataclass
class TwoPhaseConfig(ScheduleConfig):
    _target_: str = "binexp.schedules.TwoPhase"
    name: str = "two_phase"
    phase1_epochs: int = "${floordiv:${trainer.max_epochs},2}"  # phase 2 is the rest of trainer.max_epochs
    lambda1: float = 1e-4
    lambda2: float = 1e-2


class TwoPhase(Schedule):
    """ABR's slope growth: lambda1 for the first phase1_epochs epochs (phase 1), lambda2 after (phase 2)."""

    provides = ("slope_lambda", "phase")

    def __init__(self, phase1_epochs: int = 20, lambda1: float = 1e-4, lambda2: float = 1e-2):
        self.phase1_epochs, self.lambda1, self.lambda2 = phase1_epochs, lambda1, lambda2

    def phase(self, progress: Progress) -> int:
        return 1 if progress.epoch < self.phase1_epochs else 2

    def values(self, progress: Progress) -> dict[str, float]:
        phase = self.phase(progress)
        return {"slope_lambda": self.lambda1 if phase == 1 else self.lambda2, "phase": float(phase)}

    def milestones(self) -> dict[str, int]:
        return {"phase1": self.phase1_epochs}

    def check(self, max_epochs: int) -> None:
        if not 0 < self.phase1_epochs < max_epochs:
            raise ConfigError(
                f"schedule.phase1_epochs={self.phase1_epochs} with trainer.max_epochs={max_epochs}: "
                f"phase 1 must end before training does (phase 2 lasts the remaining epochs)"
            )
