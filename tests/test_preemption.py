"""Preemption and re-runs: a killed run continues exactly, a re-run skips finished jobs, requeue handlers chain."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from binexp.errors import ConfigError, RunInterrupted
from binexp.train import train
from tests.conftest import SMOKE, compose_train

ABR = ["method=abr", "trainer.max_epochs=4", "trainer.deterministic=true"]  # two_phase: 2 + 2 epochs


def _record(path: Path) -> list[str]:
    return ["+callbacks.record._target_=tests.helpers.RecordBatches", f"+callbacks.record.path={path}"]


def _signal_at(step: int, name: str = "SIGTERM") -> list[str]:
    return ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", f"+callbacks.signal.step={step}",
            f"+callbacks.signal.signal_name={name}"]


def tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)


def test_killed_abr_run_rerun_into_its_directory_equals_an_uninterrupted_one(tmp_path, caplog):
    """SIGTERM in phase 1 (step 5 of 16), then the same command again: the run continues from last.ckpt with the
    same data order and schedule values, and ends with the uninterrupted run's metrics and buffers, bit for bit."""
    straight_dir = tmp_path / "straight"
    straight = train(compose_train(SMOKE + ABR + _record(tmp_path / "straight.txt"), run_dir=straight_dir))

    cut_dir = tmp_path / "cut"
    with pytest.raises(RunInterrupted, match="resume="):
        train(compose_train(SMOKE + ABR + _record(tmp_path / "cut.txt") + _signal_at(5), run_dir=cut_dir))
    cut = _state(cut_dir)
    assert cut["global_step"] == 6 and not (cut_dir / "metrics.json").exists()
    phases = [v.item() for k, v in cut["state_dict"].items() if k.endswith("phase")]
    assert phases and set(phases) == {1.0}  # still phase 1

    with caplog.at_level(logging.INFO, logger="binexp"):  # re-run: no resume= needed, it finds last.ckpt
        resumed = train(compose_train(SMOKE + ABR + _record(tmp_path / "cut.txt"), run_dir=cut_dir))
    assert f"CONTINUING run {cut_dir} from {cut_dir / 'checkpoints' / 'last.ckpt'} (step 6)" in caplog.text

    assert resumed["trainer/global_step"] == straight["trainer/global_step"] == 16
    saved = json.loads((cut_dir / "metrics.json").read_text())
    assert set(saved) == set(straight)
    for key in straight:
        if key != "time/wall_s":
            assert saved[key] == straight[key], key
    for key in ("protocol/phase1_regular", "protocol/finetuned", "schedule/slope_lambda", "schedule/phase"):
        assert key in saved, key
    assert saved["schedule/phase"] == 2.0
    a, b = _state(straight_dir)["state_dict"], _state(cut_dir)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lambdas = [k for k in a if k.endswith("slope_lambda")]
    assert lambdas and all(a[k].item() == pytest.approx(1e-2) for k in lambdas)  # lambda2 in phase 2

    # the same batches in the same order: the interrupted step 5 was trained once, before the stop
    seen = (tmp_path / "cut.txt").read_text().splitlines()
    assert seen == (tmp_path / "straight.txt").read_text().splitlines()
    # the binarization curve: the same points, none added where the run picked up again (mid-epoch, step 6)
    assert (cut_dir / "binarization.csv").read_text() == (straight_dir / "binarization.csv").read_text()


def test_a_run_stopped_after_its_last_checkpoint_resumes_to_the_same_metrics_and_curves(tmp_path):
    """Stopped in the test or the protocol (last.ckpt at the last epoch, no metrics.json yet), the resumed run
    trains nothing: metrics.json still holds the fit's values, which ride in the checkpoint, and the curves get no
    second row for the step it starts at."""
    run_dir = tmp_path / "run"
    straight = train(compose_train(SMOKE + ABR, run_dir=run_dir))
    curves = (run_dir / "binarization.csv").read_text()
    (run_dir / "metrics.json").unlink()  # what a kill in the protocol leaves

    resumed = train(compose_train(SMOKE + ABR + [f"resume={run_dir}"], run_dir=run_dir))
    assert resumed.keys() == straight.keys()
    for key in ("train/loss", "train/acc", "val/acc", "val/loss", "schedule/phase", "schedule/slope_lambda"):
        assert key in resumed, key
    for key in straight:
        if key != "time/wall_s":
            assert resumed[key] == straight[key], key
    assert (run_dir / "binarization.csv").read_text() == curves


def test_a_run_resumed_at_an_epoch_end_measures_each_step_once(tmp_path):
    """Resumed from the checkpoint of an epoch whose end was measured, the curves go on from the next epoch: the
    same (step, epoch) rows as an uninterrupted run, none repeated under the next epoch's number."""
    phases = ["schedule.phase1_epochs=1"]
    straight_dir = tmp_path / "straight"
    train(compose_train(SMOKE + ABR + phases, run_dir=straight_dir))
    cut_dir = tmp_path / "cut"
    train(compose_train(SMOKE + ABR + phases + ["trainer.max_epochs=2"], run_dir=cut_dir))
    train(compose_train(SMOKE + ABR + phases + [f"resume={cut_dir}"], run_dir=cut_dir))

    assert (cut_dir / "binarization.csv").read_text() == (straight_dir / "binarization.csv").read_text()


def test_requeue_signal_is_handed_to_the_cluster_handler_after_the_checkpoint(tmp_path):
    """SIGUSR1 with a handler installed before training (as Lightning's SLURM auto-requeue or submitit install
    theirs): binexp saves last.ckpt at the step boundary first, then calls that handler once."""
    run_dir = tmp_path / "run"
    calls = []

    def cluster_handler(signum, frame):
        calls.append((signum, _state(run_dir)["global_step"]))

    before = signal.signal(signal.SIGUSR1, cluster_handler)
    try:
        with pytest.raises(RunInterrupted):
            train(compose_train(SMOKE + _signal_at(2, "SIGUSR1"), run_dir=run_dir))
        assert calls == [(signal.SIGUSR1, 3)]
        assert signal.getsignal(signal.SIGUSR1) is cluster_handler  # given back after training
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_sigterm_is_not_handed_on(tmp_path):
    """SIGTERM's earlier handler (Lightning's would kill the ranks) is not called: the run just stops."""
    calls = []
    before = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    try:
        with pytest.raises(RunInterrupted):
            train(compose_train(SMOKE + _signal_at(1), run_dir=tmp_path / "run"))
    finally:
        signal.signal(signal.SIGTERM, before)
    assert calls == []


def test_a_finished_run_leaves_the_signal_handlers_it_found(tmp_path):
    """After training, SIGTERM and SIGINT reach the handlers that were there before (Lightning's SIGTERM handler
    only logs, so left installed it made the test and the protocol ignore `timeout` and a cluster's kill)."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    train(compose_train(SMOKE, run_dir=tmp_path / "run"))
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_finished_run_is_skipped_when_rerun_into_its_directory(tmp_path, caplog):
    run_dir = tmp_path / "run"
    first = train(compose_train(SMOKE + ["trainer.max_epochs=1"], run_dir=run_dir))
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and ".hydra" not in p.parts}
    with caplog.at_level(logging.INFO, logger="binexp"):
        again = train(compose_train(SMOKE + ["trainer.max_epochs=1"], run_dir=run_dir))
    assert again == json.loads((run_dir / "metrics.json").read_text())
    assert again["test/acc"] == first["test/acc"]
    assert f"SKIPPED run {run_dir}: {run_dir / 'metrics.json'} already holds final metrics" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing trained, nothing written

    with pytest.raises(ConfigError, match=r"holds a different job \(optimizer.lr: 0.01 there, 0.05 now"):
        train(compose_train(SMOKE + ["trainer.max_epochs=1", "optimizer.lr=0.05"], run_dir=run_dir))
    with pytest.raises(ConfigError, match=r"holds a different job \(trainer.max_epochs: 1 there, 2 now.*resume="):
        train(compose_train(SMOKE + ["trainer.max_epochs=2"], run_dir=run_dir))
    with pytest.raises(ConfigError, match="existing_run='again': allowed are continue, restart"):
        train(compose_train(SMOKE + ["trainer.max_epochs=1", "existing_run=again"], run_dir=run_dir))
    with pytest.raises(ConfigError, match="existing_run='': allowed are continue, restart"):  # it was taken as continue
        train(compose_train(SMOKE + ["trainer.max_epochs=1", "existing_run="], run_dir=run_dir))

    kept = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="dataset.batch_size=0"):  # refused: the earlier run's results stay
        train(compose_train(SMOKE + ["existing_run=restart", "dataset.batch_size=0"], run_dir=run_dir))
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == kept
    restarted = train(compose_train(SMOKE + ["trainer.max_epochs=2", "existing_run=restart"], run_dir=run_dir))
    assert restarted["trainer/global_step"] == 8  # from scratch: 2 epochs, not 1 + 1
    assert _state(run_dir)["global_step"] == 8


def test_a_launch_into_a_run_directory_decides_its_record_folder_once(tmp_path):
    """Hydra resolves hydra.output_subdir more than once per launch: every time the same folder, until binexp has
    read it (launch_record); the next launch decides afresh."""
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    from binexp.hydra_output import launch_record, launch_subdir

    run_dir = tmp_path / "run"
    assert launch_subdir(str(run_dir)) == launch_subdir(str(run_dir)) == ".hydra"
    train(compose_train(SMOKE + ["trainer.max_epochs=1"], run_dir=run_dir))
    assert launch_subdir(str(run_dir)) == ".hydra"  # decided before the run wrote its record
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(output_subdir=launch_subdir(str(run_dir)))))
        assert launch_record(run_dir) == run_dir / ".hydra"
    first = launch_subdir(str(run_dir))
    assert re.fullmatch(r"\.hydra/rerun-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", first) and launch_subdir(str(run_dir)) == first


def test_a_run_trained_over_keeps_only_the_record_of_the_launch_that_did_it(tmp_path):
    from binexp.hydra_output import adopt_launch_record, discard_launch_record

    run_dir = tmp_path / "run"
    for folder in (".hydra", ".hydra/resumed-1", ".hydra/rerun-1", ".hydra/rerun-2"):
        (run_dir / folder).mkdir(parents=True)
        (run_dir / folder / "config.yaml").write_text(folder)
    adopt_launch_record(run_dir, run_dir / ".hydra" / "rerun-2")
    assert (run_dir / ".hydra" / "config.yaml").read_text() == ".hydra/rerun-2"
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "rerun-2"]
    discard_launch_record(run_dir, run_dir / ".hydra")  # never the run's own record
    discard_launch_record(run_dir, run_dir / ".hydra" / "rerun-2")
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml"]

def test_a_refused_first_launch_takes_only_what_hydra_made(tmp_path, monkeypatch):
    from binexp.hydra_output import discard_refused_first_launch

    def launch(run_dir: Path) -> logging.Handler:  # what Hydra makes before binexp runs: .hydra/ and the job's log
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("{}")
        handler = logging.FileHandler(run_dir / "train.log")
        logging.getLogger().addHandler(handler)
        return handler

    fresh = tmp_path / "fresh"
    handler = launch(fresh)
    discard_refused_first_launch(fresh, fresh / ".hydra")
    assert not fresh.exists() and handler not in logging.getLogger().handlers
    monkeypatch.chdir(tmp_path)  # Hydra's default run dir: logs/train/runs/<time>, parents made with it
    (tmp_path / "logs" / "eval").mkdir(parents=True)
    nested = tmp_path / "logs" / "train" / "runs" / "2026-12-07_01-00-00"
    launch(nested)
    discard_refused_first_launch(nested, nested / ".hydra")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # logs/ holds eval/, which was there before
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["eval"]
    outside = tmp_path / "elsewhere" / "run"  # a run dir outside the working directory: its parents stay
    monkeypatch.chdir(tmp_path / "logs" / "eval")
    launch(outside)
    discard_refused_first_launch(outside, outside / ".hydra")
    assert not outside.exists() and (tmp_path / "elsewhere").is_dir()
    users = tmp_path / "users"  # hydra.run.dir pointed at a folder of the user's own
    users.mkdir()
    (users / "notes.log").write_text("mine")
    launch(users)
    discard_refused_first_launch(users, users / ".hydra")
    assert sorted(p.name for p in users.iterdir()) == ["notes.log", "train.log"]


def test_two_refused_launches_into_one_folder_each_clean_up_without_an_error(tmp_path, monkeypatch):
    """Two refused evals in the same second share eval/<time>/: the second's cleanup found it gone and raised
    FileNotFoundError inside its error path."""
    import shutil

    from binexp import hydra_output

    folder = tmp_path / "eval" / "2026-12-07_15-35-25"
    (folder / ".hydra").mkdir(parents=True)
    (folder / "eval.log").write_text("")

    def the_other_launch_cleans_up_first(run_dir):
        shutil.rmtree(run_dir)  # between this launch's log closing and its look into the folder
        return []

    monkeypatch.setattr(hydra_output, "close_file_logs_in", the_other_launch_cleans_up_first)
    hydra_output.discard_refused_first_launch(folder, folder / ".hydra")
    assert not folder.exists() and (tmp_path / "eval").is_dir()


def test_a_run_cut_by_max_steps_inside_an_epoch_resumes_at_its_next_batch(tmp_path):
    """max_steps=6 stops in epoch 1 (4 batches an epoch); resumed to max_steps=10 it equals a run to 10 at once."""
    cut = SMOKE + ["trainer.max_epochs=3", "trainer.deterministic=true"]
    train(compose_train(cut + ["trainer.max_steps=6"], run_dir=tmp_path / "cut"))
    assert _state(tmp_path / "cut")["global_step"] == 6 and not (tmp_path / "cut" / "checkpoints" / "last.ckpt.cut").exists()
    resumed = train(compose_train(cut + ["trainer.max_steps=10", f"resume={tmp_path / 'cut'}"], run_dir=tmp_path / "cut"))
    straight = train(compose_train(cut + ["trainer.max_steps=10"], run_dir=tmp_path / "straight"))
    for key in ("trainer/global_step", "trainer/epochs", "test/acc", "test/loss"):
        assert resumed[key] == straight[key], key

def test_a_run_cut_by_max_steps_measures_its_last_step_once_and_keeps_its_schedule_values(tmp_path):
    """ABR cut by max_steps=6 in phase 2 (phase 1: one epoch of 4 steps). Stopped after its checkpoint (no
    metrics.json), the resumed run still reports the last step's schedule values; resumed to max_steps=10, its
    curves hold each step once: a run to 10 at once's, and step 6, where the cut one stopped."""
    common = SMOKE + ABR + ["schedule.phase1_epochs=1", "trainer.log_every_n_steps=50"]
    cut_dir = tmp_path / "cut"
    first = train(compose_train(common + ["trainer.max_steps=6"], run_dir=cut_dir))
    assert first["schedule/phase"] == 2.0 and first["schedule/slope_lambda"] == pytest.approx(1e-2)
    (cut_dir / "metrics.json").unlink()  # what a kill in the test or the protocol leaves
    again = train(compose_train(common + ["trainer.max_steps=6", f"resume={cut_dir}"], run_dir=cut_dir))
    assert again["schedule/phase"] == 2.0 and again["schedule/slope_lambda"] == first["schedule/slope_lambda"]

    train(compose_train(common + ["trainer.max_steps=10", f"resume={cut_dir}"], run_dir=cut_dir))
    train(compose_train(common + ["trainer.max_steps=10"], run_dir=tmp_path / "straight"))

    def rows(run_dir: Path) -> list[tuple[str, str]]:  # (step, layer)
        return [(r.split(",")[0], r.split(",")[2]) for r in (run_dir / "binarization.csv").read_text().splitlines()[1:]]

    assert len(rows(cut_dir)) == len(set(rows(cut_dir)))
    assert set(rows(cut_dir)) == set(rows(tmp_path / "straight")) | {("6", "fc1")}


def test_a_run_started_before_a_config_key_existed_continues(tmp_path, caplog):
    """A checkpoint whose saved config lacks a key the schema has now (an older binexp) is the same job: rerun into
    its directory, it continues; a value both configs hold and that differs is still refused."""
    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        train(compose_train(SMOKE + ["trainer.max_epochs=2"] + _signal_at(1), run_dir=run_dir))
    state = _state(run_dir)
    del state["hyper_parameters"]["config"]["protocol"]["bn_batches"]
    torch.save(state, run_dir / "checkpoints" / "last.ckpt")

    with pytest.raises(ConfigError, match=r"holds a different job \(optimizer.lr: 0.01 there, 0.05 now"):
        train(compose_train(SMOKE + ["trainer.max_epochs=2", "optimizer.lr=0.05"], run_dir=run_dir))
    with caplog.at_level(logging.INFO, logger="binexp"):
        finished = train(compose_train(SMOKE + ["trainer.max_epochs=2"], run_dir=run_dir))
    assert "CONTINUING run" in caplog.text and "(step 2)" in caplog.text
    assert finished["trainer/global_step"] == 8


def test_an_interrupted_sweep_rerun_with_its_sweep_dir_skips_finished_jobs(tmp_path):
    """`binexp train -m ...` twice with the same hydra.sweep.dir: job 0 finished and is skipped (said so in the
    log), job 1 had been killed and continues from its checkpoint."""
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "binexp.cli", "train", "-m", "dataset=synthetic", "debug=smoke",
            "trainer.max_epochs=2", "optimizer.lr=0.01,0.05", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    done = json.loads((sweep / "0" / "metrics.json").read_text())
    stamp = (sweep / "0" / "metrics.json").stat().st_mtime_ns
    (sweep / "1" / "metrics.json").unlink()  # as if job 1 had been killed after its last checkpoint

    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    log = (out.stdout + out.stderr)
    assert re.search(r"SKIPPED job 0 \(dataset=synthetic .*optimizer.lr=0.01\): .*0/metrics.json already holds", log)
    assert re.search(r"CONTINUING job 1 \(.*optimizer.lr=0.05\) from .*1/checkpoints/last.ckpt \(step 8\)", log)
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == stamp
    assert json.loads((sweep / "0" / "metrics.json").read_text()) == done
    assert json.loads((sweep / "1" / "metrics.json").read_text())["trainer/global_step"] == 8

    record = {p: p.read_bytes() for p in (sweep / "0" / ".hydra").glob("*.yaml")}
    sweep_record = (sweep / "multirun.yaml").read_bytes()
    changed = [a.replace("optimizer.lr=0.01,0.05", "optimizer.lr=0.02,0.05") for a in args]
    out = subprocess.run(changed, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "holds a different job (optimizer.lr: 0.01 there, 0.02 now)" in out.stderr
    assert (sweep / "multirun.yaml").read_bytes() == sweep_record  # still the sweep the folder holds, for the report
    assert {p: p.read_bytes() for p in (sweep / "0" / ".hydra").glob("*.yaml")} == record  # the run's own record
    assert not list((sweep / "0" / ".hydra").glob("rerun-*"))  # neither the skipping nor the refused launch stays

    out = subprocess.run([*changed, "existing_run=restart"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "optimizer.lr=0.02" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()  # trained over: its record
    assert "lr: 0.02" in (sweep / "0" / ".hydra" / "config.yaml").read_text()
    steps = [s for s, _ in tb_scalars(sweep / "0" / "tb", "train/loss_epoch")]
    assert steps == [3, 7]  # the new run's two epochs only: the old run's events were cleared


def test_a_finished_job_a_resume_lengthened_is_still_the_sweeps_job(tmp_path, caplog):
    run_dir = tmp_path / "job"
    job = SMOKE + ["trainer.max_epochs=1"]
    train(compose_train(job, run_dir=run_dir))
    from omegaconf import OmegaConf

    (run_dir / ".hydra").mkdir(exist_ok=True)  # the sweep's record of the job, as Hydra writes it
    OmegaConf.save(compose_train(job, run_dir=run_dir), run_dir / ".hydra" / "config.yaml")
    longer = train(compose_train(SMOKE + [f"resume={run_dir}", "trainer.max_epochs=2"], run_dir=run_dir))
    with caplog.at_level(logging.INFO, logger="binexp"):
        again = train(compose_train(job, run_dir=run_dir))  # the sweep's command again
    assert again == longer and "SKIPPED" in caplog.text
    with pytest.raises(ConfigError, match=r"holds a different job \(trainer.max_epochs: 1 there, 3 now"):
        train(compose_train(SMOKE + ["trainer.max_epochs=3"], run_dir=run_dir))


def test_a_finished_job_without_last_ckpt_is_still_checked_against_its_first_launch(tmp_path, caplog):
    """With callbacks.last_checkpoint=null (or the checkpoints deleted), a sweep re-run whose job numbers meant other
    values skipped them as finished: t_clip 0.75 was never trained, and its row showed the 0.25 run's accuracy."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / "job"
    job = SMOKE + ["method=ste", "method.t_clip=0.25", "callbacks.last_checkpoint=null"]
    first = train(compose_train(job, run_dir=run_dir))
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    (run_dir / ".hydra").mkdir(exist_ok=True)  # the sweep's record of the job, as Hydra writes it
    OmegaConf.save(compose_train(job, run_dir=run_dir), run_dir / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match=r"holds a different job \(method.t_clip: 0.25 there, 0.75 now\)"):
        train(compose_train([*job[:-2], "method.t_clip=0.75", job[-1]], run_dir=run_dir))
    with caplog.at_level(logging.INFO, logger="binexp"):
        assert train(compose_train(job, run_dir=run_dir)) == first and "SKIPPED" in caplog.text


# ---- a kill (SIGKILL, OOM, power) in the middle of writing a file ------------------------------------------------
def test_a_checkpoint_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """Lightning writes its temporary file in TMPDIR and, where that is another filesystem (tmpfs /tmp, a node's
    own disk under a run on NFS), copies it over last.ckpt in place: a kill then left half a checkpoint."""
    from binexp import atomic_files

    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    atomic_files.torch_save({"step": 1}, path)

    def killed(obj, f):
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt  # the process ends here

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_files.torch_save({"step": 2}, path)
    assert torch.load(path) == {"step": 1} and [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_the_trainer_saves_checkpoints_through_the_atomic_writer(tmp_path):
    from binexp.train import AtomicCheckpointIO, build_trainer

    trainer = build_trainer(compose_train(SMOKE, run_dir=tmp_path), [], tmp_path)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_damaged_last_ckpt_is_named_with_what_to_do(tmp_path):
    run_dir = tmp_path / "run"
    job = SMOKE + ["trainer.max_epochs=2", "dataset.val_size=64"]
    with pytest.raises(RunInterrupted):
        train(compose_train(job + _signal_at(6), run_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a kill mid-copy left it
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(last))} is not a checkpoint torch can read \(.*\): cut short "
                                          rf"or damaged \(a process killed while writing it\?\); copy an earlier "
                                          rf"checkpoint over it \(cp {re.escape(str(best[0]))} {re.escape(str(last))}\) "
                                          r"and launch again, or train the run again from scratch \(its command with "
                                          r"existing_run=restart\)$"):
        train(compose_train(job, run_dir=run_dir))
    with pytest.raises(ConfigError, match=r"last.ckpt is not a checkpoint torch can read .* cut short or damaged"):
        train(compose_train(SMOKE + [f"resume={run_dir}"], run_dir=run_dir))


def test_a_cut_metrics_json_is_named_with_what_to_do(tmp_path):
    run_dir = tmp_path / "run"
    steps = train(compose_train(SMOKE, run_dir=run_dir))["trainer/global_step"]
    metrics = run_dir / "metrics.json"
    metrics.write_text(metrics.read_text()[:20])
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(metrics))} is not JSON \(cut short\?\): delete it, and the "
                                          r"run goes on from its last.ckpt"):
        train(compose_train(SMOKE, run_dir=run_dir))
    metrics.unlink()
    assert train(compose_train(SMOKE, run_dir=run_dir))["trainer/global_step"] == steps  # tested again, not trained


def test_a_curve_row_cut_by_a_kill_is_dropped_before_the_next_is_appended(tmp_path):
    from binexp.callbacks.binarization import append_csv
    from binexp.report.curves import read_curves

    path = tmp_path / "binarization.csv"
    append_csv(path, 0, 0, {"fc1": {"binary99": 0.25}})
    append_csv(path, 4, 1, {"fc1": {"binary99": 0.5}})
    path.write_bytes(path.read_bytes()[:-3])  # the second row, half written
    append_csv(path, 8, 2, {"fc1": {"binary99": 0.75}})
    assert read_curves(path)["fc1"]["step"] == [0, 8]
    path.write_bytes(b"step,ep")  # killed while writing the header
    append_csv(path, 12, 3, {"fc1": {"binary99": 1.0}})
    assert read_curves(path)["fc1"]["binary99"] == [1.0]


def test_a_best_checkpoint_saved_again_after_a_kill_replaces_itself(tmp_path):
    """Killed after the epoch's best-*.ckpt and before its last.ckpt, a run goes on from the epoch before and saves
    that best again: beside the first as best-...-v1.ckpt, which `ckpt=best` then took and nothing removed."""
    import shutil

    job = SMOKE + ["dataset.val_size=64", "callbacks.best_checkpoint.monitor=step"]  # the last epoch is the best
    done, cut = tmp_path / "done", tmp_path / "cut"
    train(compose_train(job, run_dir=done))
    with pytest.raises(RunInterrupted):
        train(compose_train(job + _signal_at(4), run_dir=cut))  # the first epoch's last.ckpt
    shutil.copy(cut / "checkpoints" / "last.ckpt", done / "checkpoints" / "last.ckpt")  # as the kill left it
    (done / "metrics.json").unlink()
    names = sorted(p.name for p in (done / "checkpoints").iterdir())
    train(compose_train(job, run_dir=done))
    assert sorted(p.name for p in (done / "checkpoints").iterdir()) == names


def test_a_run_killed_past_its_last_checkpoint_draws_each_step_once_after_it_goes_on(tmp_path):
    """Killed without warning (SIGKILL) at step 6 with its last.ckpt at step 4, a run had logged steps 5 and 6; going
    on from step 4 logged them again: TensorBoard's event readers drew a zig-zag back to 4, binarization.csv held
    those rows twice."""
    import shutil

    from binexp.report.curves import read_curves

    job = SMOKE + ["method=ste", "trainer.log_every_n_steps=1", "callbacks.binarization.every_n_steps=1"]
    killed, at_four = tmp_path / "killed", tmp_path / "at_four"
    with pytest.raises(RunInterrupted):
        train(compose_train(job + _signal_at(6), run_dir=killed))
    with pytest.raises(RunInterrupted):
        train(compose_train(job + _signal_at(3), run_dir=at_four))  # stopped after step 4: the first epoch's end
    shutil.copy(at_four / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt")  # as the kill left it
    assert _state(killed)["global_step"] == 4
    train(compose_train(job, run_dir=killed))  # the same command again: it goes on from last.ckpt

    losses = [step for step, _ in tb_scalars(killed / "tb", "train/loss_step")]
    assert losses == sorted(losses) and set(losses) == set(range(8))  # step 4, the first after the checkpoint,
    assert len(losses) <= 9                                           # may be drawn by both launches
    measured = [step for step, _ in tb_scalars(killed / "tb", "binarization/fc1/ones")]
    assert measured == list(range(1, 9))  # step 4's, measured before its checkpoint was saved, is kept
    with (killed / "binarization.csv").open() as f:
        rows = [(row.split(",")[0], row.split(",")[2]) for row in f.read().splitlines()[1:]]
    assert len(rows) == len(set(rows))
    assert read_curves(killed / "binarization.csv")["fc1"]["step"] == list(range(1, 9))


def test_a_launch_killed_before_its_first_checkpoint_leaves_no_curves_to_the_next(tmp_path):
    """Killed before any checkpoint, the same command trains the run from its start: its CSV read 20 40 60 20 40 60."""
    import shutil

    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        train(compose_train(SMOKE + ["method=ste", "callbacks.binarization.every_n_steps=1"] + _signal_at(2),
                            run_dir=run_dir))
    shutil.rmtree(run_dir / "checkpoints")  # as a kill before the first checkpoint leaves the run
    assert (run_dir / "binarization.csv").exists()
    (run_dir / "tb" / "stale.txt").write_text("the killed launch's")
    train(compose_train(SMOKE + ["method=ste", "callbacks.binarization.every_n_steps=1"], run_dir=run_dir))
    assert not (run_dir / "tb" / "stale.txt").exists()
    with (run_dir / "binarization.csv").open() as f:
        steps = [int(row.split(",")[0]) for row in f.read().splitlines()[1:]]
    assert steps == sorted(steps)


def test_the_csv_logger_keeps_the_rows_of_earlier_launches_and_drops_those_past_the_checkpoint(tmp_path):
    """Lightning's CSVLogger deleted csv/metrics.csv when a run went on from its last.ckpt: only the last launch's rows
    were left. A kill past the checkpoint (step 4) also left rows of steps 5 and 6 to be logged again."""
    import csv
    import shutil

    job = ["dataset=synthetic", "debug=smoke", "logger=csv", "trainer.log_every_n_steps=1"]
    killed, at_four = tmp_path / "killed", tmp_path / "at_four"
    with pytest.raises(RunInterrupted):
        train(compose_train(job + _signal_at(6), run_dir=killed))
    with pytest.raises(RunInterrupted):
        train(compose_train(job + _signal_at(3), run_dir=at_four))
    shutil.copy(at_four / "checkpoints" / "last.ckpt", killed / "checkpoints" / "last.ckpt")  # as the kill left it
    train(compose_train(job, run_dir=killed))
    with (killed / "csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert losses == sorted(losses) and set(losses) == set(range(8)) and len(losses) <= 9
    assert [int(r["step"]) for r in rows if r.get("val/acc")] == [3, 7]  # each epoch's, the first launch's kept


def test_events_after_a_step_are_dropped_from_the_files_whatever_order_readers_take_them_in(tmp_path):
    """TensorBoard's purge_step is an event that readers apply to what they read before it: in one process (a
    sweep's jobs) a launch's tenth event file sorts before its eighth, and the purge took that launch's own values."""
    from torch.utils.tensorboard import SummaryWriter

    from binexp.tb_events import drop_events_after

    for steps in (range(7), range(7, 9)):  # two launches' files
        writer = SummaryWriter(str(tmp_path))
        for step in steps:
            writer.add_scalar("x", float(step), step)
        writer.close()
    drop_events_after(tmp_path, 4)
    assert tb_scalars(tmp_path, "x") == [(s, float(s)) for s in range(5)]
