"""How a metric's value is written in the tables binexp prints (the end of a run, eval, report)."""

from __future__ import annotations


def format_metric(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"  # 3.08e-05 flips, not 0.0000
