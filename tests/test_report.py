"""binexp report: runs beside their experiments' published numbers; unfinished runs and their learning curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from binexp.report import DEFAULT_METRICS, ReportInputError, Run
from binexp.report.papers import other_choices, write_paper_table
from tests.conftest import compose_train

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))


def test_paper_table_sets_each_metric_beside_the_papers(tmp_path):
    paper = {"source": "SBN Table 1, CIFAR-10", "metrics": {"protocol/binary": 88.5}}
    runs = [
        Run(tmp_path / "sbn_bc", {"protocol/binary": 0.8564, "test/acc": 0.8736}, config={"paper": paper},
            overrides={"experiment": "sbn_table1_sbn_bc", "seed": "1", "trainer": "gpu", "dataset.root": "/data",
                       "callbacks.rich_progress_bar": "null",  # how the reproduce scripts log
                       "trainer.accelerator": "cpu", "trainer.precision": "32-true",  # where it ran: not the recipe
                       "callbacks.binarization.every_n_steps": "10"}),
        Run(tmp_path / "stopped", {"val/acc": 0.5}, config={"paper": paper}),
        Run(tmp_path / "no_paper", {"test/acc": 0.9}, config={"paper": None}),
        Run(tmp_path / "smoke", {"protocol/binary": 0.31}, config={"paper": paper},  # not the experiment's recipe
            overrides={"experiment": "sbn_table1_sbn_bc", "trainer.max_epochs": "2", "dataset.subset": "2000"}),
    ]
    assert write_paper_table(runs, tmp_path) == [tmp_path / "paper.csv"]
    assert (tmp_path / "paper.csv").read_text().splitlines() == [
        "run,source,metric,ours,paper,difference,changed",
        'sbn_bc,"SBN Table 1, CIFAR-10",protocol/binary,85.64,88.5,-2.86,',
        'stopped,"SBN Table 1, CIFAR-10",protocol/binary,,88.5,,',
        'smoke,"SBN Table 1, CIFAR-10",protocol/binary,31.0,88.5,-57.5,dataset.subset=2000 trainer.max_epochs=2',
    ]


def test_a_run_that_picked_another_method_is_not_set_beside_the_papers(tmp_path, capsys):
    """A sweep of methods over an experiment: only the run of the experiment's own method is the paper's row."""
    paper = {"source": "BMXNet Table 2, MNIST", "choices": {"dataset": "mnist", "method": "ste"},
             "metrics": {"test/acc": 99.3}}
    runs = [Run(tmp_path / name, {"test/acc": acc}, config={"paper": paper, "dataset": {"name": "mnist"},
                                                             "method": {"name": name}})
            for name, acc in [("ste", 0.9913), ("rsign", 0.9925)]]
    assert write_paper_table(runs, tmp_path) == [tmp_path / "paper.csv"]
    assert (tmp_path / "paper.csv").read_text().splitlines() == [
        "run,source,metric,ours,paper,difference,changed", "ste,\"BMXNet Table 2, MNIST\",test/acc,99.13,99.3,-0.17,"]
    assert ("rsign: not beside BMXNet Table 2, MNIST, whose numbers are for method=ste (the run: method=rsign)"
            in capsys.readouterr().out)


def test_no_paper_table_without_paper_numbers(tmp_path):
    assert write_paper_table([Run(tmp_path / "a", {"test/acc": 0.9}, config={})], tmp_path) == []
    assert not (tmp_path / "paper.csv").exists()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_an_experiments_paper_numbers_name_metrics_a_run_writes(experiment):
    paper = compose_train([f"experiment={experiment}"]).paper
    if paper is None:
        pytest.skip(f"{experiment} has no paper block")
    assert paper.source and len(paper.metrics) >= 1
    for metric, value in OmegaConf.to_container(paper.metrics).items():
        assert metric in DEFAULT_METRICS and 10 <= value <= 100, (experiment, metric, value)
    # its own run is set beside the numbers (a saved config: enum options as their names)
    saved = OmegaConf.to_container(compose_train([f"experiment={experiment}"]), resolve=False, enum_to_str=True)
    assert {"dataset", "architecture", "method"} <= set(saved["paper"]["choices"])
    assert other_choices(saved, saved["paper"]) == {}


def test_an_sbn_run_on_another_base_is_not_set_beside_the_papers_number_for_its_experiments_base():
    saved = OmegaConf.to_container(compose_train(["experiment=sbn_table1_sbn_bnn", "method.base=bc"]), resolve=False,
                                   enum_to_str=True)
    assert other_choices(saved, saved["paper"]) == {"method.base": "bc"}
    assert other_choices({"trainer": {}}, {"choices": {"trainer": "gpu"}}) == {"trainer": ""}  # a group with no name


def _unfinished_run(path: Path) -> Path:
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"task_name": "train"}), path / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(["method.t_clip=0.5"]), path / ".hydra" / "overrides.yaml")
    writer = SummaryWriter(str(path / "tb" / "version_0"))
    for epoch, (step, acc) in enumerate([(9, 0.5), (19, 0.625)]):
        writer.add_scalar("epoch", epoch, step)
        writer.add_scalar("val/acc", acc, step)
    writer.close()
    eval_hydra = path / "eval" / "2026-01-01" / ".hydra"  # `binexp eval` output: a Hydra folder that is not a run
    eval_hydra.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"run": str(path)}), eval_hydra / "config.yaml")
    return path


def test_report_lists_a_stopped_run_as_unfinished_with_its_learning_curve(tmp_path):
    from binexp.report import find_runs
    from binexp.report.learning import learning_curve, plot_learning_curves

    run = _unfinished_run(tmp_path / "sweep" / "0")
    [found] = find_runs([tmp_path / "sweep"])
    assert found.path == run.resolve() and not found.finished and found.overrides == {"method.t_clip": "0.5"}
    assert learning_curve(run) == [(1.0, 0.5), (2.0, 0.625)]
    writer_without_epochs = SummaryWriter(str(run / "tb" / "version_1"))
    writer_without_epochs.add_scalar("val/acc", 0.9, 99)  # no epoch counter at that step: left out, not drawn at x=99
    writer_without_epochs.close()
    assert learning_curve(run) == [(1.0, 0.5), (2.0, 0.625)]
    assert plot_learning_curves([found], tmp_path) == [tmp_path / "learning-curves.png"]
    assert (tmp_path / "learning-curves.png").stat().st_size > 0
    from binexp.report import report

    report([tmp_path / "sweep"], out=tmp_path / "out")
    header, row = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert header.endswith(",finished,path") and row.endswith(f",false,{tmp_path / 'sweep' / '0'}")


def _finished_run(path: Path, t_clip: str, acc: float) -> Path:
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"task_name": "train"}), path / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"method.t_clip={t_clip}"]), path / ".hydra" / "overrides.yaml")
    (path / "metrics.json").write_text(f'{{"test/acc": {acc}}}')
    return path


def test_two_sweeps_under_one_folder_keep_their_jobs_apart_in_numeric_order(tmp_path, capsys):
    from binexp.report import report

    for sweep, job, t_clip, acc in [("a", "0", "10", 0.3), ("a", "1", "0.5", 0.4), ("b", "0", "2.0", 0.45),
                                    ("b", "1", "null", 0.35)]:
        _finished_run(tmp_path / "sweeps" / sweep / job, t_clip, acc)
    runs, written = report([tmp_path / "sweeps"], out=tmp_path / "out")
    assert [(r.name, r.overrides["method.t_clip"]) for r in runs] == [
        ("a/1", "0.5"), ("b/0", "2.0"), ("a/0", "10"), ("b/1", "null")]
    assert runs[0].file_stem == "a_1"
    rows = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in rows] == ["method.t_clip", "0.5", "2.0", "10", "null"]
    assert [row.split(",")[-2] for row in rows] == ["finished", "true", "true", "true", "true"]
    assert [row.split(",")[0] for row in rows] == ["run", "a/1", "b/0", "a/0", "b/1"]  # the table's names
    # "null" is not a number: that run is left out of the plot, and the report says so
    assert written == [tmp_path / "out" / "report.csv", tmp_path / "out" / "accuracy-vs-method.t_clip.png"]
    assert ("accuracy-vs-method.t_clip.png leaves out the runs without a number for method.t_clip: b/1 "
            "(method.t_clip=null)") in capsys.readouterr().out
    with pytest.raises(ReportInputError, match=r"--metrics test/accc: in no run's metrics.json; they hold .*test/acc"):
        report([tmp_path / "sweeps"], out=tmp_path / "out", metrics=["test/acc", "test/accc"])


def test_report_refuses_a_missing_folder_an_unknown_metric_and_a_file_as_out_before_writing(tmp_path):
    from binexp.report import report

    _finished_run(tmp_path / "runs" / "a", "0.5", 0.4)
    with pytest.raises(ReportInputError, match=f"{tmp_path / 'nope'}: no such directory"):
        report([tmp_path / "nope", tmp_path / "runs"])  # a mistyped run is not just missing from the table
    (tmp_path / "t.sh").write_text("")
    with pytest.raises(ReportInputError, match=f"{tmp_path / 't.sh'}: not a directory"):
        report([tmp_path / "t.sh"])
    (tmp_path / "file").write_text("")
    with pytest.raises(ReportInputError, match=f"--out {tmp_path / 'file'}: exists and is not a directory"):
        report([tmp_path / "runs"], out=tmp_path / "file")
    with pytest.raises(ReportInputError, match=r"--metrics bogus: in no run's metrics.json; they hold test/acc"):
        report([tmp_path / "runs"], out=tmp_path / "out", metrics=["bogus"])
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs" / "report.csv").exists()
    _unfinished_run(tmp_path / "unfinished" / "0")  # a sweep in progress, none finished: tabulated as it stands
    report([tmp_path / "unfinished"], out=tmp_path / "out", metrics=["test/acc"])
    assert (tmp_path / "out" / "report.csv").read_text().splitlines()[1].split(",")[-2] == "false"


def test_a_run_reported_from_inside_its_folder_is_named_after_it(tmp_path, monkeypatch):
    from binexp.report import find_runs

    _finished_run(tmp_path / "ste_t05", "0.5", 0.4)
    monkeypatch.chdir(tmp_path / "ste_t05")
    [run] = find_runs([Path(".")])
    assert run.name == "ste_t05" and run.file_stem == "ste_t05"


def test_runs_that_are_siblings_keep_their_folder_names(tmp_path):
    from binexp.report import find_runs

    for name, t_clip in [("ste_t05", "0.5"), ("ste_t1", "1.0")]:
        _finished_run(tmp_path / name, t_clip, 0.5)
    runs = find_runs([tmp_path / "ste_t1", tmp_path / "ste_t05"])
    assert sorted(r.name for r in runs) == ["ste_t05", "ste_t1"]


def test_a_key_one_run_leaves_at_its_default_shows_the_configs_value(tmp_path):
    from binexp.report import Run, varying_overrides

    config = {"seed": 0, "method": {"name": "ste", "t_clip": None}}
    runs = [Run(tmp_path / "0", {}, {"method.t_clip": "1.0"}, config),
            Run(tmp_path / "1", {}, {"method.t_clip": "1.0", "seed": "1"}, config)]
    assert varying_overrides(runs) == ["seed"]
    assert [r.value("seed") for r in runs] == ["0", "1"]
    assert runs[0].value("method") == "" and runs[0].value("nope.key") == ""
    assert Run(tmp_path / "2", {}, {}, config).value("method.t_clip") == "null"
    # seed=null: the seed the run drew and wrote into its config, so runs of one setting are seeds apart
    drawn = [Run(tmp_path / str(i), {}, {"seed": "null"}, {**config, "seed": seed}) for i, seed in enumerate((17, 4))]
    assert [r.value("seed") for r in drawn] == ["17", "4"] and varying_overrides(drawn) == ["seed"]


def test_a_group_left_at_its_default_shows_the_option_composed_and_a_methods_own_schedule_varies(tmp_path):
    """One ABR run named architecture=lenet on the command line, one left it at its default, one fp run: the same
    architecture is not a difference, and the schedule ABR brought (two_phase, not fp's constant) is."""
    from binexp.report import load_run, report

    for job, overrides, method, schedule, acc in [
        ("0", ["method=abr", "architecture=lenet", "seed=0"], "abr", "two_phase", 0.89),
        ("1", ["method=abr", "seed=1"], "abr", "two_phase", 0.88),
        ("2", ["method=fp", "seed=0"], "fp", "constant", 0.90),
    ]:
        run = tmp_path / "runs" / job
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"task_name": "train", "seed": 0}), run / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
        choices = {"architecture": "lenet", "method": method, "schedule": schedule, "experiment": None,
                   "hydra/launcher": "basic"}
        OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), run / ".hydra" / "hydra.yaml")
        (run / "metrics.json").write_text(json.dumps({"test/acc": acc}))
    assert load_run(tmp_path / "runs" / "1").value("architecture") == "lenet"
    assert load_run(tmp_path / "runs" / "1").value("experiment") == ""
    runs, _ = report([tmp_path / "runs"], out=tmp_path / "out")
    header, *rows = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert header.split(",")[:4] == ["run", "method", "schedule", "seed"]
    assert [row.split(",")[1:4] for row in rows] == [["abr", "two_phase", "0"], ["abr", "two_phase", "1"],
                                                     ["fp", "constant", "0"]]
    over_seeds = (tmp_path / "out" / "report-over-seeds.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in over_seeds[1:]] == [["abr", "two_phase"], ["fp", "constant"]]


def test_a_resumed_runs_settings_are_its_first_launchs_with_the_last_resumes_on_top(tmp_path):
    """A resume starts again from the run's saved config, but for its length (last.ckpt carries max_epochs on): an
    earlier resume's protocol.finetune_epochs=2 was shown although the last launch, which wrote the metrics, ran 10."""
    from binexp.report import load_run

    run = _finished_run(tmp_path / "run", "0.5", 0.4)
    for stamp, items in [("2026-12-06_10-00-00", ["trainer.max_epochs=4", "protocol.finetune_epochs=2"]),
                         ("2026-12-06_11-00-00", ["method.t_clip=0.75"])]:
        (run / ".hydra" / f"resumed-{stamp}").mkdir()
        OmegaConf.save(OmegaConf.create([f"resume={run}", *items]), run / ".hydra" / f"resumed-{stamp}" / "overrides.yaml")
    assert load_run(run).overrides == {"method.t_clip": "0.75", "trainer.max_epochs": "4"}


def _seeded_runs(root: Path, settings: list[tuple[list[str], dict]]) -> Path:
    for job, (overrides, metrics) in enumerate(settings):
        run = root / str(job)
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"task_name": "train", "seed": 0}), run / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
        (run / "metrics.json").write_text(json.dumps(metrics))  # NaN as Python's json writes it, as train does
    return root


def test_runs_that_vary_the_seed_are_summarised_per_setting_and_plotted_as_means(tmp_path):
    from binexp.report import report, varying_overrides
    from binexp.report.sweeps import sweep_points

    sweep = _seeded_runs(tmp_path / "sweep", [
        (["method.t_clip=0.5"], {"test/acc": 0.40}),  # seed 0 from the config's default
        (["method.t_clip=0.5", "seed=1"], {"test/acc": 0.44}),
        (["method.t_clip=1.0", "seed=0"], {"test/acc": 0.42, "test/loss": float("nan")}),
        (["method.t_clip=1", "seed=1"], {"test/acc": 0.46, "test/loss": 1.5}),  # 1 and 1.0: one setting
        (["method.t_clip=2.0", "seed=0"], {"test/acc": 0.30, "test/loss": 2.0}),
    ])
    runs, written = report([sweep], out=tmp_path / "out")
    names = [p.name for p in written]
    assert "report-over-seeds.csv" in names and "accuracy-vs-method.t_clip.png" in names
    assert "accuracy-vs-seed.png" not in names and "accuracy-over-seeds.png" not in names  # t_clip is the x axis
    header, *rows = (tmp_path / "out" / "report-over-seeds.csv").read_text().splitlines()
    assert header == "method.t_clip,runs,seeds,test/acc_mean,test/acc_sd,test/acc_n,test/loss_mean,test/loss_sd,test/loss_n"
    cells = [row.split(",") for row in rows]
    assert [c[:3] for c in cells] == [["0.5", "2", "0 1"], ["1.0", "2", "0 1"], ["2.0", "1", "0"]]
    assert float(cells[0][3]) == pytest.approx(0.42) and float(cells[0][4]) == pytest.approx(0.0282842712)
    assert float(cells[1][3]) == pytest.approx(0.44) and cells[1][6:] == ["1.5", "", "1"]  # the NaN loss left out
    assert cells[2][3:6] == ["0.3", "", "1"] and cells[0][6:] == ["", "", "0"]  # one run: no sd; no loss: n=0
    [(label, points)] = sweep_points(runs, "method.t_clip", varying_overrides(runs), "test/acc").items()
    assert label == "test/acc" and [(x, round(s.mean, 6), round(s.sd or 0, 6), s.n) for x, s, _ in points] == [
        (0.5, 42.0, 2.828427, 2), (1.0, 44.0, 2.828427, 2), (2.0, 30.0, 0, 1)]


def test_seed_groups_follow_the_tables_order_and_methods_alone_get_a_side_by_side_plot(tmp_path):
    from binexp.report import report

    sweep = _seeded_runs(tmp_path / "sweep", [
        ([f"method={m}", f"trainer.max_epochs={e}", f"seed={s}"], {"test/acc": acc})
        for m, e, s, acc in [("ste", "10", "0", 0.5), ("ste", "10", "1", 0.6), ("ste", "5", "0", 0.4),
                             ("ste", "5", "1", 0.45), ("bnn", "5", "0", 0.3)]
    ])
    _, written = report([sweep], out=tmp_path / "out")
    rows = (tmp_path / "out" / "report-over-seeds.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:3] for r in rows] == [["bnn", "5", "1"], ["ste", "5", "2"], ["ste", "10", "2"]]
    pngs = [p.name for p in written if p.suffix == ".png"]
    assert "accuracy-vs-trainer.max_epochs.png" in pngs and "accuracy-over-seeds.png" not in pngs

    methods_only = _seeded_runs(tmp_path / "methods", [
        ([f"method={m}", f"seed={s}"], {"test/acc": acc}) for m, s, acc in [("ste", "0", 0.5), ("ste", "1", 0.6),
                                                                          ("approx_sign", "0", 0.55)]])
    _, written = report([methods_only], out=tmp_path / "out2")
    assert [p.name for p in written if p.suffix == ".png"][:1] == ["accuracy-over-seeds.png"]


def test_no_seed_summary_when_the_seed_does_not_vary_or_no_setting_has_two(tmp_path):
    from binexp.report import Run
    from binexp.report.seeds import group_over_seeds

    def run(name, t_clip, seed):
        return Run(tmp_path / name, {"test/acc": 0.5}, {"method.t_clip": t_clip, "seed": seed})

    assert group_over_seeds([run("a", "0.5", "0"), run("b", "1.0", "0")], ["method.t_clip"]) == []
    assert group_over_seeds([run("a", "0.5", "0"), run("b", "1.0", "1")], ["method.t_clip", "seed"]) == []
    [group] = group_over_seeds([run("a", "0.5", "0"), run("b", "0.5", "1")], ["seed"])
    assert group.setting == {} and group.seeds == ["0", "1"]


def test_a_sweep_stopped_before_some_jobs_names_them(tmp_path, capsys):
    """A Ctrl-C in job 1 of a 2 x 2 sweep: jobs 2 and 3 never got a folder; the report says so."""
    from binexp.report import never_started, report

    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        _finished_run(sweep / job, "0.5", 0.4)
    hydra = {"sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}"}, "sweeper": {"params": None},
             "overrides": {"task": ["method=fp,ste", "seed=0,1", "trainer.max_epochs=2"]}}
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), sweep / "multirun.yaml")
    assert never_started(sweep) == [2, 3]
    report([sweep], out=tmp_path / "out")
    assert (f"sweep {sweep}: jobs 2, 3 never started (the sweep stopped before them, or was refused at the first of "
            f"them: the sweep's output has the error); its command again with hydra.sweep.dir={sweep} runs them"
            ) in capsys.readouterr().out.replace("\n", "")
    hydra["sweeper"]["params"] = {"seed": "0,1"}  # a sweep this count does not expand: no claim
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), sweep / "multirun.yaml")
    assert never_started(sweep) == []


def test_the_printed_table_keeps_small_values_and_whole_headers_in_a_pipe(tmp_path, capsys):
    from binexp.report import print_table

    metrics = ["protocol/phase1_binary", "protocol/binary", "protocol/fixed_bn_flips", "test/acc", "test/loss"] * 3
    run = Run(tmp_path / "0", {"protocol/fixed_bn_flips": 3.08e-05, "protocol/binary": 0.5, "test/acc": 0.0})
    print_table([run], ["method.t_clip"], metrics)
    out = capsys.readouterr().out
    assert "3.08e-05" in out and "0.5000" in out and "0.0000" in out
    assert out.count("protocol/phase1_binary") == 3 and "…" not in out


def test_the_cli_prints_a_report_error_as_the_other_tasks_do(tmp_path, capsys):
    from binexp.cli import main

    with pytest.raises(SystemExit) as raised:
        main(["report", str(tmp_path / "nope")])
    assert raised.value.code == 2
    assert capsys.readouterr().err == f"binexp: error: {tmp_path / 'nope'}: no such directory (give run or multirun directories)\n"


def test_one_value_spelt_two_ways_is_one_setting(tmp_path, capsys):
    """A sweep's job records `false` as False and 1e-2 as 0.01; a run launched alone keeps what was typed; a run that
    left the key at its default shows the config's True/False: all one setting in the tables, the CSVs and the plot."""
    from binexp.report import canonical, report, varying_overrides
    from binexp.report.sweeps import sweep_points

    assert [canonical(t) for t in ("False", "TRUE", "NULL", "1e-2", "0.01", "1.0", "+3", "1_000", "nan", "none")] == [
        "false", "true", "null", "0.01", "0.01", "1.0", "3", "1000", "nan", "none"]
    sweep = _seeded_runs(tmp_path / "runs", [
        (["method.binarize_first=False", "optimizer.lr=0.01", "method.t_clip=0.5", "seed=0"], {"test/acc": 0.40}),
        (["method.binarize_first=false", "optimizer.lr=1e-2", "method.t_clip=0.5", "seed=1"], {"test/acc": 0.44}),
        (["optimizer.lr=0.01", "method.t_clip=1.0", "seed=0"], {"test/acc": 0.50}),
        (["optimizer.lr=1e-2", "method.t_clip=1.0", "seed=1"], {"test/acc": 0.60}),
    ])
    for job in ("2", "3"):  # binarize_first left at its default, False in the composed config
        OmegaConf.save(OmegaConf.create({"task_name": "train", "seed": 0, "method": {"binarize_first": False}}),
                       sweep / job / ".hydra" / "config.yaml")
    runs, _ = report([sweep], out=tmp_path / "out")
    assert varying_overrides(runs) == ["method.t_clip", "seed"]
    rows = (tmp_path / "out" / "report-over-seeds.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:3] for r in rows] == [["0.5", "2", "0 1"], ["1.0", "2", "0 1"]]
    lines = sweep_points(runs, "method.t_clip", varying_overrides(runs), "test/acc")
    assert [(x, round(s.mean, 6), s.n) for x, s, _ in lines["test/acc"]] == [(0.5, 42.0, 2), (1.0, 55.0, 2)]


def test_a_seeds_run_found_twice_counts_once_and_is_named(tmp_path, capsys):
    from binexp.report import report, varying_overrides
    from binexp.report.sweeps import sweep_points

    for sweep, settings in [("a", [("0.5", "0", 0.40), ("0.5", "1", 0.50)]), ("b", [("0.5", "0", 0.40), ("1.0", "0", 0.3)])]:
        _seeded_runs(tmp_path / "runs" / sweep, [([f"method.t_clip={t}", f"seed={s}"], {"test/acc": acc})
                                                 for t, s, acc in settings])
    runs, _ = report([tmp_path / "runs"], out=tmp_path / "out")
    rows = (tmp_path / "out" / "report-over-seeds.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:6] for r in rows] == [["0.5", "2", "0 1", "0.45", "0.07071067811865474", "2"],
                                                ["1.0", "1", "0", "0.3", "", "1"]]
    assert "method.t_clip=0.5: b/0 repeats seed 0 of a/0; the statistics over seeds count a/0 only" in (
        capsys.readouterr().out.replace("\n", ""))
    points = sweep_points(runs, "method.t_clip", varying_overrides(runs), "test/acc")["test/acc"]
    assert [(x, s.n) for x, s, _ in points] == [(0.5, 2), (1.0, 1)]


def test_the_seed_table_keeps_small_values_and_whole_headers_in_a_pipe(tmp_path, capsys):
    from binexp.report.seeds import SeedGroup, print_seed_table

    runs = [Run(tmp_path / str(i), {"protocol/fixed_bn_flips": v, "protocol/binary_bn_reestimated": 0.5}, {"seed": str(i)})
            for i, v in enumerate((3e-5, 5e-5))]
    print_seed_table([SeedGroup({"method.t_clip": "0.5"}, runs)], ["protocol/fixed_bn_flips", "protocol/binary_bn_reestimated"] * 6)
    out = capsys.readouterr().out
    assert "4e-05 ± 1.41e-05" in out and "0.5000 ± 0" in out
    assert out.count("protocol/binary_bn_reestimated") == 6 and "…" not in out


def test_report_names_an_unreadable_metrics_file_and_an_out_path_under_a_file(tmp_path):
    from binexp.report import report

    run = _finished_run(tmp_path / "run", "0.5", 0.4)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ReportInputError, match=r"^--out .*afile/sub: cannot be made a directory \(Not a directory"):
        report([run], out=tmp_path / "afile" / "sub")
    (run / "metrics.json").write_text('{"test/acc": ')
    with pytest.raises(ReportInputError, match=r"run/metrics.json: not readable as JSON \(Expecting value"):
        report([run], out=tmp_path / "out")


def test_a_probe_of_a_method_outside_binexp_is_drawn_with_its_own_columns(tmp_path):
    """Its columns fell through to ABR's kind: binary90/99/999 were not there and the report ended in a traceback."""
    from binexp.report import report
    from binexp.report.curves import curve_kind, read_curves

    run = _finished_run(tmp_path / "run", "0.5", 0.4)
    (run / "binarization.csv").write_text("step,epoch,layer,a,saturated\n0,0,fc1,1,0.5\n4,0,fc1,3,0.75\n8,1,fc1,9,0.9\n")
    kind = curve_kind(read_curves(run / "binarization.csv")["fc1"])
    assert [key for key, _ in kind.last] == ["a", "saturated"] and kind.per_layer == "a" and not kind.percent
    _, written = report([run], out=tmp_path / "out")
    assert {"run-binarization.png", "run-binarization-layers.png"} <= {p.name for p in written}


def test_the_protocols_measures_at_any_schedules_milestone_are_tabulated():
    from binexp.report import default_metrics

    run = Run(Path("r"), {"test/acc": 0.5, "protocol/ramp_binary": 0.4, "protocol/ramp_regular": 0.45,
                          "protocol/binary": 0.41, "size/bytes_binary": 10.0, "protocol/fixed_bn_flips": 0.0})
    assert default_metrics([run]) == ["test/acc", "protocol/binary", "protocol/fixed_bn_flips", "protocol/ramp_binary",
                                      "protocol/ramp_regular", "size/bytes_binary"]


def test_a_settings_statistics_over_three_seeds_are_the_mean_and_the_sample_sd():
    from binexp.report.seeds import summarize

    s = summarize([0.1, 0.2, 0.6, float("nan")])  # a median or a population sd would differ with three values
    assert (s.mean, s.n) == (pytest.approx(0.3), 3) and s.sd == pytest.approx(0.2645751311)


def test_figure_2_draws_the_last_activation_layer_where_the_run_binarizes_activations():
    from binexp.report.curves import figure_layer

    # SBN on BNN: the classifier's weights come last, the firing matrix is fc2.act's
    assert figure_layer({"conv1.weight": {}, "conv1.act": {}, "fc2.weight": {}, "fc2.act": {}, "fc3.weight": {}}) == "fc2.act"
    assert figure_layer({"conv1.weight": {}, "fc3.weight": {}}) == "fc3.weight"  # SBN on BC: weights only
    assert figure_layer({"conv1": {}, "fc1": {}}) == "fc1"  # ABR


def test_a_setting_holding_an_interpolation_is_drawn_as_text(tmp_path):
    """One ABR run with phase1_epochs at its default (`${floordiv:...}` in its config) and one with 1: the label's `$`
    made matplotlib parse math, and the report ended in a traceback."""
    from binexp.report import report

    for job, (t_clip, phase1, acc) in enumerate([("0.5", None, 0.40), ("1.0", None, 0.42), ("0.5", "1", 0.44),
                                                 ("1.0", "1", 0.46)]):
        run = tmp_path / "sweep" / str(job)
        (run / ".hydra").mkdir(parents=True)
        config = {"task_name": "train", "seed": 0, "method": {"t_clip": float(t_clip)},
                  "schedule": {"phase1_epochs": "${floordiv:${trainer.max_epochs},2}" if phase1 is None else 1}}
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        overrides = [f"method.t_clip={t_clip}", *([f"schedule.phase1_epochs={phase1}"] if phase1 else [])]
        (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
        (run / "metrics.json").write_text(json.dumps({"test/acc": acc}))
    _, written = report([tmp_path / "sweep"], out=tmp_path / "out")
    assert "accuracy-vs-method.t_clip.png" in {p.name for p in written}
