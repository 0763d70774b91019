"""DDP: presets, strategy choice, and sharded evaluation that adds up to one process's numbers.

The rank helpers run in two real gloo processes (torch.multiprocessing); the end-to-end DDP run (`binexp train
trainer=ddp` on 2 CPU processes) is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from binexp.binarize.abr import ABR
from binexp.binarize.hard import BinaryNet
from binexp.callbacks.binarization import firing_matrix, measure
from binexp.data.loader import DeviceBatches
from binexp.data.synthetic import SyntheticData
from binexp.distributed import (
    ChildRankLauncher,
    DDPStrategy,
    gather_in_order,
    launcher_of,
    strategy_for,
    sum_over_shards,
)
from binexp.models.lenet import LeNet
from binexp.protocol import (
    ProtocolConfig,
    accuracy,
    classifier_inputs,
    fixed_point_bn,
    reestimate_bn,
    run_protocol,
)
from binexp.train import build_callbacks, build_data, build_method, build_schedule, build_trainer
from tests.conftest import SMOKE, compose_train


# ---- presets and strategy --------------------------------------------------------------------------------
def test_ddp_preset_builds_binexps_ddp_strategy_on_two_cpu_processes(tmp_path):
    cfg = compose_train(SMOKE + ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], run_dir=tmp_path)
    assert cfg.trainer.strategy._target_ == "binexp.distributed.DDPStrategy"
    trainer = build_trainer(cfg, [], tmp_path)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.world_size == 2 and trainer.num_devices == 2
    assert isinstance(launcher_of(trainer), ChildRankLauncher)
    assert trainer.strategy.root_device == torch.device("cpu")  # gloo, as Lightning picks for CPUs


def test_cluster_preset_logs_plain_lines_instead_of_a_progress_bar(tmp_path):
    from pytorch_lightning.callbacks import ProgressBar

    from binexp.callbacks.progress import LogProgress

    cfg = compose_train(["dataset=synthetic", "trainer=cluster", "trainer.accelerator=cpu"], run_dir=tmp_path)
    assert cfg.trainer.enable_progress_bar is False and cfg.trainer.devices == 1
    assert cfg.trainer.log_every_n_steps == 50
    assert "rich_progress_bar" in cfg.callbacks  # composed by callbacks=default, dropped when built:
    dm = build_data(cfg)
    method = build_method(cfg)
    callbacks = build_callbacks(cfg, build_schedule(cfg, method), method, dm)
    assert not [cb for cb in callbacks if isinstance(cb, ProgressBar)]
    assert [cb for cb in callbacks if isinstance(cb, LogProgress)][0].every_n_steps == 100
    trainer = build_trainer(cfg, callbacks, tmp_path)  # Lightning refuses a progress bar it may not draw
    assert trainer.progress_bar_callback is None


@pytest.mark.parametrize(
    ("strategy", "devices", "nodes", "ours"),
    [("ddp", 1, 1, True), ("auto", 2, 1, True), ("auto", "0,1", 1, True), ("auto", 1, 2, True),
     ("auto", 1, 1, False), ("auto", "1", 1, False), ("ddp_spawn", 2, 1, False), ("deepspeed", 2, 1, False)],
)
def test_strategy_for_routes_lightnings_own_ddp_to_binexps(strategy, devices, nodes, ours):
    chosen = strategy_for(strategy, devices, nodes)
    assert isinstance(chosen, DDPStrategy) is ours
    if not ours:
        assert chosen == strategy


@pytest.mark.parametrize(("devices", "accelerator", "refused"),
                         [(4, "auto", True), ("0,1", "auto", True), (-1, "auto", True), (4, "cpu", False),
                          ("auto", "auto", False), (1, "auto", False)])
def test_several_devices_without_a_gpu_are_refused_unless_cpu_is_asked_for(devices, accelerator, refused, tmp_path,
                                                                           monkeypatch):
    from omegaconf import OmegaConf

    from binexp.errors import ConfigError
    from binexp.train import check_devices_are_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trainer = OmegaConf.create({"devices": devices, "accelerator": accelerator})
    if not refused:
        assert check_devices_are_gpus(trainer) is None
        return
    with pytest.raises(ConfigError, match=rf"trainer.devices={devices}: this machine has no GPU.*trainer.accelerator=cpu"):
        check_devices_are_gpus(trainer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_devices_are_gpus(trainer) is None


@pytest.mark.parametrize(("override", "message"), [
    ("+trainer.strategy.typo=1", r"^trainer.strategy.typo: not a parameter of binexp.distributed.DDPStrategy or of "
                                 r"torch's DistributedDataParallel \(they take .*find_unused_parameters"),
    ("trainer.strategy.process_group_backend=abc", r"^trainer.strategy.process_group_backend='abc': allowed are null "
                                                   r"\(Lightning's choice: nccl on GPUs, gloo on CPUs\), gloo, nccl, mpi, "
                                                   r"ucc$"),
    ("trainer.strategy=ddp_spawn", r"^trainer.strategy=ddp_spawn: allowed are auto, ddp \(binexp's DDP, whose other "
                                   r"ranks train the launching rank's config\), or trainer=ddp$")])
def test_a_strategy_binexp_cannot_run_or_a_key_ddp_does_not_take_is_refused(override, message):
    """A typo reached torch's DDP as a TypeError; ddp_spawn trained and then failed pickling a signal handler."""
    from binexp.errors import ConfigError
    from binexp.train import check_trainer

    with pytest.raises(ConfigError, match=message):
        check_trainer(compose_train(["dataset=synthetic", "trainer=ddp", override]).trainer)
    check_trainer(compose_train(["dataset=synthetic", "trainer=ddp", "trainer.accelerator=cpu",
                                 "+trainer.strategy.find_unused_parameters=true"]).trainer)


def test_several_nodes_without_anything_that_starts_them_are_refused(monkeypatch):
    """trainer.num_nodes=2 on one machine waited in the rendezvous forever."""
    from omegaconf import OmegaConf

    from binexp.errors import ConfigError
    from binexp.train import check_trainer

    for name in ("NODE_RANK", "RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID",
                 "LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    trainer = OmegaConf.create({"num_nodes": 2, "devices": 1, "accelerator": "cpu"})
    with pytest.raises(ConfigError, match=r"^trainer.num_nodes=2: nothing here starts the other nodes \(no SLURM job, "
                                          r"torchrun, LSF or MPI, and no NODE_RANK or RANK/WORLD_SIZE\), so this process "
                                          r"would wait for them forever; run it through hydra/launcher=slurm or torchrun"):
        check_trainer(trainer)
    check_trainer(trainer, on_this_machine=False)  # a sweep's pre-check of jobs a cluster launcher starts elsewhere
    monkeypatch.setenv("NODE_RANK", "0")
    check_trainer(trainer)


def test_a_sweeps_check_leaves_the_machine_checks_to_jobs_that_run_elsewhere(monkeypatch):
    """A sweep sent to SLURM from a login node without GPUs was refused for trainer.devices=4 by its pre-check."""
    from binexp.cli import _check_job
    from binexp.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_train(["dataset=synthetic", "debug=smoke", "trainer.devices=4", "trainer.accelerator=auto"])
    with pytest.raises(ConfigError, match=r"^trainer.devices=4: this machine has no GPU"):
        _check_job(cfg, on_this_machine=True)
    _check_job(cfg, on_this_machine=False)


def test_submitit_slurm_launcher_preset_composes_from_the_trainer_settings():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from binexp.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("binexp.conf", version_base="1.3"):
        cfg = compose("train", overrides=[
            "hydra/launcher=slurm", "trainer=cluster", "trainer.devices=4", "trainer.num_nodes=2",
            "method=ste", "hydra.launcher.partition=gpu",
        ], return_hydra_config=True)
        launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert launcher.params["tasks_per_node"] == 4 and launcher.params["gpus_per_node"] == 4
    assert launcher.params["nodes"] == 2 and launcher.params["partition"] == "gpu"
    assert launcher.params["max_num_timeout"] > 0 and launcher.params["signal_delay_s"] == 120


def test_the_slurm_launcher_refuses_a_device_count_slurm_cannot_take(capsys):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from binexp.cli import main

    with pytest.raises(SystemExit) as raised:  # trainer=ddp's devices: auto
        main(["train", "-m", "hydra/launcher=slurm", "trainer=ddp", "dataset=synthetic", "debug=smoke"])
    assert raised.value.code == 2
    assert capsys.readouterr().err == ("binexp: error: trainer.devices=auto: hydra/launcher=slurm asks SLURM for "
                                       "trainer.devices GPUs and tasks per node; give a number (trainer.devices=4)\n")


def test_sync_batchnorm_keeps_each_batch_norms_class_and_binary_bns_step_form():
    """Lightning's plugin made every batch norm a plain SyncBatchNorm and, after fit, a plain batch norm: BNN's
    SignBatchNorm lost its BinaryBN step form (the 8-bit thresholds and the export look for it)."""
    import pytorch_lightning as pl

    from binexp.binarize.base import step_mode
    from binexp.binarize.binary_bn import _BinaryBNStepForm
    from binexp.distributed import StepFormSyncBatchNorm

    cfg = compose_train(SMOKE + ["method=bnn", "architecture.batch_norm=true", "architecture.conv_act=true"])
    torch.manual_seed(0)
    from binexp.models import build_model

    net = build_model(cfg.architecture, build_method(cfg), (1, 28, 28), 10)
    x = torch.randn(16, 1, 28, 28)
    net.train()
    net(x)
    net.eval()
    with torch.no_grad(), step_mode(net):
        before = net(x)
    classes = [type(m) for m in net.modules()]
    plugin = StepFormSyncBatchNorm()
    plugin.apply(net)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert sum(isinstance(m, _BinaryBNStepForm) for m in norms) == sum(issubclass(c, _BinaryBNStepForm) for c in classes) > 0
    with torch.no_grad(), step_mode(net):
        assert torch.equal(net(x), before)
    plugin.revert(net)
    assert [type(m) for m in net.modules()] == classes
    trainer = pl.Trainer(accelerator="cpu", sync_batchnorm=True, plugins=[plugin], logger=False)
    assert trainer._accelerator_connector._layer_sync is plugin  # Lightning takes it for its own


def test_a_fraction_of_the_test_set_that_gives_the_processes_different_batch_counts_is_refused():
    """Shards of 151 and 150 images in batches of 150: half of each is 1 and 0 batches; the process without one
    waited for the other forever (the curves sum over the ranks)."""
    from binexp.errors import ConfigError

    dm = SyntheticData(num_train=192, num_test=301, val_size=0, batch_size=32, eval_batch_size=150, seed=0)
    with pytest.raises(ConfigError, match=r"^trainer.limit_test_batches=0.5: under DDP each of the 2 processes takes "
                                          r"that share of its own part of the test set \(151, 150 images, batches of "
                                          r"dataset.eval_batch_size=150\), which gives them 1, 0 batches; give a count "
                                          r"per process instead \(trainer.limit_test_batches=1\)$"):
        dm.check_eval_shards(2, {"val": 0.5, "test": 0.5})
    for fine in (1.0, 0.0, 2, 0.25):  # the whole shards, none, a count; a quarter: 0 batches on both
        dm.check_eval_shards(2, {"val": 0.5, "test": fine})
    dm.check_eval_shards(1, {"test": 0.5})


def test_a_child_rank_ends_when_its_launcher_does(tmp_path):
    """Killed before Lightning's handlers were in, the launcher left its child waiting in the rendezvous."""
    script = tmp_path / "launcher.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'from binexp.distributed import die_with_parent; "
        "die_with_parent(); import sys, time; open(sys.argv[1], \"w\").close(); time.sleep(60)', sys.argv[1]], "
        "env={**os.environ, 'BINEXP_LAUNCHER_PID': str(os.getpid())}, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "import pathlib, time\n"
        "for _ in range(600):  # until the child waits (importing torch takes seconds on a loaded machine)\n"
        "    if pathlib.Path(sys.argv[1]).exists(): break\n"
        "    time.sleep(0.1)\n"
        "os._exit(0)\n")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "waiting")], capture_output=True, text=True,
                         timeout=60)
    pid = int(out.stdout.split()[0])
    assert (tmp_path / "waiting").exists(), out.stderr  # it was waiting when the launcher went
    import time

    for _ in range(50):
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, 9)
        pytest.fail("the child outlived its launcher")


def test_a_child_rank_leaves_a_collapse_to_rank_zero(monkeypatch, capsys):
    """Every rank sees the same collapse; the child printed it again and exited 4."""
    import binexp.distributed
    import binexp.train
    from binexp.callbacks.binarization import TrainingCollapsed

    def collapse(cfg):
        raise TrainingCollapsed("training collapsed at step 8")

    monkeypatch.setattr(binexp.train, "train", collapse)
    monkeypatch.setattr(binexp.distributed, "die_with_parent", lambda: None)
    monkeypatch.setattr(binexp.distributed, "quiet_other_ranks", lambda rank: None)
    monkeypatch.setenv(binexp.distributed.RANK_CONFIG_ENV, "seed: 0\n")
    with pytest.raises(SystemExit) as raised:
        binexp.distributed.main()
    assert raised.value.code == 0 and capsys.readouterr().err == ""


# ---- sharded evaluation helpers ------------------------------------------------------------------------
def _data(rank: int = 0, world: int = 1) -> SyntheticData:
    """301 test images: two shards of 151 and 150, batches of 64 (3 per rank, the last ones partial)."""
    dm = SyntheticData(num_train=192, num_test=301, val_size=0, batch_size=32, eval_batch_size=64, seed=0)
    dm.setup()
    if world > 1:
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, strategy=SimpleNamespace(root_device="cpu"))
    return dm


def _net() -> tuple[torch.nn.Module, ABR]:
    torch.manual_seed(0)
    method = ABR()
    net = LeNet(method, (1, 28, 28), 10, channels=(6, 8), hidden=32, conv_act=True)
    with torch.no_grad():  # steep slopes: a mix of saturated and linear outputs, so the counts say something
        for name, p in net.named_parameters():
            if name.endswith("slope"):
                p.mul_(torch.linspace(0.5, 40, p.numel()).view_as(p))
    return net, method


def _binary_net(dm: SyntheticData) -> torch.nn.Module:
    """A BNN LeNet whose BN statistics are its step form's, so its BinaryBN thresholds sit among their inputs."""
    torch.manual_seed(0)
    method = BinaryNet()
    net = LeNet(method, (1, 28, 28), 10, channels=(6, 8), hidden=32, conv_act=True, batch_norm=True)
    method.finalize(net)
    return reestimate_bn(net, dm.batches("train", train=True, shard=False), count=3, step=True)


def _evaluate_everything(dm: SyntheticData) -> dict:
    net, method = _net()
    test = dm.batches("test")
    fixed_bn = fixed_point_bn(_binary_net(dm), dm.batches("train", train=True, shard=False), test, bits=4, range_batches=2)
    protocol = ProtocolConfig(finetune_epochs=2, binary_weights_epochs=1)
    features, labels = classifier_inputs(net, test)
    return {
        "measure": measure(net, test, reduce=lambda t: sum_over_shards(t, test)),
        "regular": accuracy(net, test),
        "binary": accuracy(net, test, step=True),
        "features": features, "labels": labels,
        "firing": firing_matrix(net, test, dm.num_classes),
        "protocol": run_protocol(net, method, dm, protocol, seed=0),
        "fixed_bn": fixed_bn,
        "shard": torch.cat([y for _, y in test]).tolist(),
        "rows": gather_in_order(torch.arange(test.rank, 301, test.world_size)[:, None].float(), test)[:, 0].tolist(),
    }


def _rank_worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)  # forked from a process whose thread pool has run: stay single-threaded
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world)
    try:
        torch.save(_evaluate_everything(_data(rank, world)), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_one_processs_curves_protocol_and_firing_matrix(tmp_path):
    single = _evaluate_everything(_data())
    # fork: the ranks start in a moment instead of importing torch and Lightning again
    mp.start_processes(_rank_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    # the shards partition the test set: no sample twice, none left out
    dm = _data()
    labels = dm.splits["test"].labels
    assert ranks[0]["shard"] == labels[0::2].tolist() and ranks[1]["shard"] == labels[1::2].tolist()
    assert len(ranks[0]["shard"]) + len(ranks[1]["shard"]) == 301
    assert ranks[0]["rows"] == ranks[1]["rows"] == list(range(301))  # gathered back in dataset order

    assert 0 < single["measure"]["fc1"]["saturated"] < 1  # the statistics are not trivially 0 or 1
    for out in ranks:
        assert out["measure"] == single["measure"]
        assert out["regular"] == single["regular"] and out["binary"] == single["binary"]
        assert torch.equal(out["features"], single["features"]) and torch.equal(out["labels"], single["labels"])
        np.testing.assert_array_equal(out["firing"], single["firing"])
        assert out["protocol"] == single["protocol"]
        assert out["fixed_bn"] == single["fixed_bn"]  # BinaryBN's fixed-point flips counted over both shards
    assert set(single["protocol"]) == {"protocol/regular", "protocol/binary", "protocol/finetuned", "protocol/binary_weights"}
    fixed_layers = single["fixed_bn"][1]
    assert sum(layer["flips"] for layer in fixed_layers.values()) > 0  # 4 bits: something to count
    assert fixed_layers["features.2"]["values"] == 301 * 6 * 12 * 12  # every test image's conv1 outputs, once


def test_a_shard_without_a_process_group_is_an_error_not_half_the_answer():
    batches = DeviceBatches(_data().splits["test"], 64, _data().norm, rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        sum_over_shards(torch.ones(2), batches)
    whole = DeviceBatches(_data().splits["test"], 64, _data().norm)
    t = torch.tensor([3.0, 4.0])
    assert sum_over_shards(t, whole) is t and gather_in_order(t, whole) is t


# ---- end to end: about 25 s on 2 idle CPU cores (3 processes), so `make test-full` ------------------------
@pytest.mark.slow
def test_ddp_run_on_two_cpu_processes_makes_one_run_directory_with_one_processs_numbers(tmp_path):
    """`binexp train trainer=ddp` on 2 gloo processes: one run directory (children run no Hydra), and every
    statistic it reports equals what one process computes on the same weights over the whole test set."""
    from binexp.train import build_module

    logs = tmp_path / "logs"
    common = ["dataset=synthetic", "debug=smoke", "method=abr", "trainer.max_epochs=2", "dataset.subset=512",
              "trainer.limit_train_batches=1.0", "trainer.deterministic=true", "~callbacks.best_checkpoint"]
    env = {**os.environ, "BINEXP_LOGS": str(logs), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "binexp.cli", "train", *common, "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((logs / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # the child rank did not compose a run of its own
    run_dir = runs[0]
    assert [p.name for p in run_dir.rglob("config.yaml")] == ["config.yaml"]
    assert out.stdout.count("final metrics") == 1 and out.stdout.count("run directory") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = (run_dir / "binarization.csv").read_text().splitlines()
    steps = [r.split(",")[0] for r in rows[1:]]
    assert len(steps) == len(set(steps))  # one writer
    assert metrics["trainer/global_step"] == 2 * 512 // (2 * 64)  # 2 epochs of 512 images, 64 per rank per step

    # the same weights, one process, the whole test set
    cfg = compose_train(SMOKE + common, run_dir=tmp_path / "single")
    dm, method = build_data(cfg), build_method(cfg)
    module = build_module(cfg, dm, method)
    module.load_state_dict(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    net = module.net
    stats = measure(net, dm.batches("test"))
    keys = rows[0].split(",")[3:]
    assert rows[-1].split(",")[3:] == [f"{stats['fc1'][k]:.6g}" for k in keys]
    assert metrics["test/acc"] == accuracy(net, dm.batches("test"))
    protocol = run_protocol(net, method, dm, ProtocolConfig(), seed=dm.seed)
    for key, value in protocol.items():
        assert metrics[key] == value, key
    np.testing.assert_array_equal(np.load(run_dir / "firing_matrix.npy"), firing_matrix(net, dm.batches("test"), 10))

    # and DDP trained as one process with the global batch would have (up to float summation order)
    from binexp.train import train

    single = train(compose_train(SMOKE + common + ["dataset.batch_size=128"], run_dir=tmp_path / "big-batch"))
    assert single["trainer/global_step"] == metrics["trainer/global_step"]
    for key in ("protocol/regular", "protocol/binary", "test/acc", "train/acc"):
        assert single[key] == pytest.approx(metrics[key], abs=2 / 512), key
    assert single["train/loss"] == pytest.approx(metrics["train/loss"], rel=1e-4)  # both shards, not rank 0's
    big = torch.load(tmp_path / "big-batch" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    ddp = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key in big:
        torch.testing.assert_close(ddp[key], big[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_ddp_run_stopped_mid_epoch_resumes_to_the_same_weights_and_epoch_values(tmp_path):
    """The interrupted epoch's loss and accuracy cover both shards' batches from before the stop: each rank saved
    (and restored) rank zero's totals alone, so the epoch's sum counted rank 0's twice and lost rank 1's."""
    common = ["dataset=synthetic", "debug=smoke", "method=abr", "trainer.max_epochs=2", "dataset.subset=512",
              "trainer.limit_train_batches=1.0", "trainer.deterministic=true", "~callbacks.best_checkpoint",
              "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "+callbacks.graceful_stop.sync_every_n_steps=1"]
    stop = ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", "+callbacks.signal.step=5",
            "+callbacks.signal.signal_name=SIGTERM"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def launch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "binexp.cli", "train", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    assert launch(*common, f"hydra.run.dir={tmp_path / 'straight'}").returncode == 0
    cut = launch(*common, *stop, f"hydra.run.dir={tmp_path / 'cut'}")
    assert cut.returncode == 130 and "stopped at step 6 " in cut.stderr, cut.stderr[-3000:]
    resumed = launch(f"resume={tmp_path / 'cut'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight, again = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("straight", "cut"))
    for key in ("train/loss", "train/acc", "test/acc", "trainer/global_step"):
        assert again[key] == straight[key], key
    a, b = (torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for name in ("straight", "cut"))
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.slow
def test_ddp_curves_and_firing_matrix_use_the_saved_batch_norm_statistics(tmp_path):
    """Without a validation after the last step, each rank's BN running statistics were still its own shard's when
    the curves and the firing matrix measured; they now take rank zero's, the ones last.ckpt holds."""
    from binexp.train import build_module

    common = ["dataset=synthetic", "debug=smoke", "method=bnn", "architecture.batch_norm=true", "dataset.val_size=0",
              "trainer.max_epochs=1", "dataset.subset=512", "trainer.limit_train_batches=1.0", "~callbacks.best_checkpoint"]
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "binexp.cli", "train", *common, "trainer=ddp", "trainer.accelerator=cpu",
                          "trainer.devices=2", f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = compose_train(SMOKE + common, run_dir=tmp_path / "single")
    dm = build_data(cfg)
    module = build_module(cfg, dm, build_method(cfg))
    module.load_state_dict(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    stats = measure(module.net, dm.batches("test"))
    rows = (run_dir / "binarization.csv").read_text().splitlines()
    keys, last = rows[0].split(",")[3:], rows[-1].split(",")
    layer = last[2]
    assert last[3:] == [f"{stats[layer][k]:.6g}" if k in stats[layer] else "" for k in keys]
    np.testing.assert_array_equal(np.load(run_dir / "firing_matrix.npy"), firing_matrix(module.net, dm.batches("test"), 10))


def test_a_non_finite_loss_on_another_rank_is_reported_as_that_ranks(tmp_path):
    from binexp.callbacks.guards import FiniteLossGuard
    from binexp.errors import NonFiniteLossError

    guard = FiniteLossGuard()
    guard._bad, guard._last_loss = torch.tensor(False), torch.tensor(2.5)  # this rank's losses were all finite
    trainer = SimpleNamespace(world_size=2, global_rank=0, global_step=20, current_epoch=0, default_root_dir=str(tmp_path),
                              strategy=SimpleNamespace(reduce=lambda t, reduce_op: torch.ones(())))  # rank 1's was not
    with pytest.raises(NonFiniteLossError, match=r"by step 20 \(epoch 0; last loss non-finite on another rank; 2.5 on "
                                                 r"rank 0\)"):
        guard._check(trainer, SimpleNamespace(device="cpu"), parameters=False)


def test_a_rank_killed_after_its_job_does_not_take_the_launching_process_with_it():
    """A child rank that did not exit after the job was killed by `finish`; Lightning's observer thread saw it die by
    a signal and SIGKILLed the launching process, in a sweep about 5 s into the next job (rc 137, no message)."""
    script = """
import os, subprocess, sys, time
from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from binexp.distributed import ChildRankLauncher

launcher = ChildRankLauncher.__new__(ChildRankLauncher)  # only what finish() reads
launcher.procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
launcher._saved_env = None
_ChildProcessObserver(main_pid=os.getpid(), child_processes=launcher.procs, sleep_period=0.05).start()
launcher.finish(timeout_s=0.2)
time.sleep(1.0)  # the observer's next looks
print("went on")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "went on\n"), out.stderr[-2000:]
