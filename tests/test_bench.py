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


def _bench_train():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", REPO / "scripts" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plain_loop_does_the_methods_work_of_each_step_too(monkeypatch):
    import torch

    from binexp.binarize.abr import ABR

    bench = _bench_train()
    calls = {"regularization": 0, "after_optimizer_step": 0}
    for hook in calls:
        original = getattr(ABR, hook)

        def counted(self, net, _hook=hook, _original=original):
            calls[_hook] += 1
            return _original(self, net)

        monkeypatch.setattr(ABR, hook, counted)
    cfg = bench.compose_cfg("cifar_quick", 2, "synthetic", 512, None, ["architecture.width=0.0625", "method=abr"])
    bench.plain_loop(cfg, torch.device("cpu"), steps=3, warmup=1, precision="32")
    assert calls == {"regularization": 4, "after_optimizer_step": 4}  # as binexp's module does every step


def test_a_loop_that_stopped_short_of_its_steps_is_not_divided_by_them():
    with pytest.raises(SystemExit, match="bench_train: 2 steps were timed, not the 3 asked"):
        _bench_train().per_step([0.0, 1.0], 2.0, 3)


@pytest.mark.parametrize("script,failing,runs", [("reproduce_abr.sh", "table1_cifar10", 8), ("reproduce_sbn.sh", "bc", 9)])
def test_a_reproduction_goes_on_past_a_failed_run_and_reports_but_stops_on_a_stop(tmp_path, script, failing, runs):
    import os

    stub = tmp_path / "bin" / "binexp"  # records each call; the run named `failing` diverges, `stop` is interrupted
    stub.parent.mkdir()
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {tmp_path / "calls"}\n'
                    f'for a in "$@"; do [[ $a == hydra.run.dir=*/{failing} ]] && exit 3; '
                    f'[[ $a == stop=1 ]] && exit 130; done\nexit 0\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "BINEXP_LOGS": str(tmp_path / "logs")}
    args = ["cifar10"] if script == "reproduce_abr.sh" else []
    done = subprocess.run(["bash", f"scripts/{script}", *args], cwd=REPO, env=env, capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert done.returncode == 3 and f"{failing} failed (exit 3); going on with the other runs" in done.stderr
    assert len(calls) == runs + 1 and calls[-1].startswith("report ")  # every run, then the table of those that ran
    (tmp_path / "calls").unlink()
    stopped = subprocess.run(["bash", f"scripts/{script}", *args, "stop=1"], cwd=REPO, env=env, capture_output=True)
    assert stopped.returncode == 130 and len((tmp_path / "calls").read_text().splitlines()) == 1
