"""The `binexp` command as a user runs it (subprocesses), and the config tree inside a built wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BINEXP = [sys.executable, "-m", "binexp.cli"]


def binexp(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*BINEXP, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def test_help_lists_the_tasks():
    out = binexp("--help")
    assert out.returncode == 0
    for task in ("train", "eval", "report", "export", "verify"):
        assert task in out.stdout, task


def test_unknown_task_is_refused():
    out = binexp("fly")
    assert out.returncode == 2 and "unknown task 'fly'" in out.stderr


def test_eval_and_resume_without_a_run_directory_say_so_and_create_nothing(tmp_path):
    out = binexp("eval", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr == "binexp: error: eval needs run=<run dir>, a directory made by `binexp train`\n"
    missing = tmp_path / "nope"
    for args in (["eval", f"run={missing}"], ["train", f"resume={missing}"]):
        out = binexp(*args, cwd=tmp_path)
        assert out.returncode == 2, args
        assert f"{missing}/.hydra/config.yaml not found" in out.stderr and "Traceback" not in out.stderr
    out = binexp("train", "resume=", cwd=tmp_path)  # an unset shell variable: refused, not a new default run
    assert out.returncode == 2 and "resume=: empty; resume takes a run directory" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no eval/<time>/ folder inside a directory that was never a run

def test_export_and_verify_without_arguments_name_only_the_missing_path(tmp_path):
    # argparse lists a '*' positional without a default as required too, which its options are not
    for task, missing in (("export", "run"), ("verify", "artifact")):
        out = binexp(task, cwd=tmp_path)
        assert out.returncode == 2
        assert out.stderr.endswith(f"binexp {task}: error: the following arguments are required: {missing}\n"), out.stderr


def test_a_refused_resume_prints_its_message_once_and_logs_it_in_the_run(tmp_path):
    run_dir = tmp_path / "run"
    assert binexp("train", "dataset=synthetic", "debug=smoke", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    for ckpt in (run_dir / "checkpoints").iterdir():
        ckpt.unlink()
    out = binexp("train", f"resume={run_dir}", cwd=tmp_path)
    message = f"resume={run_dir}: no checkpoint at {run_dir}/checkpoints/last.ckpt; nothing to resume from"
    assert out.returncode == 2 and out.stderr == f"binexp: error: {message}\n"
    assert message not in out.stdout  # Hydra's console log handler does not repeat it
    assert (run_dir / "train.log").read_text().endswith(f"[binexp][ERROR] - {message}\n")


def test_a_resume_into_another_folder_is_refused_before_anything_runs(tmp_path, capsys):
    """`resume=A hydra.run.dir=B` wrote A's continuation over whatever job B held (Hydra's last run.dir wins)."""
    from binexp.cli import main

    run = tmp_path / "a"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("dataset: {name: synthetic}\narchitecture: {name: lenet}\nmethod: {name: fp}\n")
    for arg in (f"hydra.run.dir={tmp_path / 'b'}", "hydra.output_subdir=elsewhere"):
        with pytest.raises(SystemExit) as raised:
            main(["train", f"resume={run}", arg])
        assert raised.value.code == 2
        assert capsys.readouterr().err == (f"binexp: error: {arg}: resume={run} continues the run in its own folder "
                                           f"({run}); to continue it elsewhere, copy the folder there and resume the copy\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_method_file_without_a_name_is_refused_at_start(tmp_path, capsys):
    """Without `name:` it trained, and the first message naming the method (a schedule it does not read) crashed."""
    from binexp.cli import main

    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "noname.yaml").write_text("_target_: binexp.binarize.ste.STE\nt_clip: 0.5\n")
    with pytest.raises(SystemExit) as raised:
        main(["train", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "method=noname", "dataset=synthetic",
              "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"])
    assert raised.value.code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err == ("binexp: error: method.name: missing in the method's config file; an option "
                                       "names itself there, e.g. `name: <the file's name>` beside its _target_\n")


def test_an_eval_folder_given_as_a_run_is_named_as_not_a_training_run(tmp_path):
    folder = tmp_path / "eval" / "2026-01-01_00-00-00"  # what `binexp eval` leaves inside a run
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("run: somewhere\nckpt: last\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    message = (f"{folder}: not a training run (its {folder}/.hydra/config.yaml has no dataset, architecture, method); "
               f"`{{}}` takes a directory made by `binexp train`\n")
    for args, key in ((["train", f"resume={folder}"], "resume"), (["eval", f"run={folder}"], "run"),
                      (["export", str(folder)], "run")):
        out = binexp(*args, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.endswith(f"binexp: error: {key}={message.format(key)}"), out.stderr


def test_a_refused_eval_says_why_and_leaves_no_folder_in_the_run(tmp_path):
    from tests.test_train import run

    run_dir, _ = run(tmp_path, [])
    out = binexp("eval", f"run={run_dir}", "ckp=best", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr == ("binexp: error: ckp=best: eval takes run=, ckpt=, accelerator=, protocol=, run_overrides= "
                          "(keys of the run's own config go in 'run_overrides=[\"key=value\"]')\n")
    out = binexp("eval", f"run={run_dir}", "ckpt=checkpoints", "accelerator=cpu", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"binexp: error: ckpt=checkpoints: {run_dir / 'checkpoints'} is a directory (allowed: last, best, " in out.stderr
    assert out.stderr.endswith(", or a checkpoint file)\n")
    assert not (run_dir / "eval").exists()  # Hydra's eval/<time>/ folder of the refused launch is gone


@pytest.mark.parametrize(("args", "message"), [
    # Hydra's grammar error: "no viable alternative at input '[trainer.nonsense='"
    (["eval", "run=somewhere", "run_overrides=[trainer.limit_test_batches=2]"],
     "run_overrides=[trainer.limit_test_batches=2]: quote each override inside the list: "
     "'run_overrides=[\"key=value\", ...]'"),
    # "run=run=<dir>: run=<dir>/.hydra/config.yaml not found"
    (["train", "dataset=synthetic", "hydra.run.dir=pyproject.toml"],  # a FileExistsError traceback
     "hydra.run.dir=pyproject.toml: is a file; give a directory (made if it does not exist)"),
    (["train", "-m", "seed=0,1", "hydra.sweep.dir=pyproject.toml"],
     "hydra.sweep.dir=pyproject.toml: is a file; give a directory (made if it does not exist)"),
    (["export", "run=somewhere"], "run=somewhere: export takes the run directory itself as its first argument: binexp "
                                  "export somewhere"),
])
def test_argument_forms_of_train_eval_and_export_are_named(args, message, capsys, monkeypatch):
    from binexp.cli import main

    monkeypatch.chdir(Path(__file__).parents[1])  # where pyproject.toml is a file

    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == 2 and capsys.readouterr().err == f"binexp: error: {message}\n"


@pytest.mark.parametrize(("item", "message"), [
    ("+trainer.typo=1", "run_overrides: +trainer.typo=1: takes key=value changes of the run's own keys only (no + or ~)"),
    ("~trainer.limit_test_batches", "run_overrides: ~trainer.limit_test_batches: takes key=value changes of the run's "
                                    "own keys only (no + or ~)"),
    ("trainer.accelerator=nonsense", "run_overrides: trainer.accelerator=nonsense: eval tests on one device, chosen "
                                     "with accelerator=<auto|cpu|gpu>, not with the run's trainer.accelerator"),
])
def test_run_overrides_that_would_be_ignored_or_misread_are_refused(item, message):
    """trainer.accelerator=nonsense was accepted and ignored; +key said the run's config had no key under +trainer."""
    from binexp.errors import ConfigError
    from binexp.evaluate import check_run_overrides

    with pytest.raises(ConfigError) as err:
        check_run_overrides(["trainer.limit_test_batches=2", item])
    assert str(err.value) == message
    check_run_overrides(["trainer.limit_test_batches=2", "method.scope=all"])


def test_a_config_error_raised_while_instantiating_reaches_the_user_as_written(tmp_path):
    out = binexp("train", "dataset=synthetic", "debug=smoke", "method=abr", "method.scope=foo",
                 f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.endswith("binexp: error: method.scope='foo': allowed are all, last or a list of activation names\n")
    assert not (tmp_path / "r").exists()  # a refused first launch leaves no folder that `report` would list as a run

def test_train_help_shows_the_config_groups(tmp_path):
    out = binexp("train", "--help", cwd=tmp_path)
    assert out.returncode == 0
    for line in ("architecture: cifar_quick, densenet13, densenet21, densenet37, densenet45, densenet69, lenet, resnet18, resnet26_bottleneck, resnet34_thin, resnet34_wide, resnet68_wide, vgg_small", "dataset: cifar10, imagefolder, mnist, synthetic"):
        assert line in out.stdout


def test_eval_help_lists_evals_keys_not_trains_groups(tmp_path):
    out = binexp("eval", "--help", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("binexp eval: evaluate a run's checkpoint")
    for key in ("run ", "ckpt ", "accelerator ", "protocol ", "run_overrides "):
        assert f"\n{key}" in out.stdout
    assert "architecture:" not in out.stdout and "== Configuration groups ==" not in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["method=ste", "method.tclip=0.5"],
     "method.tclip: no such key (the keys under method: binarize_first, binarize_last, name, scaling, t_clip)"),
    (["-m", "method=ste", "method.tclip=0.25,0.5"],  # a sweep is checked at its first value, before any job starts
     "method.tclip: no such key (the keys under method: binarize_first, binarize_last, name, scaling, t_clip)"),
    (["traner.max_epochs=3"], "traner.max_epochs: no such key (the keys under the top level: architecture, "),
    (["-m", "method=bnn,xnor", "method.binarize_first=false"],  # Hydra composes a sweep with method=fp first
     "method.binarize_first: the default method has no such key (its keys: name, scope), and a sweep is composed "
     "with it before its jobs; give a key of the swept options as a one-value sweep: 'method.binarize_first=choice(false)'"),
    (["method=ste", "+method.tclip=0.5", "dataset=synthetic"],  # added with +: refused when the method is built
     "method.tclip: not a parameter of binexp.binarize.ste.STE (it takes t_clip, scaling, binarize_first, binarize_last)"),
    (["+foo=1", "dataset=synthetic"],  # a top-level key nothing reads
     "+foo: not a key binexp reads (the top-level keys: architecture, callbacks, channels_last, dataset, "),
])
def test_an_unknown_key_names_the_keys_that_are_there(tmp_path, args, message):
    out = binexp("train", *args, f"hydra.run.dir={tmp_path / 'r'}", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert out.returncode == 2 and f"binexp: error: {message}" in out.stderr and "Traceback" not in out.stderr

def test_a_one_value_sweep_of_a_key_only_the_swept_options_have_passes_the_check():
    from binexp.cli import _check_override_keys

    _check_override_keys(["-m", "method=bnn,xnor", "method.binarize_first=choice(false)"])  # the README's form
    with pytest.raises(SystemExit):  # the same key as a plain override is still refused
        _check_override_keys(["-m", "method=bnn,xnor", "method.binarize_first=false"])


@pytest.mark.parametrize(("args", "message"), [
    (["+protocol.finetune_epoch=30"],  # a typo Hydra would add and nothing would read
     "+protocol.finetune_epoch: protocol has no key 'finetune_epoch' and nothing would read one (its keys: "
     "binary_weights_epochs, binary_weights_lr, bn_batches, bn_bits, bn_range_batches, enabled, finetune_epochs, "
     "finetune_lr)"),
    (["+dataset.augment.rotate=1"],
     "+dataset.augment.rotate: dataset.augment has no key 'rotate' and nothing would read one (its keys: "
     "crop_padding, flip)"),
    (["+foo.bar=1"], "+foo.bar: foo has no key 'bar' and nothing would read one"),
    (["+callbacks.extra=1"], "+callbacks.extra: a new entry of callbacks is an object to build; give its class first: "
     "'+callbacks.extra._target_=<module.Class>'"),
    (["lr_scheduler=null"], "lr_scheduler=null: a config group takes one of its options; to leave lr_scheduler out, "
     "delete it: '~lr_scheduler'"),
    (["run_dir=/elsewhere"], "run_dir: the run directory is Hydra's output folder; choose it with "
     "hydra.run.dir=<dir> (hydra.sweep.dir=<dir> for a sweep)"),
    # each of these ended in Hydra's or OmegaConf's traceback once the job started, or trained under a false name
    (["optimizer.lr=${nope}"], "optimizer.lr=${nope}: Interpolation key 'nope' not found"),
    (["~seed"], "~seed: every run needs seed"),
    (["~method"], "~method: every run needs method; choose one of its options (method=<option>)"),
    # Hydra said the null key "does not exist", or resolved an interpolation it could not
    (["~trainer.max_time"], "~trainer.max_time: a key of binexp's schema for trainer, which cannot be deleted; set its "
                            "value instead (trainer.max_time=...)"),
    (["~logger.tensorboard.save_dir"], "~logger.tensorboard.save_dir: its value is an interpolation (${run_dir}), which "
                                       "Hydra cannot delete; set a value instead"),
    (["paper.source=x"], "paper.source=x: paper holds the published numbers an experiment reproduces, set with it "
                         "(experiment=<name>); it cannot be set on its own"),  # "AssertionError: Unexpected type"
    (["=1"], "=1: an override needs a key (key=value)"),
    (["experiment=abr_table1_mnist", "paper.source=x", "lr_scheduler=null"],  # paper.* is fine with an experiment
     "lr_scheduler=null: a config group takes one of its options; to leave lr_scheduler out, delete it: '~lr_scheduler'"),  # "Config group override must be a string or a list"
    (["task_name=nonsense"], "task_name=nonsense: task_name is the task's own (train or eval: its log file, train.log, "
     "and its records are named by it); it cannot be set"),  # it renamed train.log
    (["method=bnn", "method.name=xnor"], "method.name: the name of the chosen method option (messages, records and "
     "exports call it so); choose another option with method=<option>"),
])
def test_overrides_nothing_would_read_or_hydra_cannot_compose_are_refused_naming_the_key(args, message, capsys):
    from binexp.cli import _check_override_keys

    with pytest.raises(SystemExit) as raised:
        _check_override_keys(["dataset=synthetic", *args])
    assert raised.value.code == 2 and capsys.readouterr().err == f"binexp: error: {message}\n"


def test_keys_added_where_a_class_takes_them_and_new_callbacks_pass_the_check():
    from binexp.cli import _check_override_keys

    _check_override_keys(["dataset=synthetic", "+optimizer.foreach=false",
                          "+callbacks.timer._target_=pytorch_lightning.callbacks.Timer", "+callbacks.timer.verbose=false"])


@pytest.mark.parametrize(("args", "message"), [
    (["method=ste", "method.t_clip=0.5,-1"],
     "method.t_clip=-1.0: allowed is null or a number >= 0 (the sweep's job method.t_clip=-1; no job was started)"),
    (["method=ste", "method.t_clip=0.5,abc"], "method.t_clip: Value 'abc' of type 'str' could not be converted to "
     "Float (the sweep's job method.t_clip=abc; no job was started)"),
    (["method=ste,nope"], "In 'train': Could not find 'method/nope'; the options of 'method': abr, bc, bnn, bwn, fp, "
     "sbn, ste, xnor (the sweep's job method=nope; no job was started)"),
    (["trainer.max_epochs=2,1", "method=ste,abr,fp"],  # only this pair fails, and only building its schedule finds it
     "schedule.phase1_epochs=0 with trainer.max_epochs=1: phase 1 must end before training does (phase 2 lasts the "
     "remaining epochs) (the sweep's job trainer.max_epochs=1 method=abr; no job was started)"),
    (["method=bnn,fp", "method.binarize_first=choice(false)"],  # an option without a key its sweep sets
     "method.binarize_first: Key 'binarize_first' not in 'FloatConfig' (the sweep's job method=fp "
     "method.binarize_first=False; no job was started)"),
    (["method=ste", "method.t_clip=0.5,1", "trainer.max_epochs=0"],  # shared by every job: as a single run says it
     "trainer.max_epochs=0: allowed is a whole number >= 1"),
    (["method=glob([b*,s*])", "trainer.max_epochs=1"],  # the sweeper expands a glob as it launches: bc, bnn, bwn trained
     "schedule=exp_nu with trainer.max_epochs=1: one value per epoch cannot go from schedule.nu_start=1.0 to "
     "schedule.nu_end=1000.0; train 2 epochs or more, or set schedule.per_step=true (the sweep's job method=sbn; no "
     "job was started)"),
    (["method=ste,bnn", "+method.t_clip=0.5"],  # named the default method's class (fp's), which no job builds
     "Could not append to config. An item is already at 'method.t_clip'. Either remove + prefix: 'method.t_clip=0.5' "
     "Or add a second + to add or override 'method.t_clip': '++method.t_clip=0.5' (the sweep's job method=ste; no job "
     "was started)"),
    (["method=xnor,bnn", "seed=range(0,70)", "+method.t_clip=0.5"],  # 140 jobs: each value, the others at their first
     "method.t_clip: not a parameter of binexp.binarize.hard.XNORNet (it takes binarize_first, binarize_last) (the "
     "sweep's value method=xnor, the other sweeps at their first value; no job was started)"),
    (["method=bnn,xnor", "+method.t_clip=0.5"],
     "method.t_clip: not a parameter of binexp.binarize.hard.BinaryNet (it takes binarize_first, binarize_last) (the "
     "sweep's job method=bnn; no job was started)"),
    (["optimizer.lr=interval(0.01,0.1)"],  # Hydra's own refusal: a traceback once the sweep had begun
     "optimizer.lr=interval(0.01,0.1): Hydra's basic sweeper takes lists, range(...) and choice(...); interval(...) is "
     "for a sweeper that samples (Optuna's, Nevergrad's); give the values as a list"),
    (["protocol.bn_bits=8,1"],  # checked by the protocol's, the dataset's and the architecture's own code, which
     "protocol.bn_bits=1: allowed are 0 (off) or 2..32 bits per threshold code (the sweep's job protocol.bn_bits=1; "
     "no job was started)"),  # the sweep's check did not run: the first job trained in full
    (["dataset.batch_size=128,0"],
     "dataset.batch_size=0: allowed is a count >= 1 (the sweep's job dataset.batch_size=0; no job was started)"),
    (["architecture=densenet13", "architecture.reduction=1.0,1.5"],
     "architecture.reduction=1.5: allowed is a number in (0, 1], the share of its input channels a transition keeps "
     "(1.0 keeps all, DenseNet-BC's 0.5 halves) (the sweep's job architecture.reduction=1.5; no job was started)"),
    (["trainer.accelerator=cpu", "trainer.sync_batchnorm=false,true"],  # refused as the trainer was built: job 0 trained
     "trainer.sync_batchnorm=true: torch's SyncBatchNorm needs GPUs, and this run's processes are on the CPU; allowed "
     "there is false (each rank normalises with its own batch statistics) (the sweep's job "
     "trainer.sync_batchnorm=True; no job was started)"),
    (["seed=range(5,1)"],  # Hydra's basic sweeper launched no job and exited 0
     "seed=range(5,1): the sweep has no values, so it would launch no job; give at least one value"),
    (["method=glob(zz*)"], "method=glob(zz*): the sweep has no values, so it would launch no job; give at least one value"),
    (["method=ste", "seed=range(0,70)", "method.t_clip=0.5,-1"],  # 140 jobs: each value, the others at their first
     "method.t_clip=-1.0: allowed is null or a number >= 0 (the sweep's value method.t_clip=-1, the other sweeps at "
     "their first value; no job was started)"),
])
def test_every_value_of_a_sweep_is_checked_before_its_first_job(args, message, capsys):
    from binexp.cli import _check_override_keys

    with pytest.raises(SystemExit) as raised:
        _check_override_keys(["-m", "dataset=synthetic", *args])
    assert raised.value.code == 2 and capsys.readouterr().err == f"binexp: error: {message}\n"


def test_a_sweep_with_a_bad_last_value_trains_no_job(tmp_path):
    out = binexp("train", "-m", "dataset=synthetic", "debug=smoke", "method=ste", "method.t_clip=0.5,0.75,-1",
                 f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert out.returncode == 2 and "method.t_clip=-1.0: allowed is null or a number >= 0" in out.stderr
    assert not (tmp_path / "s").exists()


def test_the_slurm_launcher_without_its_plugin_says_what_to_install(tmp_path):
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        pytest.skip("the submitit launcher is installed here")
    except ImportError:
        pass
    out = binexp("train", "-m", "hydra/launcher=slurm", "seed=0,1", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "binexp: error: hydra/launcher=slurm needs Hydra's submitit launcher, which is not installed: pip install -e '.[cluster]'" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_unknown_option_fails_with_the_allowed_options(tmp_path):
    out = binexp("train", "dataset=nope", cwd=tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "Could not find 'dataset/nope'" in text and "mnist" in text and "synthetic" in text


def test_missing_dataset_fails_cleanly_with_a_hint(tmp_path):
    out = binexp("train", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert out.returncode == 2
    assert "binexp: error: MNIST not found" in out.stderr and "BINEXP_DATA" in out.stderr
    assert "Traceback" not in out.stderr


def test_train_resume_and_eval_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    out = binexp("train", "dataset=synthetic", "debug=smoke", "trainer.max_epochs=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["trainer/global_step"] == 4
    assert "run directory" in out.stdout
    original = (run / ".hydra" / "config.yaml").read_text()

    out = binexp("train", f"resume={run}", "trainer.max_epochs=abc", cwd=tmp_path)  # typed as a new run would be
    assert out.returncode == 2 and out.stderr.endswith(
        "binexp: error: trainer.max_epochs: Value 'abc' of type 'str' could not be converted to Integer\n")
    out = binexp("train", f"resume={run}", "trainer.max_epochs=3", "method.scope=foo", cwd=tmp_path)
    assert out.returncode == 2 and "so method.scope cannot change" in out.stderr  # the method is what it trained
    out = binexp("train", f"resume={run}", "trainer.max_epoch=3", cwd=tmp_path)  # a typo: the keys that are there
    assert out.returncode == 2 and "trainer.max_epoch: not a key of the config of" in out.stderr
    assert "max_epochs" in out.stderr and "use +trainer" not in out.stderr
    for changed in ("optimizer.lr=0.5", "seed=7", "trainer.accumulate_grad_batches=2", "dataset.batch_size=8"):
        out = binexp("train", f"resume={run}", changed, cwd=tmp_path)  # would be ignored, or would shift the steps
        key = changed.partition("=")[0]
        assert out.returncode == 2 and out.stderr.startswith(f"binexp: error: {changed}: resume={run} continues that "
                                                             f"run as it was trained") and f"so {key} cannot change" in out.stderr
    from binexp.evaluate import load_run_config
    from binexp.train import check_resume_overrides

    saved = load_run_config(run)  # the value the run has, typed again, is no change
    check_resume_overrides([f"seed={saved.seed}", f"dataset.batch_size={saved.dataset.batch_size}"], run, saved)
    out = binexp("train", f"resume={run}", "trainer=cpu", cwd=tmp_path)
    assert out.returncode == 2 and "trainer=cpu: resume=" in out.stderr and "(trainer.<key>=<value>)" in out.stderr
    log_before = (run / "train.log").read_text()
    out = binexp("train", f"resume={run}", "trainer.max_epochs=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    log_after = (run / "train.log").read_text()  # the resumed run logs on in the same file
    assert log_after.startswith(log_before) and "HParams" in log_after[len(log_before):]
    assert not (run / "cli.log").exists()
    assert json.loads((run / "metrics.json").read_text())["trainer/global_step"] == 8
    assert (run / ".hydra" / "config.yaml").read_text() == original
    assert len(list((run / ".hydra").glob("resumed-*/config.yaml"))) == 1  # the refused launches left none

    finished = (run / "metrics.json").read_text()
    out = binexp("train", f"resume={run}", cwd=tmp_path)  # its last launch's 2 epochs are done
    assert out.returncode == 2 and "the run has trained its trainer.max_epochs=2" in out.stderr
    assert (run / "metrics.json").read_text() == finished

    out = binexp("eval", f"run={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "eval-last.json").read_text())["test/acc"] == json.loads((run / "metrics.json").read_text())["test/acc"]


def test_export_and_verify_an_abr_run_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    out = binexp("train", "dataset=synthetic", "debug=smoke", "method=abr", f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    out = binexp("export", str(run), cwd=tmp_path)  # a fresh process: the saved config's resolvers must be there
    assert out.returncode == 0, out.stderr[-2000:]
    out = binexp("verify", str(run / "export" / "model.safetensors"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "export" / "verify.json").read_text())["differing_predictions"] == 0
    out = binexp("export", str(tmp_path / "nope"), cwd=tmp_path)
    assert out.returncode == 2 and "binexp: error:" in out.stderr and "Traceback" not in out.stderr


def test_a_built_wheel_carries_the_config_tree(tmp_path):
    """A non-editable install finds conf/ as the package binexp.conf."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip("pip wheel unavailable")
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("binexp-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "binexp/conf/train.yaml" in names and "binexp/conf/architecture/cifar_quick.yaml" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from binexp.cli import main; main(['train', '--help'])"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "method: abr, bc, bnn, bwn, fp, sbn, ste, xnor" in out.stdout and "abr_table1_mnist" in out.stdout
    check = subprocess.run(
        [sys.executable, "-c", "import binexp, binexp.conf; print(binexp.__file__, binexp.conf.__file__)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True,
    )
    assert str(target) in check.stdout.split()[0] and str(target) in check.stdout.split()[1]


def test_report_tabulates_a_sweep(tmp_path):
    out = binexp(
        "train", "-m", "dataset=synthetic", "debug=smoke", "trainer.max_epochs=1", "optimizer.lr=0.01,0.05",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(runs) == 2
    out = binexp("report", str(tmp_path / "sweep"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = (tmp_path / "sweep" / "report.csv").read_text().splitlines()
    assert lines[0].split(",")[:2] == ["run", "optimizer.lr"]
    assert sorted(line.split(",")[1] for line in lines[1:]) == ["0.01", "0.05"]


def test_a_diverging_job_does_not_stop_the_sweep_but_the_sweep_exits_non_zero(tmp_path):
    sweep = tmp_path / "sweep"
    out = binexp("train", "-m", "dataset=synthetic", "debug=smoke", "optimizer.lr=1e12,0.01", f"hydra.sweep.dir={sweep}",
                 cwd=tmp_path)
    assert out.returncode == 3
    assert f"1 job(s) of the sweep stopped on a non-finite loss (the others ran): {sweep / '0'}" in out.stderr
    assert not (sweep / "0" / "metrics.json").exists() and (sweep / "1" / "metrics.json").exists()
    from binexp.report import find_runs

    assert {r.name: r.state for r in find_runs([sweep])} == {"0": "diverged", "1": "finished"}


def test_a_sweep_job_stopped_by_a_signal_says_how_to_resume_the_sweep(tmp_path):
    """Ctrl-C in job 0 of a sweep stops the sweep: the hint is the sweep's command into its folder (which skips
    finished jobs and continues this one), not only this job's resume=."""
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "dataset=synthetic", "debug=smoke", "method=fp,ste", "+callbacks.signal._target_="
            "binexp.callbacks.guards.SignalAtStep", "+callbacks.signal.step=2", "+callbacks.signal.signal_name=SIGINT"]
    out = binexp(*args, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert out.returncode == 130, out.stderr[-2000:]
    assert "This run is job 0 of a sweep, which stops with it. Resume the sweep" in out.stderr
    assert "  binexp " + " ".join(args) + f" hydra.sweep.dir={sweep}\n" in out.stderr
    assert f"or this job alone with: binexp train resume={sweep / '0'}" in out.stderr
    assert not (sweep / "1").exists()
