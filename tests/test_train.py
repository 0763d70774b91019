"""End-to-end training runs on CPU: outputs, resume, interruption, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from binexp.errors import ConfigError, NonFiniteLossError, RunInterrupted
from binexp.evaluate import EvalConfig, eval_result_name, evaluate, load_trained
from binexp.protocol import accuracy
from binexp.train import train
from tests.conftest import SMOKE, compose_train


def run(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[Path, dict]:
    run_dir = tmp_path / name
    cfg = compose_train(SMOKE + overrides, run_dir=run_dir)
    return run_dir, train(cfg)


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_smoke_run_writes_metrics_checkpoints_and_tensorboard_events(tmp_path):
    run_dir, metrics = run(tmp_path, [])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for key in ("test/acc", "test/loss", "val/acc", "val/loss", "train/loss", "trainer/global_step"):
        assert key in saved, key
    assert 0.0 <= saved["test/acc"] <= 1.0
    assert saved["trainer/global_step"] == 8  # 2 epochs x 4 batches
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    steps = scalars(run_dir, "train/loss_step")
    assert [s for s, _ in steps] == list(range(8))
    # the epoch loss is the mean over the epoch's images (4 equal batches), logged once at the epoch's last step
    epochs = scalars(run_dir, "train/loss_epoch")
    assert [s for s, _ in epochs] == [3, 7]
    for (_, value), first in zip(epochs, (0, 4)):
        assert value == pytest.approx(sum(v for _, v in steps[first:first + 4]) / 4, rel=1e-6)
    assert [s for s, _ in scalars(run_dir, "train/acc")] == [3, 7]
    assert saved["train/loss"] == pytest.approx(epochs[-1][1], rel=1e-6)


def test_step_values_are_logged_only_on_the_steps_the_logger_writes(tmp_path):
    run_dir, _ = run(tmp_path, ["trainer.log_every_n_steps=3"])
    assert [s for s, _ in scalars(run_dir, "train/loss_step")] == [2, 5]
    assert [s for s, _ in scalars(run_dir, "train/loss_epoch")] == [3, 7]


def test_schedule_values_are_written_under_the_step_that_used_them(tmp_path):
    from binexp.schedules import ExponentialNu, Progress

    overrides = ["method=sbn", "schedule.per_step=true", "trainer.log_every_n_steps=3", "trainer.max_epochs=3"]
    run_dir, metrics = run(tmp_path, overrides)
    nu = ExponentialNu(per_step=True)
    expected = [(s, nu.values(Progress(step=s, steps_per_epoch=4, max_epochs=3))["nu"]) for s in (2, 5, 8, 11)]
    assert [s for s, _ in scalars(run_dir, "schedule/nu")] == [s for s, _ in expected]
    assert [v for _, v in scalars(run_dir, "schedule/nu")] == pytest.approx([v for _, v in expected], rel=1e-6)

    abr_dir, abr = run(tmp_path, ["method=abr", "method.growth=in_loss", "trainer.max_epochs=2"], name="abr")
    assert scalars(abr_dir, "train/regularization_step") and "train/regularization" not in abr  # a step's sample


def test_synthetic_data_is_learnable(tmp_path):
    _, metrics = run(tmp_path, ["trainer.max_epochs=6", "trainer.limit_train_batches=1.0"])
    assert metrics["test/acc"] > 0.5


def test_tiny_mnist_subset(tmp_path, shared_data):
    run_dir = tmp_path / "mnist"
    cfg = compose_train(["dataset=mnist", f"dataset.root={shared_data}", "debug=smoke"], run_dir=run_dir)
    metrics = train(cfg)
    assert (run_dir / "metrics.json").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert metrics["trainer/global_step"] == 8
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_resume_continues_from_the_saved_step(tmp_path):
    run_dir, first = run(tmp_path, ["trainer.max_epochs=1"])
    assert first["trainer/global_step"] == 4
    cfg = compose_train(SMOKE + ["trainer.max_epochs=2", f"resume={run_dir}"], run_dir=run_dir)
    second = train(cfg)
    assert second["trainer/global_step"] == 8
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8


@pytest.mark.parametrize("signal_step", [4, 3], ids=["mid-epoch", "last-batch-of-epoch"])
def test_interrupt_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, signal_step):
    common = ["trainer.max_epochs=3", "trainer.deterministic=true"]
    straight_dir, straight = run(tmp_path, common, "straight")

    stop = ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", f"+callbacks.signal.step={signal_step}"]
    cut_dir = tmp_path / "cut"
    with pytest.raises(RunInterrupted, match="resume=") as err:
        train(compose_train(SMOKE + common + stop, run_dir=cut_dir))
    assert str(cut_dir) in str(err.value)
    saved = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == signal_step + 1

    resumed = train(compose_train(SMOKE + common + [f"resume={cut_dir}"], run_dir=cut_dir))
    assert resumed["trainer/global_step"] == straight["trainer/global_step"] == 12
    a = torch.load(straight_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["test/acc"] == straight["test/acc"]
    # the interrupted epoch's loss and accuracy still cover its batches from before the stop, and the stopped
    # step's own values are logged (sorted: the cut run's two event files may be read in either order)
    for tag in ("train/loss_epoch", "train/acc", "train/loss_step"):
        assert sorted(scalars(cut_dir, tag)) == scalars(straight_dir, tag), tag


@pytest.mark.parametrize("length", [[], ["trainer.max_epochs=3"]], ids=["no-length", "the-same-length"])
def test_a_stopped_resume_that_lengthens_a_finished_run_resumes_from_the_command_line(tmp_path, monkeypatch, length):
    """The finished run's metrics.json (step 4) stays while a resume lengthens it; stopped at step 7, the same
    command again (Hydra's overrides: no length given, or the same) trains on to 12 instead of calling it finished."""
    import binexp.train

    run_dir, first = run(tmp_path, ["trainer.max_epochs=1"])
    stop = ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", "+callbacks.signal.step=6"]
    longer = [f"resume={run_dir}", "trainer.max_epochs=3"]
    monkeypatch.setattr(binexp.train, "launch_overrides", lambda: longer + stop)
    with pytest.raises(RunInterrupted):
        train(compose_train(SMOKE + longer + stop, run_dir=run_dir))
    again = [f"resume={run_dir}", *length]
    monkeypatch.setattr(binexp.train, "launch_overrides", lambda: again)
    assert train(compose_train(SMOKE + again, run_dir=run_dir))["trainer/global_step"] == 12
    with pytest.raises(ConfigError, match=r"the run has trained its trainer.max_epochs=3 .*: 3 epochs, 12 steps"):
        train(compose_train(SMOKE + again, run_dir=run_dir))  # now it is finished


def test_a_requeued_run_reads_its_last_checkpoint_once_before_lightning_does(tmp_path, monkeypatch):
    """The seed (seed=null), the job and the checkpoint's step each read the whole last.ckpt again."""
    common = ["trainer.max_epochs=2", "seed=null"]
    stop = ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", "+callbacks.signal.step=4"]
    cut_dir = tmp_path / "cut"
    with pytest.raises(RunInterrupted):
        train(compose_train(SMOKE + common + stop, run_dir=cut_dir))
    last = (cut_dir / "checkpoints" / "last.ckpt").resolve()
    reads, load = [], torch.load
    def counted(f, *args, **kwargs):  # Lightning hands over an open fsspec file
        reads.append(Path(f if isinstance(f, (str, Path)) else f.path).resolve() == last)
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    assert train(compose_train(SMOKE + common, run_dir=cut_dir))["trainer/global_step"] == 8  # the requeue
    assert reads.count(True) == 2  # binexp's start-up, then Lightning's restore


def test_a_signal_inside_an_accumulation_window_stops_where_the_optimizer_steps(tmp_path):
    common = ["trainer.max_epochs=3", "trainer.deterministic=true", "trainer.accumulate_grad_batches=2"]
    straight_dir, straight = run(tmp_path, common, "straight")
    stop = ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", "+callbacks.signal.step=0",
            "+callbacks.signal.signal_name=SIGTERM"]  # sent at the window's first batch
    cut_dir = tmp_path / "cut"
    with pytest.raises(RunInterrupted, match="stopped at step 1 "):
        train(compose_train(SMOKE + common + stop, run_dir=cut_dir))
    saved = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 1 and saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 1
    resumed = train(compose_train(SMOKE + common + [f"resume={cut_dir}"], run_dir=cut_dir))
    assert resumed["trainer/global_step"] == straight["trainer/global_step"] == 6
    a = torch.load(straight_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert resumed["test/acc"] == straight["test/acc"]


def test_a_signal_during_the_last_validation_stops_before_the_test(tmp_path):
    common = ["trainer.max_epochs=2", "trainer.deterministic=true"]
    straight_dir, straight = run(tmp_path, common, "straight")
    stop = ["+callbacks.signal._target_=tests.helpers.SignalWhileEvaluating", "+callbacks.signal.epoch=1"]
    cut_dir = tmp_path / "cut"
    with pytest.raises(RunInterrupted, match="stopped at step 8 "):
        train(compose_train(SMOKE + common + stop, run_dir=cut_dir))
    assert not (cut_dir / "metrics.json").exists()
    resumed = train(compose_train(SMOKE + common + [f"resume={cut_dir}"], run_dir=cut_dir))
    assert resumed["trainer/global_step"] == 8 and resumed["test/acc"] == straight["test/acc"]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_before_training_starts_stops_with_a_checkpoint_and_the_resume_hint(tmp_path, signal_name):
    """Until binexp's handler was in (the sanity check, the curves' first pass), Lightning's own took SIGTERM and
    ended the run at its first batch with SystemExit(None): exit status 0, no checkpoint, no message; Ctrl-C was
    Lightning's KeyboardInterrupt shutdown (exit status 1, nothing saved)."""
    common = ["trainer.max_epochs=2", "trainer.deterministic=true", "trainer.num_sanity_val_steps=1"]
    straight_dir, straight = run(tmp_path, common, "straight")
    stop = ["+callbacks.signal._target_=tests.helpers.SignalWhileEvaluating", "+callbacks.signal.stage=sanity",
            f"+callbacks.signal.signal_name={signal_name}"]
    cut_dir = tmp_path / "cut"
    with pytest.raises(RunInterrupted, match=r"stopped at step 0 \(epoch 0\); saved .*last.ckpt.\n.*resume="):
        train(compose_train(SMOKE + common + stop, run_dir=cut_dir))
    resumed = train(compose_train(SMOKE + common + [f"resume={cut_dir}"], run_dir=cut_dir))
    assert resumed["trainer/global_step"] == 8 and resumed["test/acc"] == straight["test/acc"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["method=sbn"], r"trainer.max_epochs=4: schedule=exp_nu follows the run's length, and over the 2 epochs this run "
                     r"has trained it would change \(nu at epoch 1: 1000 -> 10\)"),
    (["method=abr"], r"schedule=two_phase follows .* \(phase at epoch 1: 2 -> 1\)"),  # phase 1 is half of training
    (["lr_scheduler=cosine"], r"lr_scheduler.scheduler.T_max follows the run's length \(2 -> 4\), but a resume "),
    (["method=abr", "schedule.phase1_epochs=1"], None),  # phase 2 just lasts longer
    (["method=sbn", "lr_scheduler=exponential"], None),  # trained 0 epochs: nothing to change yet
])
def test_lengthening_a_run_is_refused_where_its_schedules_follow_its_length(tmp_path, overrides, message):
    from omegaconf import OmegaConf

    from binexp.train import check_extension_keeps_schedules

    before = OmegaConf.to_container(compose_train([*overrides, "trainer.max_epochs=2"], run_dir=tmp_path / "a"), resolve=True)
    longer = compose_train([*overrides, "trainer.max_epochs=4"], run_dir=tmp_path / "b")
    trained = 0 if "lr_scheduler=exponential" in overrides else 2
    if message is None:
        assert check_extension_keeps_schedules(longer, before, trained) is None
        return
    with pytest.raises(ConfigError, match=message):
        check_extension_keeps_schedules(longer, before, trained)


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    cfg = compose_train(SMOKE + [f"resume={tmp_path / 'nowhere'}"], run_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.lr=-0.1"], r"optimizer\.lr=-0\.1: allowed is a number >= 0"),
    (["seed=-1"], r"seed=-1: allowed is null or a whole number in 0\.\.4294967295"),
    (["architecture.width=0"], r"architecture\.width=0\.0: allowed is a number > 0"),
    (["trainer.max_epochs=0"], r"trainer\.max_epochs=0: allowed is a whole number >= 1"),
    (["trainer.accumulate_grad_batches=0"], r"trainer\.accumulate_grad_batches=0: allowed is a whole number >= 1"),
    (["method.t_clip=-0.5"], r"method\.t_clip=-0\.5: allowed is null or a number >= 0"),
    (["dataset.subset=20"], r"dataset\.batch_size=64: more than the 20 training samples .*allowed is a batch size <= 20"),
    (["dataset.subset=null", "dataset.val_size=100000"], r"dataset\.val_size=\d+ leaves nothing to train on .*allowed is a count <"),
    (["trainer.precision=foo"], r"trainer\.precision='foo': allowed is one of 32-true, .* bf16 \(mixed precision keeps"),
    (["trainer.accelerator=foo"], r"trainer\.accelerator='foo': allowed is one of auto, cpu, gpu, cuda, mps"),
    (["trainer.accelerator=cpu", "trainer.devices=[0,1]"],
     r"trainer: Lightning refused trainer\.accelerator=cpu, trainer\.devices=\[0, 1\], .*should be an int > 0"),
    (["trainer.precision=bf16-true"], r"trainer\.precision='bf16-true': allowed is one of .*a \*-true half or double "
                                      r"precision would cast them"),
    (["dataset.num_classes=0"], r"dataset\.num_classes=0: allowed is a whole number >= 2"),
    (["architecture.channels=[0,50]"], r"architecture\.channels=\[0, 50\]: allowed is whole numbers >= 1"),
    (["architecture.hidden=0"], r"architecture\.hidden=0: allowed is a whole number >= 1"),
    (["lr_scheduler=multistep", "lr_scheduler.scheduler.at=[1.5]"],
     r"lr_scheduler\.scheduler\.at=\[1\.5\]: allowed is increasing fractions of training in \(0, 1\)"),
    (["+callbacks.extra.every=1"], r"callbacks\.extra: no _target_ \(the class to build\); its keys: every"),
    (["trainer.max_time=00:00:00:04"], r"trainer\.max_time=00:00:00:04: allowed is null\. .*send it SIGTERM"),
    (["trainer.sync_batchnorm=true", "trainer.accelerator=cpu"],
     r"trainer\.sync_batchnorm=true: torch's SyncBatchNorm needs GPUs, and this run's processes are on the CPU"),
    (["+callbacks.extra._target_=nope.Class"], r"callbacks\.extra\._target_=nope\.Class: no module 'nope'"),
    # it wrote a protocol/binary_bn_reestimated equal to protocol/binary, and a checkpoint that re-estimated nothing
    (["method=fp", "protocol.bn_batches=5"], r"^protocol\.bn_batches=5: the network of method=fp architecture=lenet has "
                                             r"no batch norm to re-estimate; allowed here is 0$"),
])
def test_out_of_range_values_are_refused_naming_the_key_before_training(tmp_path, overrides, message):
    run_dir = tmp_path / "runs" / "x"
    run_dir.mkdir(parents=True)
    with pytest.raises(ConfigError, match=message):
        train(compose_train(SMOKE + ["method=ste", *overrides], run_dir=run_dir))
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra"]  # the composed config only: nothing trained


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    poison = [
        "+callbacks.poison._target_=tests.helpers.PoisonWeightsAtStep", "+callbacks.poison.step=5",
        "callbacks.finite_loss.check_every_n_steps=1", "trainer.max_epochs=2",
    ]
    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="last good checkpoint") as err:
        train(compose_train(SMOKE + poison, run_dir=run_dir))
    assert "step 6" in str(err.value)
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.parametrize(("poison", "stopped_at", "kept_step"), [
    (["+callbacks.poison.step=5"], 8, 4),  # loss NaN from step 6; the read-back every 10 steps would come too late
    (["+callbacks.poison.step=4", "+callbacks.poison.after=true"], 4, None),  # weights NaN after epoch 0's last step
])
def test_a_non_finite_run_is_stopped_before_any_checkpoint_saves_it(tmp_path, poison, stopped_at, kept_step):
    run_dir = tmp_path / "nan"
    overrides = ["+callbacks.poison._target_=tests.helpers.PoisonWeightsAtStep", *poison, "trainer.max_epochs=2"]
    with pytest.raises(NonFiniteLossError, match=f"non-finite by step {stopped_at} ") as err:
        train(compose_train(SMOKE + overrides, run_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    if kept_step is None:
        assert "no checkpoint had been saved yet" in str(err.value) and not last.exists()
    else:
        kept = torch.load(last, weights_only=False)
        assert kept["global_step"] == kept_step
        assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())
    best = sorted(p.name for p in run_dir.glob("checkpoints/best-*.ckpt"))
    assert best == ([] if kept_step is None else ["best-000-4.ckpt"])
    assert not (run_dir / "metrics.json").exists()

def test_non_finite_weights_at_a_max_steps_cut_leave_no_cut_checkpoint_or_curve_row(tmp_path):
    run_dir = tmp_path / "nan"
    overrides = ["method=abr", "schedule.phase1_epochs=1", "trainer.max_epochs=3", "trainer.max_steps=7",
                 "+callbacks.poison._target_=tests.helpers.PoisonWeightsAtStep", "+callbacks.poison.step=5"]
    with pytest.raises(NonFiniteLossError, match="non-finite by step 7 "):
        train(compose_train(SMOKE + overrides, run_dir=run_dir))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best-000-4.ckpt", "last.ckpt"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    rows = (run_dir / "binarization.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == [0, 4] and "nan" not in "".join(rows)  # no row at step 7


def test_a_signal_after_the_weights_went_non_finite_does_not_save_them(tmp_path):
    run_dir = tmp_path / "nan"
    overrides = ["+callbacks.poison._target_=tests.helpers.PoisonWeightsAtStep", "+callbacks.poison.step=5",
                 "+callbacks.poison.after=true", "+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep",
                 "+callbacks.signal.step=5", "+callbacks.signal.signal_name=SIGTERM", "trainer.max_epochs=2"]
    with pytest.raises(NonFiniteLossError, match="stopping on a signal at step 6: the weights are non-finite"):
        train(compose_train(SMOKE + overrides, run_dir=run_dir))
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["global_step"] == 4  # epoch 0's, not the poisoned step 6
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())

def eval_config(**values):
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(EvalConfig), values)


def test_eval_reproduces_the_runs_test_accuracy(tmp_path):
    run_dir, metrics = run(tmp_path, [])
    result = evaluate(eval_config(run=str(run_dir), accelerator="cpu"))
    assert result["test/acc"] == metrics["test/acc"]
    _, dm, module, _ = load_trained(run_dir, "last")
    dm.setup("test")
    stepped = accuracy(module.net, dm.test_dataloader(), step=True)  # fp's step form: thresholded ReLUs
    assert result["test/acc_step"] == pytest.approx(stepped, abs=1e-6)
    assert result["test/acc_step"] != pytest.approx(result["test/acc"], abs=1e-6)
    assert (run_dir / "eval-last.json").exists()


def test_eval_tests_on_the_runs_own_test_batches_and_refuses_changing_its_groups(tmp_path):
    run_dir, metrics = run(tmp_path, ["trainer.limit_test_batches=1"])  # one of the two test batches
    result = evaluate(eval_config(run=str(run_dir), accelerator="cpu"))
    assert result["test/acc"] == metrics["test/acc"]
    whole = evaluate(eval_config(run=str(run_dir), accelerator="cpu", run_overrides=["trainer.limit_test_batches=1.0"]))
    assert whole["test/acc"] != metrics["test/acc"]
    record = json.loads((run_dir / "eval-last.json").read_text())
    assert record["run_overrides"] == [] and record["test/acc"] == result["test/acc"]  # the plain eval's stays
    with_overrides = json.loads((run_dir / eval_result_name(run_dir, run_dir / "checkpoints" / "last.ckpt",
                                                            ["trainer.limit_test_batches=1.0"])).read_text())
    assert with_overrides["run_overrides"] == ["trainer.limit_test_batches=1.0"]
    assert with_overrides["test/acc"] == whole["test/acc"]
    elsewhere = tmp_path / "other" / "last.ckpt"  # another run's last.ckpt must not overwrite this run's eval-last.json
    elsewhere.parent.mkdir()
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", elsewhere)
    evaluate(eval_config(run=str(run_dir), accelerator="cpu", ckpt=str(elsewhere)))
    assert json.loads((run_dir / "eval-last.json").read_text()) == record
    named = [p.name for p in run_dir.glob("eval-last-*.json") if "-overrides-" not in p.name]
    assert named == [eval_result_name(run_dir, elsewhere)] and len(named[0]) == len("eval-last-12345678.json")
    assert eval_result_name(run_dir, run_dir / "checkpoints" / "last.ckpt", ["a=1"]).startswith("eval-last-overrides-")
    assert eval_result_name(run_dir, run_dir / "checkpoints" / "best-003-40.ckpt") == "eval-best-003-40.json"
    assert eval_result_name(run_dir, run_dir / "saved" / "a.ckpt") == "eval-saved-a.json"
    with pytest.raises(ConfigError, match=r"method=bnn: method is a config group whose option the run chose, and the "
                                          r"config of .* keeps it; change its keys instead \(method.<key>=<value>; keys: "):
        evaluate(eval_config(run=str(run_dir), accelerator="cpu", run_overrides=["method=bnn"]))
    with pytest.raises(ConfigError, match=r"does not fit the network that run_overrides=\['architecture.width=2'\] make "
                                          r"of .*: an override that changes the network's layers cannot take the run's "
                                          r"weights \(net.classifier.1.bias \(500,\) saved, \(1000,\) built, "):
        evaluate(eval_config(run=str(run_dir), accelerator="cpu", run_overrides=["architecture.width=2"]))
    other = tmp_path / "other-run" / "last.ckpt"  # another network's checkpoint: not the overrides' doing
    other.parent.mkdir()
    torch.save({"state_dict": {"net.nothing": torch.zeros(1)}}, other)
    with pytest.raises(ConfigError, match=r"does not fit the network of .*; was it saved by another run\?"):
        evaluate(eval_config(run=str(run_dir), accelerator="cpu", ckpt=str(other),
                             run_overrides=["trainer.limit_test_batches=1.0"]))
    # the inputs normalised as the network trained on them, whatever an override does to the training split
    moved = evaluate(eval_config(run=str(run_dir), accelerator="cpu", run_overrides=["dataset.val_size=8"]))
    assert (moved["test/acc"], moved["test/loss"]) == (metrics["test/acc"], metrics["test/loss"])
    with pytest.raises(ConfigError, match=r"dataset.normalize=caffe, but the network trained on inputs normalised as "
                                          r"mean_only; it cannot be tested on others"):
        evaluate(eval_config(run=str(run_dir), accelerator="cpu", run_overrides=["dataset.normalize=caffe"]))
    with pytest.raises(ConfigError, match=r"accelerator=nope: .*\(allowed: auto, cpu, gpu"):
        evaluate(eval_config(run=str(run_dir), accelerator="nope"))
    for bad, shown in (("-1", "-1"), ("abc", "'abc'"), ("1.5", "1.5")):
        with pytest.raises(ConfigError, match=rf"trainer.limit_test_batches={shown}: allowed is a count of batches >= 0 "
                                              r"or a share in \[0.0, 1.0\]"):
            evaluate(eval_config(run=str(run_dir), accelerator="cpu", run_overrides=[f"trainer.limit_test_batches={bad}"]))
    from binexp.config import check_override_keys
    from binexp.evaluate import load_run_config

    check_override_keys(load_run_config(run_dir), ["callbacks.binarization=null", "dataset.augment=null"], "it")


def test_eval_tests_as_the_launch_that_saved_the_checkpoint_and_refuses_another_jobs(tmp_path):
    """bf16-mixed test/acc is not float32's; a resume's test limits are not the first launch's; a checkpoint of
    another job (fp's and ste's LeNets have the same tensors) is not this run's to test."""
    run_dir, first = run(tmp_path, ["trainer.precision=bf16-mixed", "trainer.max_epochs=1"])
    result = evaluate(eval_config(run=str(run_dir), accelerator="cpu"))
    assert (result["test/acc"], result["test/loss"]) == (first["test/acc"], first["test/loss"])
    in_float32 = evaluate(eval_config(run=str(run_dir), accelerator="cpu", run_overrides=["trainer.precision=32-true"]))
    assert in_float32["test/loss"] != first["test/loss"]
    # the step-function network is tested as deployed, in float32, whatever the run trained in
    assert (result["test/acc_step"], result["test/loss_step"]) == (in_float32["test/acc_step"], in_float32["test/loss_step"])
    record = json.loads((run_dir / eval_result_name(run_dir, run_dir / "checkpoints" / "last.ckpt",
                                                    ["trainer.precision=32-true"])).read_text())
    assert (record["precision"], record["checkpoint_epoch"], record["checkpoint_global_step"]) == ("32-true", 0, 4)
    resumed = train(compose_train(SMOKE + [f"resume={run_dir}", "trainer.max_epochs=2", "trainer.limit_test_batches=1",
                                           "trainer.precision=32-true"], run_dir=run_dir))
    result = evaluate(eval_config(run=str(run_dir), accelerator="cpu"))
    assert (result["test/acc"], result["test/loss"]) == (resumed["test/acc"], resumed["test/loss"])
    record = json.loads((run_dir / "eval-last.json").read_text())
    assert (record["precision"], record["checkpoint_global_step"]) == ("32-true", 8)
    other_dir, _ = run(tmp_path, ["method=ste", "trainer.max_epochs=1"], "other")
    with pytest.raises(ConfigError, match=r"^ckpt=.*other/checkpoints/last.ckpt: .* was trained as another job than "
                                          r".*run's \(method._target_: .*; method.name: 'ste' there, 'fp' here\); "
                                          r"give the run directory that trained it as run=$"):
        evaluate(eval_config(run=str(run_dir), accelerator="cpu", ckpt=str(other_dir / "checkpoints" / "last.ckpt")))


def test_eval_reruns_the_protocol_on_a_checkpoint(tmp_path):
    run_dir, metrics = run(tmp_path, ["method=abr", "protocol.binary_weights_epochs=1"])
    (run_dir / "checkpoints" / "binary_weights.ckpt").unlink()
    args = {"run": str(run_dir), "accelerator": "cpu", "protocol": True}
    result = evaluate(eval_config(**args))
    keys = ["protocol/regular", "protocol/binary", "protocol/finetuned", "protocol/binary_weights"]
    assert [result[k] for k in keys] == [metrics[k] for k in keys]
    _, dm, module, _ = load_trained(run_dir, "binary_weights")  # saved again
    assert accuracy(module.net, dm.batches("test"), step=True) == result["protocol/binary_weights"]
    short = evaluate(eval_config(**args, run_overrides=["protocol.finetune_epochs=0"]))
    assert "protocol/finetuned" not in short and short["protocol/binary"] == metrics["protocol/binary"]
    with pytest.raises(ConfigError, match="protocol=true with ckpt=binary_weights: the protocol starts from"):
        evaluate(eval_config(**args, ckpt="binary_weights"))
    with pytest.raises(ConfigError, match=r"ckpt=bn_reestimated: .*bn_reestimated.ckpt not found \(allowed: last, best, "
                                          r"binary_weights \(.*\), bn_reestimated \(.*protocol.bn_batches > 0\)"):
        evaluate(eval_config(run=str(run_dir), accelerator="cpu", ckpt="bn_reestimated"))


def test_no_validation_split_trains_on_everything_and_keeps_last_checkpoint(tmp_path):
    run_dir, metrics = run(tmp_path, ["dataset.val_size=0"])
    assert "val/acc" not in metrics and "test/acc" in metrics
    assert metrics["trainer/global_step"] == 8
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]


def test_last_checkpoint_is_the_final_step_when_validation_skips_epochs(tmp_path):
    run_dir, metrics = run(tmp_path, ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2"])
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (2, metrics["trainer/global_step"]) == (2, 12)


@pytest.mark.parametrize("bar", [False, True])
def test_step_loss_is_read_back_for_the_progress_bar_only_when_a_bar_is_shown(tmp_path, bar):
    # Lightning reads every progress-bar metric back as a Python number each step, a GPU sync
    import pytorch_lightning as pl

    from binexp.train import build_data, build_method, build_module

    cfg = compose_train(SMOKE, run_dir=tmp_path)
    dm = build_data(cfg)
    module = build_module(cfg, dm, build_method(cfg))
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, log_every_n_steps=1,
                         enable_progress_bar=bar, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert ("train/loss_step" in trainer.progress_bar_metrics) is bar
    assert "train/loss_step" in trainer.callback_metrics


@pytest.mark.parametrize(("choice", "profiler"), [(None, "NoProfiler"), ("simple", "SimpleProfiler")])
def test_the_trainer_profiles_only_when_asked(tmp_path, choice, profiler):
    from binexp.train import build_callbacks, build_data, build_method, build_schedule, build_trainer

    overrides = [] if choice is None else [f"trainer.profiler={choice}"]
    cfg = compose_train(SMOKE + overrides, run_dir=tmp_path)
    method = build_method(cfg)
    callbacks = build_callbacks(cfg, build_schedule(cfg, method), method, build_data(cfg))
    trainer = build_trainer(cfg, callbacks, tmp_path)
    assert type(trainer.profiler).__name__ == profiler
    with trainer.profiler.profile("a hook"), trainer.profiler.profile("a nested hook"):
        pass
    if choice is None:  # one shared do-nothing context for every hook, nothing recorded
        assert trainer.profiler.profile("a") is trainer.profiler.profile("b")
        assert trainer.profiler.summary() == ""
    else:
        assert trainer.profiler.recorded_durations.keys() == {"a hook", "a nested hook"}


def test_lightnings_hook_name_bypasses_module_attribute_checks_and_nothing_else_does(tmp_path, monkeypatch):
    from binexp.train import build_data, build_method, build_module

    cfg = compose_train(SMOKE, run_dir=tmp_path)
    module = build_module(cfg, build_data(cfg), build_method(cfg))
    extra, checked = torch.nn.Linear(2, 2), []
    module_setattr = torch.nn.Module.__setattr__
    monkeypatch.setattr(torch.nn.Module, "__setattr__",
                        lambda self, name, value: (checked.append(name), module_setattr(self, name, value)))
    module._current_fx_name = "training_step"  # Lightning, around every hook
    module.extra = extra
    assert checked == ["extra"]
    assert module._current_fx_name == "training_step" and module.__dict__["_current_fx_name"] == "training_step"
    assert "extra" in dict(module.named_children()) and "extra.weight" in dict(module.named_parameters())
    with pytest.raises(TypeError, match="cannot assign"):  # nn.Module's checks still guard the rest
        module.extra = 3.0


def test_a_resume_whose_overrides_change_the_layers_is_refused_before_writing(tmp_path):
    run_dir, _ = run(tmp_path, [])
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    cfg = compose_train(SMOKE + [f"resume={run_dir}", "architecture.width=2", "trainer.max_epochs=3"], run_dir=run_dir)
    with pytest.raises(ConfigError, match=r"resume=.*: .*last.ckpt trained another job than this launch composes "
                                          r"\(architecture.width: 1.0 there, 2.0 here\); a resume continues the job its "
                                          r"last.ckpt trained: start a new run for another$"):
        train(cfg)
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    other_dir, _ = run(tmp_path, ["method=ste"], "other")  # its last.ckpt copied in: the same tensors as fp's LeNet
    shutil.copy(other_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"last.ckpt trained another job than this launch composes \(method._target_: "
                                          r".*; method.name: 'ste' there, 'fp' here\)"):
        train(compose_train(SMOKE + [f"resume={run_dir}", "trainer.max_epochs=3"], run_dir=run_dir))


def test_deterministic_turns_cudnn_autotuning_off(tmp_path, monkeypatch):
    """trainer=gpu sets benchmark; torch ignores cudnn.deterministic while benchmark is on."""
    from binexp.train import build_trainer

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for deterministic, autotuned in (("true", False), ("false", True)):
        cfg = compose_train(SMOKE + ["trainer.benchmark=true", f"trainer.deterministic={deterministic}"], run_dir=tmp_path)
        build_trainer(cfg, [], tmp_path)
        assert torch.backends.cudnn.benchmark is autotuned, deterministic


def test_a_second_launch_into_a_run_directory_in_use_is_refused(tmp_path, monkeypatch):
    """Two launches at once into one folder both trained there, mixing checkpoints, event files and metrics."""
    from binexp.run_lock import RunDirLock

    run_dir = tmp_path / "run"
    held = RunDirLock(run_dir).acquire()  # the first launch, still training
    try:
        with pytest.raises(ConfigError, match=rf"^{run_dir}: another `binexp train` is training in this run directory; "
                                              r"wait for it to end, or give this launch another hydra.run.dir "
                                              r"\(hydra.sweep.dir for a sweep\)$"):
            train(compose_train(SMOKE, run_dir=run_dir))
        assert not (run_dir / "checkpoints").exists()
        monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP rank trains in the folder its rank zero holds
        assert RunDirLock(run_dir).acquire()._file is None
    finally:
        held.release()
    monkeypatch.delenv("LOCAL_RANK")
    assert train(compose_train(SMOKE, run_dir=run_dir))["trainer/global_step"] == 8  # free again


def test_a_resume_to_a_length_out_of_range_gets_the_range_error(tmp_path):
    run_dir, _ = run(tmp_path, [])
    cfg = compose_train(SMOKE + [f"resume={run_dir}", "trainer.max_epochs=-3"], run_dir=run_dir)
    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs=-3: allowed is a whole number >= 1$"):
        train(cfg)


def test_seed_null_draws_one_seed_that_the_run_keeps(tmp_path):
    from omegaconf import OmegaConf

    run_dir = tmp_path / "unseeded"
    stop = ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", "+callbacks.signal.step=3"]
    with pytest.raises(RunInterrupted):
        train(compose_train(SMOKE + ["seed=null", *stop], run_dir=run_dir))
    seed = OmegaConf.load(run_dir / ".hydra" / "config.yaml").seed
    assert isinstance(seed, int) and seed >= 0
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert kept["hyper_parameters"]["config"]["seed"] == seed
    cfg, dm, _, _ = load_trained(run_dir, "last")  # eval and export rebuild the run's own split
    assert cfg.seed == seed and dm.seed == seed
    again = compose_train(SMOKE + ["seed=null"], run_dir=tmp_path / "elsewhere")  # the same command: the run goes on
    again.run_dir = str(run_dir)
    train(again)
    assert json.loads((run_dir / "metrics.json").read_text())["trainer/global_step"] > 3
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").seed == seed


def test_ctrl_c_after_training_names_the_resume_that_redoes_test_and_protocol(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("binexp.train.run_protocol", interrupted)
    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted, match=f"interrupted after training, in the test or the protocol: Resume with: "
                                             f"binexp train resume={run_dir} \\(it tests and evaluates"):
        train(compose_train(SMOKE, run_dir=run_dir))
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "metrics.json").exists()
    monkeypatch.undo()
    metrics = train(compose_train(SMOKE + [f"resume={run_dir}"], run_dir=run_dir))
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_the_test_after_training_names_the_resume(tmp_path, signal_name):
    """Lightning's handling would end the test with exit 0 and no metrics (SIGTERM) or exit 1 without the hint."""
    import signal

    run_dir = tmp_path / "run"
    stop = ["+callbacks.signal._target_=tests.helpers.SignalWhileEvaluating", "+callbacks.signal.stage=test",
            f"+callbacks.signal.signal_name={signal_name}"]
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match=f"interrupted after training, in the test or the protocol: Resume with: "
                                             f"binexp train resume={run_dir} "):
        train(compose_train(SMOKE + stop, run_dir=run_dir))
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers of the test are gone again
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "metrics.json").exists()
    metrics = train(compose_train(SMOKE + [f"resume={run_dir}"], run_dir=run_dir))
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]


def test_ckpt_best_is_the_latest_best_checkpoint_by_epoch_number(tmp_path):
    from binexp.evaluate import find_checkpoint

    for name in ("best-999-9990.ckpt", "best-1000-10000.ckpt", "last.ckpt"):
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert find_checkpoint(tmp_path, "best") == tmp_path / "checkpoints" / "best-1000-10000.ckpt"


def test_progress_lines_come_once_per_reported_optimizer_step_under_accumulation(caplog):
    from types import SimpleNamespace

    from binexp.callbacks.progress import LogProgress

    progress = LogProgress(every_n_steps=2)
    trainer = SimpleNamespace(world_size=1, current_epoch=0, num_training_batches=8, callback_metrics={},
                              is_global_zero=True, global_step=0)
    with caplog.at_level("INFO", logger="binexp.callbacks.progress"):
        progress.on_train_epoch_start(trainer, None)
        for batch_idx in range(8):  # accumulating 2 batches: the optimizer steps after batches 1, 3, 5, 7
            trainer.global_step = (batch_idx + 1) // 2
            progress.on_train_batch_end(trainer, None, None, (None, [0] * 4), batch_idx)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["step 2", "step 4"]


def test_the_end_of_run_table_writes_small_values_as_the_report_does(tmp_path, capsys):
    from binexp.train import print_summary

    print_summary(tmp_path, {"protocol/fixed_bn_flips": 3.08e-05, "test/acc": 0.5, "trainer/global_step": 8.0,
                             "protocol/binary_fixed_bn_disagreements": 0.0})
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in capsys.readouterr().out.splitlines()
            if line.count("│") == 3}
    assert rows == {"protocol/binary_fixed_bn_disagreements": "0.0000", "protocol/fixed_bn_flips": "3.08e-05",
                    "test/acc": "0.5000", "trainer/global_step": "8"}


def test_a_job_gives_back_the_process_state_it_changed_for_the_next_job_of_a_sweep(tmp_path, monkeypatch):
    """Hydra's basic launcher runs a sweep's jobs in one process: after a DDP job the next trained on one thread
    (its protocol/finetuned 0.2890625 against 0.3046875 alone), and after a job that failed inside fit, binexp's stop
    handler was still installed, so the next job's first Ctrl-C did not stop it."""
    import os
    import signal

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    changing = ["+callbacks.change._target_=tests.helpers.ChangeProcessState"]
    train(compose_train(SMOKE + changing, run_dir=tmp_path / "a"))
    with pytest.raises(NonFiniteLossError):  # fails inside fit
        train(compose_train(SMOKE + changing + ["+callbacks.poison._target_=tests.helpers.PoisonWeightsAtStep",
                                                "+callbacks.poison.step=2"], run_dir=tmp_path / "b"))
    after = (torch.get_num_threads(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    assert after == before and "OMP_NUM_THREADS" not in os.environ and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_a_run_without_a_logger_trains(tmp_path):
    """`~logger`, as binexp's message for logger=null advises: the learning-rate monitor refused a trainer without one."""
    metrics = train(compose_train(SMOKE + ["~logger"], run_dir=tmp_path))
    assert metrics["trainer/global_step"] == 8 and not (tmp_path / "tb").exists()
