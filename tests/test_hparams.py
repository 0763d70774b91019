"""A sweep shows up in TensorBoard's HParams tab: each job's overrides with its final metrics."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata, plugin_data_pb2

from binexp.cli import main
from binexp.hparams import job_hparams
from tests.conftest import compose_train


def hparams_of(run_dir: Path, tags: list[str]) -> tuple[dict, dict[str, float], set[str]]:
    """What the HParams plugin reads of a run: the session's hparams, the last values of `tags`, its plugin tags."""
    acc = EventAccumulator(str(run_dir / "tb" / "final"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG]).session_start_info
    hparams = {k: (v.number_value if v.HasField("number_value") else v.string_value) for k, v in start.hparams.items()}
    return hparams, {t: acc.Scalars(t)[-1].value for t in tags}, set(content)


def tensorboard_columns(logdir: Path) -> tuple[set[str], set[str]]:
    """The hparam and metric columns TensorBoard's HParams tab shows for `logdir`, as its backend computes them."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment

    events = plugin_event_multiplexer.EventMultiplexer()
    events.AddRunsFromDirectory(str(logdir))
    events.Reload()
    provider = data_provider.MultiplexerDataProvider(events, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=events, data_provider=provider))
    experiment = get_experiment.Handler(context.RequestContext(), backend, "", api_pb2.GetExperimentRequest()).run()
    return {h.name for h in experiment.hparam_infos}, {m.name.tag for m in experiment.metric_infos}


def test_a_two_job_sweep_logs_its_overrides_and_final_metrics_as_hparams(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    GlobalHydra.instance().clear()
    main([
        "train", "-m", "dataset=synthetic", "debug=smoke", "logger=tensorboard", "trainer.max_epochs=1",
        "method=ste", "method.t_clip=0.25,0.75", "architecture.batch_norm=true", "protocol.finetune_epochs=0",
        f"hydra.sweep.dir={tmp_path}",
    ])
    for job, t_clip in (("0", 0.25), ("1", 0.75)):
        final = json.loads((tmp_path / job / "metrics.json").read_text())
        tags = sorted(k for k in final if k.startswith(("test/", "protocol/")) or k == "val/acc_best")
        hparams, values, written = hparams_of(tmp_path / job, tags)
        # the job's overrides resolved (a number stays a number) and its group choices; run-management keys
        # (debug, logger, hydra.*) and the rest of the config are left out
        assert hparams == {
            "architecture": "lenet", "dataset": "synthetic", "lr_scheduler": "caffe_inv", "method": "ste",
            "optimizer": "sgd_caffe_lenet", "schedule": "constant", "architecture.batch_norm": "true",
            "method.t_clip": t_clip, "protocol.finetune_epochs": 0.0, "trainer.max_epochs": 1.0,
        }
        assert {"test/acc", "protocol/regular", "protocol/binary"} <= set(tags)
        assert values == pytest.approx({t: final[t] for t in tags})
        # no experiment summary: TensorBoard would take its columns from the first run's and hide other runs' keys
        assert metadata.EXPERIMENT_TAG not in written
        # the full config stays in hparams.yaml, without the flattened HParams keys merged into it
        saved = OmegaConf.load(tmp_path / job / "tb" / "hparams.yaml")
        assert saved.config.method.t_clip == t_clip and "method.t_clip" not in saved
    hparam_columns, metric_columns = tensorboard_columns(tmp_path)
    assert {"method", "method.t_clip", "trainer.max_epochs"} <= hparam_columns
    # the final metrics only: with the session among the curves, every curve's tag was a column too
    assert metric_columns == set(tags) and {"test/acc", "protocol/binary", "val/acc_best"} <= metric_columns


def test_a_group_override_is_its_option_name_and_other_values_are_spelled_as_typed():
    # run-management overrides (hydra.*, resume, callbacks) say where a run happens, not what it is
    overrides = ["architecture=resnet18", "architecture.blocks=[1,1,1,1]", "architecture.init=kaiming", "method=ste",
                 "method.t_clip=null", "hydra.sweep.dir=/x", "resume=/y", "+callbacks.extra._target_=x"]
    cfg = compose_train(overrides[:5])
    assert job_hparams(cfg, overrides, {"architecture": "resnet18", "method": "ste", "hydra/launcher": "basic"}) == {
        "architecture": "resnet18", "architecture.blocks": "[1, 1, 1, 1]", "architecture.init": "kaiming",
        "method": "ste", "method.t_clip": "null",
    }


def test_a_resume_that_lengthens_a_run_shows_the_job_as_it_is_now_once(tmp_path, monkeypatch):
    """TensorBoard's tab shows a run's first session: the first launch's (trainer.max_epochs 1) hid the resume's.
    Each final value is written once per step (test/* were written twice), and hparams.yaml is the resume's. A key
    an earlier resume overrode keeps its column, with the value the last launch ran (the second resume dropped it)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    run = tmp_path / "run"
    for args in (["dataset=synthetic", "debug=smoke", "logger=tensorboard", "trainer.max_epochs=1", "method=ste",
                  f"hydra.run.dir={run}"], [f"resume={run}", "trainer.max_epochs=2", "protocol.finetune_epochs=2"],
                 [f"resume={run}", "trainer.max_epochs=3"]):
        started = int(time.time())
        while int(time.time()) == started:  # each launch in a second of its own, as launches from a shell are: event
            time.sleep(0.05)                # files and .hydra/resumed-<time> records are named by the second
        GlobalHydra.instance().clear()
        main(["train", *args])
    final = json.loads((run / "metrics.json").read_text())
    hparams, _, _ = hparams_of(run, [])
    assert hparams["trainer.max_epochs"] == 3.0 and hparams["method"] == "ste"
    assert hparams["protocol.finetune_epochs"] == 10.0  # the saved config's: the second resume did not set it
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    for tag in ("test/acc", "protocol/binary"):
        assert max(acc.Scalars(tag), key=lambda e: e.step).value == pytest.approx(final[tag])
    events = [e for path in sorted((run / "tb").glob("events.out.tfevents.*")) for e in EventFileLoader(str(path)).Load()]
    finals = [e for path in sorted((run / "tb").glob("**/events.out.tfevents.*")) for e in EventFileLoader(str(path)).Load()]
    sessions = [v for e in finals for v in e.summary.value if v.tag == metadata.SESSION_START_INFO_TAG]
    assert len(sessions) == 1
    steps = [e.step for e in events for v in e.summary.value if v.tag == "test/acc"]
    assert steps == [4, 8, 12]  # each launch's test, once
    assert OmegaConf.load(run / "tb" / "hparams.yaml").config.trainer.max_epochs == 3
