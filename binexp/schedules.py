"""Schedules: pure functions of training progress.

A schedule maps (global step, steps per epoch, total epochs) to named values such as nu or lambda. The
`ScheduleCallback` writes them into the 0-d buffers of the same name on the model's layers before every
step, so a resumed run recomputes exactly the values it had, and checkpoints carry them for free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from binexp.errors import ConfigError

# A schedule value under this name sets the weight decay of the optimizer's decaying parameter groups.
WEIGHT_DECAY = "weight_decay"


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
    weight_decay2: Optional[float] = None  # phase 2's weight decay; null keeps optimizer.weight_decay


class TwoPhase(Schedule):
    """ABR's slope growth: lambda1 for the first phase1_epochs epochs (phase 1), lambda2 after (phase 2).

    Optionally phase 2 trains with its own weight decay: decay shrinks the weights under the rectifiers, so
    the pre-activations shrink while k grows, and units stay inside the linear band |y| < 0.5/k.
    """

    provides = ("slope_lambda", "phase")

    def __init__(self, phase1_epochs: int = 20, lambda1: float = 1e-4, lambda2: float = 1e-2,
                 weight_decay2: float | None = None):
        self.phase1_epochs, self.lambda1, self.lambda2 = phase1_epochs, lambda1, lambda2
        if weight_decay2 is not None and not (math.isfinite(weight_decay2) and weight_decay2 >= 0):
            raise ConfigError(f"schedule.weight_decay2={weight_decay2}: allowed is null or a finite number >= 0")
        self.weight_decay2 = weight_decay2

    def phase(self, progress: Progress) -> int:
        return 1 if progress.epoch < self.phase1_epochs else 2

    def values(self, progress: Progress) -> dict[str, float]:
        phase = self.phase(progress)
        values = {"slope_lambda": self.lambda1 if phase == 1 else self.lambda2, "phase": float(phase)}
        if phase == 2 and self.weight_decay2 is not None:
            values[WEIGHT_DECAY] = self.weight_decay2
        return values

    def milestones(self) -> dict[str, int]:
        return {"phase1": self.phase1_epochs}

    def check(self, max_epochs: int) -> None:
        if not 0 < self.phase1_epochs < max_epochs:
            raise ConfigError(
                f"schedule.phase1_epochs={self.phase1_epochs} with trainer.max_epochs={max_epochs}: "
                f"phase 1 must end before training does (phase 2 lasts the remaining epochs)"
            )


@dataclass
class ExponentialNuConfig(ScheduleConfig):
    _target_: str = "binexp.schedules.ExponentialNu"
    name: str = "exp_nu"
    nu_start: float = 1.0
    nu_end: float = 1000.0
    per_step: bool = False  # grow nu every optimizer step instead of once per epoch


class ExponentialNu(Schedule):
    """SBN's tanh scale nu, from nu_start at the first epoch to nu_end at the last, growing exponentially.

    The paper increases nu "from 1 to 1000 during training in an exponential manner", one value per epoch
    (nu_e, eq. 5); it gives no closed form, so the curve is the geometric one through both ends:

        nu_e = nu_start * (nu_end / nu_start) ** (e / (E - 1)),   e = 0 .. E - 1,  E = trainer.max_epochs

    With `per_step`, the same curve over optimizer steps s = 0 .. S - 1 (S = E * steps per epoch).
    """

    provides = ("nu",)

    def __init__(self, nu_start: float = 1.0, nu_end: float = 1000.0, per_step: bool = False):
        if not 0 < nu_start <= nu_end < math.inf:  # nan fails too
            raise ConfigError(
                f"schedule.nu_start={nu_start}, schedule.nu_end={nu_end}: need 0 < nu_start <= nu_end, both finite "
                f"(nu only grows)"
            )
        self.nu_start, self.nu_end, self.per_step = float(nu_start), float(nu_end), bool(per_step)

    def nu(self, progress: Progress) -> float:
        if self.per_step:
            done, last = progress.step, progress.total_steps - 1
        else:
            done, last = progress.epoch, progress.max_epochs - 1
        fraction = min(done / last, 1.0) if last > 0 else 1.0
        return self.nu_start * (self.nu_end / self.nu_start) ** fraction

    def values(self, progress: Progress) -> dict[str, float]:
        return {"nu": self.nu(progress)}

    def check(self, max_epochs: int) -> None:
        if not self.per_step and max_epochs < 2 and self.nu_end > self.nu_start:
            raise ConfigError(
                f"schedule=exp_nu with trainer.max_epochs={max_epochs}: one value per epoch cannot go from "
                f"schedule.nu_start={self.nu_start} to schedule.nu_end={self.nu_end}; train 2 epochs or more, "
                f"or set schedule.per_step=true"
            )
