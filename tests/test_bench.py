"""scripts/bench_train.py, the GPU session's first command, runs its three loops (here on the CPU, tiny)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_times_the_plain_loop_lightning_and_a_whole_runs_trainer(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "scripts/bench_train.py", "--arch", "cifar_quick", "--override", "architecture.width=0.0625",
         "--batch", "2", "--device", "cpu", "--precision", "32", "--steps", "6", "--warmup", "2", "--whole-run",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = json.loads(out.read_text())
    assert row["arch"] == "cifar_quick" and row["device"] == "cpu"
    assert row["ratio"] == pytest.approx(row["lightning_ms"] / row["plain_ms"])
    assert row["run_ratio"] == pytest.approx(row["run_ms"] / row["plain_ms"])
    assert all(row[k] > 0 for k in ("plain_ms", "lightning_ms", "run_ms", "run_median_ms"))
    assert "(binexp train's trainer and callbacks)" in done.stdout
