"""Binarization methods. A method hands architectures their building blocks (conv, linear, bn, act) in
training form, and owns the step-function form those blocks take at inference (`step_mode`)."""

from binexp.binarize.base import (
    BinarizationProbe,
    BinaryWeights,
    Method,
    MethodConfig,
    RecordedProbe,
    probes,
    set_step_mode,
    step_mode,
)
from binexp.binarize.functional import binary_sign, sign_ste

__all__ = [
    "BinarizationProbe", "BinaryWeights", "Method", "MethodConfig", "RecordedProbe", "binary_sign", "probes",
    "set_step_mode", "sign_ste", "step_mode",
]
