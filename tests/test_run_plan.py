"""scripts/run_plan.py: plans of runs side by side, a deadline that leaves resumable runs, one packed archive."""

from __future__ import annotations

import json
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import run_plan  # noqa: E402

SMOKE = "dataset=synthetic debug=smoke dataset.num_test=64 protocol.finetune_epochs=0"


def write_plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "probe.txt"
    path.write_text(text)
    return path


def test_a_plan_is_names_and_overrides_with_comments(tmp_path):
    runs = run_plan.read_plan(write_plan(tmp_path, "# two runs\n\na  x=1 'y=[1,2]'  # the first\nb.2 x=2\n"))
    assert [(r.name, r.overrides) for r in runs] == [("a", ["x=1", "y=[1,2]"]), ("b.2", ["x=2"])]


PLANS = sorted((Path(__file__).resolve().parents[1] / "scripts" / "plans").glob("*.txt"))


@pytest.mark.parametrize("plan", PLANS, ids=[p.stem for p in PLANS])
def test_every_shipped_plan_composes(plan):
    from binexp.builder import build
    from binexp.config import compose_train

    for run in run_plan.read_plan(plan):
        cfg = compose_train(run.overrides)
        build(cfg.method)  # enum-valued keys (method.scaling, method.activation_grad) are checked here
        assert cfg.trainer.accelerator == "gpu", run.name  # the plans are sized for one GPU


@pytest.mark.parametrize("text, message", [
    ("x=1 y=2\n", "probe.txt:1: a line starts with the run's name"),
    ("~lr_scheduler x=1\n", "probe.txt:1: a line starts with the run's name"),
    (".. x=1\n", "probe.txt:1: a line starts with the run's name"),
    ("a x=1\na x=2\n", "probe.txt:2: run name 'a' is used twice"),
    ("a hydra.run.dir=/tmp/x\n", "probe.txt:1: a plan's run sets neither hydra.run.dir"),
    ("# nothing\n", "no runs in the plan"),
])
def test_bad_plans_say_which_line_and_why(tmp_path, text, message):
    with pytest.raises(SystemExit, match=message):
        run_plan.read_plan(write_plan(tmp_path, text))


def test_a_missing_plan_and_a_deadline_that_is_not_a_time_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit, match=f"run_plan.py: plan {tmp_path / 'nope.txt'} not found"):
        run_plan.main([str(tmp_path / "nope.txt")])
    plan = write_plan(tmp_path, f"a {SMOKE}\n")
    for flag, value, message in (("--deadline", "0", "--deadline=0: must be a number of seconds > 0"),
                                 ("--grace", "-1", "--grace=-1: must be a number of seconds >= 0")):
        with pytest.raises(SystemExit) as err:
            run_plan.main([str(plan), flag, value, "--logs", str(tmp_path / "logs")])
        assert err.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_only_names_the_runs_of_the_plan(tmp_path, capsys):
    plan = write_plan(tmp_path, f"a {SMOKE}\nb {SMOKE}\n")
    with pytest.raises(SystemExit) as err:
        run_plan.main([str(plan), "--only", "c", "--dry-run"])
    assert err.value.code == 2 and f"--only: c not in {plan} (its runs: a, b)" in capsys.readouterr().err
    assert run_plan.main([str(plan), "--only", "b", "--dry-run", "--logs", str(tmp_path / "logs")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and f"hydra.run.dir={tmp_path / 'logs' / 'probe' / 'b'}" in printed[0]


def test_two_runs_at_once_then_packed_without_checkpoints_and_skipped_when_run_again(tmp_path, capsys):
    plan = write_plan(tmp_path, f"a {SMOKE} seed=0\nb {SMOKE} seed=1\n")
    logs, archive = tmp_path / "logs", tmp_path / "out" / "probe.tar.gz"
    assert run_plan.main([str(plan), "--logs", str(logs), "--pack", str(archive)]) == 0
    rows = json.loads((logs / "probe" / "summary.json").read_text())
    assert [(r["name"], r["status"], r["rc"]) for r in rows] == [("a", "done", 0), ("b", "done", 0)]
    for row in rows:
        assert row["test/acc"] == json.loads((logs / "probe" / row["name"] / "metrics.json").read_text())["test/acc"]
    names = tarfile.open(archive).getnames()
    assert {"probe/a/metrics.json", "probe/b/metrics.json", "probe/a/.hydra/config.yaml", "probe/a.out",
            "probe/summary.json"} <= set(names)
    assert any(n.startswith("probe/a/tb/events.out.tfevents") for n in names)
    assert not any(n.endswith(".ckpt") for n in names)

    capsys.readouterr()
    assert run_plan.main([str(plan), "--logs", str(logs), "--only", "b"]) == 0
    rows = json.loads((logs / "probe" / "summary.json").read_text())  # --only keeps the other runs' rows
    assert [(r["name"], r["status"]) for r in rows] == [("a", "done"), ("b", "skipped (finished before)")]
    assert run_plan.main([str(plan), "--logs", str(logs)]) == 0
    rows = json.loads((logs / "probe" / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["skipped (finished before)"] * 2
    assert "start" not in capsys.readouterr().out

    changed = write_plan(tmp_path, f"a {SMOKE} seed=0\nb {SMOKE} seed=2\n")
    with pytest.raises(SystemExit) as err:
        run_plan.main([str(changed), "--logs", str(logs), "--dry-run"])
    assert str(err.value) == (f"{changed}: run 'b' finished in {logs / 'probe' / 'b'} as another job (dataset.seed: 1 there, 2 "
                              f"on its line, seed: 1 there, 2 on its line); give the changed line a new name or pass another --logs")
    respelled = write_plan(tmp_path, f"a seed=0 {SMOKE}\nb {SMOKE} seed=01\n")  # the same jobs: it stopped the plan
    assert run_plan.main([str(respelled), "--logs", str(logs)]) == 0
    assert [r["status"] for r in json.loads((logs / "probe" / "summary.json").read_text())] == ["skipped (finished before)"] * 2


class ClockThatJumpsOnceSaved:
    """run_plan's clock, a day ahead once `path` exists: the deadline falls after the run's first checkpoint however
    long the machine takes to start it."""

    def __init__(self, path: Path):
        self.path = path

    def monotonic(self) -> float:
        return time.monotonic() + (86_400.0 if self.path.exists() else 0.0)

    sleep, strftime = staticmethod(time.sleep), staticmethod(time.strftime)


def test_the_deadline_stops_a_run_with_a_resumable_checkpoint(tmp_path, monkeypatch):
    plan = write_plan(tmp_path, f"long {SMOKE} trainer.max_epochs=100000\nlater {SMOKE}\n")
    logs = tmp_path / "logs"
    monkeypatch.setattr(run_plan, "time", ClockThatJumpsOnceSaved(logs / "probe" / "long" / "checkpoints" / "last.ckpt"))
    assert run_plan.main([str(plan), "--logs", str(logs), "--jobs", "1", "--deadline", "3600"]) == 1
    rows = {r["name"]: r for r in json.loads((logs / "probe" / "summary.json").read_text())}
    assert rows["long"]["status"] == "stopped (deadline)" and rows["long"]["rc"] == 130
    assert rows["later"]["status"] == "not started (deadline)" and not (logs / "probe" / "later").exists()
    saved = torch.load(logs / "probe" / "long" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] > 0 and not (logs / "probe" / "long" / "metrics.json").exists()
    assert "resume=" in (logs / "probe" / "long.out").read_text()  # binexp's own resume hint


@pytest.mark.parametrize("rc,status", [(130, "stopped (deadline)"), (-15, "stopped (deadline)"), (3, "failed (3)"),
                                       (0, "done")])
def test_after_the_deadline_only_a_stop_counts_as_stopped(tmp_path, rc, status):
    from types import SimpleNamespace

    run = SimpleNamespace(process=SimpleNamespace(returncode=rc), started=time.monotonic(), run_dir=tmp_path, name="x")
    run_plan.finish(run, stopped=True)
    assert run.status == status


def test_a_finished_run_with_a_drawn_seed_is_skipped_when_the_plan_runs_again(tmp_path, capsys):
    """seed=null: the run recorded the seed it drew, and the plan's line still says null; it was refused as another
    job."""
    plan, logs = write_plan(tmp_path, f"drawn {SMOKE} seed=null trainer.max_epochs=1\n"), tmp_path / "logs"
    assert run_plan.main([str(plan), "--logs", str(logs)]) == 0
    assert run_plan.main([str(plan), "--logs", str(logs)]) == 0
    rows = json.loads((logs / "probe" / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["skipped (finished before)"]
