"""Binarization methods. A method hands architectures their building blocks (conv, linear, bn, act) in
training form, and owns the step-function form those blocks take at inference (`step_mode`)."""

from binexp.binarize.base import Method, MethodConfig, set_step_mode, step_mode

__all__ = ["Method", "MethodConfig", "set_step_mode", "step_mode"]
