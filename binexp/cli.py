"""`binexp <task> [overrides]`: the first word picks the task, the rest goes to that task's Hydra app.

Hydra has no subcommands, so this module dispatches: `train` and `eval` are Hydra apps over the config
tree shipped as the package `binexp.conf` (the repository's top-level `conf/`); `report`, `export` and `verify`
read existing runs and take plain arguments.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import sys
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

CONFIG_PATH = "pkg://binexp.conf"
SEARCHPATH = "hydra.searchpath"  # the override that adds config folders (a method kept outside binexp)

TASKS = {
    "train": "train a model: binexp train [group=option] [key=value] (-m for sweeps, --help for groups)",
    "eval": "evaluate a run's checkpoint on the test set: binexp eval run=<run dir> [ckpt=last|best|binary_weights|bn_reestimated|<path>] [protocol=true]",
    "report": "tabulate and plot runs or sweeps: binexp report <run or multirun dir ...> [--out DIR]",
    "export": "write a run's step-function model, bit-packed: binexp export <run dir> [ckpt=last|best|binary_weights|bn_reestimated|<path>] [out=<file or dir>]",
    "verify": "check an export against the trained network on the test set: binexp verify <file> [dataset.root=...]",
}


def _fail(message: str) -> None:
    """A command line binexp cannot start from: the message, no traceback, exit status 2 (as for bad config)."""
    print(f"binexp: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _print_help() -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="binexp <task> [hydra overrides]", show_header=False, box=None)
    for name, text in TASKS.items():
        table.add_row(f"[bold]{name}[/bold]", escape(text))
    Console().print(table)


def _config_groups() -> set[str]:
    from importlib.resources import files

    return {p.name for p in files("binexp.conf").iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")}


def _resume_args(args: list[str]) -> list[str]:
    """`resume=<dir>` re-composes the run's saved config (not today's defaults) into the same directory."""
    value = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if value is None or value == "null":
        return args
    if not value.strip():  # an unset shell variable: not a new run with today's defaults
        _fail("resume=: empty; resume takes a run directory made by `binexp train` (resume=logs/train/runs/<time>)")
    from binexp.errors import ConfigError
    from binexp.evaluate import load_run_config

    run_dir = Path(value).resolve()
    saved = run_dir / ".hydra" / "config.yaml"
    try:
        run_cfg = load_run_config(run_dir, key="resume")
    except ConfigError as err:
        _fail(str(err))
    rest = [a for a in args if not a.startswith("resume=")]
    for arg in rest:  # later on Hydra's command line, they would win over the folder the resume continues in
        name, _, given = arg.partition("=")
        key = name.lstrip("+~")
        if key == "hydra.output_subdir" or (key == "hydra.run.dir" and Path(given).resolve() != run_dir):
            _fail(f"{arg}: resume={value} continues the run in its own folder ({run_dir}); to continue it elsewhere, "
                  f"copy the folder there and resume the copy")
    groups = _config_groups()
    for arg in rest:
        name, sep, _ = arg.partition("=")
        if sep and name in groups:
            _fail(f"{arg}: resume={value} continues the run's own config, whose group choices are fixed; override "
                  f"its keys instead ({name}.<key>=<value>), or start a new run")
    from binexp.config import check_override_keys
    from binexp.train import check_resume_overrides

    dotted = [a for a in rest if "=" in a and not a.startswith(("-", "+", "~", "hydra."))]
    try:  # a typo would get Hydra's "To append to your config use +key", which only hides it
        check_override_keys(run_cfg, dotted, f"the config of {run_dir}")
        check_resume_overrides([a for a in rest if "=" in a and not a.startswith("-")], run_dir, run_cfg)
    except ConfigError as err:
        _fail(str(err))
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return [
        "--config-dir", str(saved.parent), "--config-name", "config",
        f"resume={run_dir}", f"hydra.run.dir={run_dir}", f"hydra.output_subdir=.hydra/resumed-{stamp}",
        "hydra.job.name=train",  # the log goes on in train.log (the saved config has no hydra section)
        *rest,
    ]


def _check_override_keys(args: list[str]) -> None:
    """A dotted override of a key no config has fails with the keys that are there. Hydra's own message names the
    key but suggests `+key=...`, which only moves the error to instantiation. The overrides are composed once
    here, each sweep at its first value; any other composition error is left for Hydra to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, OverrideParseException

    from binexp.config import compose_train

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return  # --help, --cfg, --config-dir, ...: Hydra's own business
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except OverrideParseException:
        return
    # as Hydra composes a sweep before its jobs: swept groups at their default option; swept keys at their first
    # value (Hydra leaves them out there, but each job sets them), except the swept keys of a swept group, which
    # only its swept options may have (each job checks them)
    swept_groups = {o.key_or_group for o in parsed if o.is_sweep_override() and "." not in o.key_or_group}

    def tried(o) -> bool:
        group = o.key_or_group.partition(".")[0]
        if o.key_or_group == SEARCHPATH:  # the config folders a method kept outside binexp composes from
            return True
        return not o.key_or_group.startswith("hydra") and group not in swept_groups or (
            "." in o.key_or_group and group in swept_groups and not o.is_sweep_override() and not o.is_add())

    from hydra.core.override_parser.types import IntervalSweep

    for o in parsed:
        if isinstance(o.value(), IntervalSweep) and not any(a.startswith("hydra/sweeper=") for a in args):
            # Hydra's own refusal is a traceback once the sweep has begun
            _fail(f"{o.input_line}: Hydra's basic sweeper takes lists, range(...) and choice(...); interval(...) is "
                  f"for a sweeper that samples (Optuna's, Nevergrad's); give the values as a list")
    for o in parsed:
        if o.is_sweep_override() and not isinstance(o.value(), IntervalSweep) and _sweep_values_or_none(o, parsed) == []:
            # Hydra's basic sweeper would launch no job and exit 0, as if the sweep had run
            _fail(f"{o.input_line}: the sweep has no values, so it would launch no job; give at least one value")
    try:
        trial = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
                 else o.input_line for o in parsed if tried(o)]
    except Exception:  # a sweep without a first value to try (interval(...), an empty range): Hydra's business
        return
    if any(o.key_or_group == "run_dir" for o in parsed):
        # Hydra writes .hydra/ and train.log to its output folder: a run_dir elsewhere would split the run in two
        _fail("run_dir: the run directory is Hydra's output folder; choose it with hydra.run.dir=<dir> "
              "(hydra.sweep.dir=<dir> for a sweep)")
    try:
        shared = compose_train(trial)
    except ConfigCompositionException as err:
        match = re.match(r"Could not override '([^']+)'.\nTo append to your config use", str(err))
        refused = _refused_deletion(parsed, trial)
        if refused:
            _fail(refused)
        if match is None:  # Hydra's own report is a traceback (`key=${nope}`, `~seed`)
            _fail(_composition_message(err))
        key = match[1]
        try:
            cfg = compose_train([t for t in trial if t.partition("=")[0] != key])
        except ConfigCompositionException:
            return
        parent = key.rpartition(".")[0]
        while parent and not OmegaConf.is_dict(OmegaConf.select(cfg, parent)):
            parent = parent.rpartition(".")[0]  # the deepest part of the key that is there
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = ", ".join(sorted(str(k) for k in node if not str(k).startswith("_")))
        group = key.partition(".")[0]
        if group in swept_groups:
            value = next(t for t in trial if t.partition("=")[0] == key).partition("=")[2]
            _fail(f"{key}: the default {group} has no such key (its keys: {keys}), and a sweep is composed with it "
                  f"before its jobs; give a key of the swept options as a one-value sweep: '{key}=choice({value})'")
        _fail(f"{key}: no such key (the keys under {parent or 'the top level'}: {keys})")
    except Exception as err:  # not a ConfigCompositionException: Hydra would end in its traceback
        _fail(_uncomposable(err, parsed))
    _check_deletions_names_and_interpolations([o for o in parsed if tried(o)], shared)
    for group in ("method", "schedule"):  # messages, records and exports name the option by it
        node = OmegaConf.select(shared, group)
        if OmegaConf.is_dict(node) and not isinstance(node.get("name"), str):
            _fail(f"{group}.name: missing in the {group}'s config file; an option names itself there, e.g. "
                  f"`name: <the file's name>` beside its _target_")
    _check_added_keys([o for o in parsed if tried(o) and o.is_add()], trial, shared)
    _check_sweep_values(parsed, trial, shared, swept_groups, tried)
    if any(o.key_or_group == "hydra/launcher" and o.value() == "slurm" for o in parsed):
        for key, asks in (("trainer.devices", "GPUs and tasks per node"), ("trainer.num_nodes", "nodes")):
            value = OmegaConf.select(shared, key)
            if not isinstance(value, int) or isinstance(value, bool):  # submitit's schema would end in a traceback
                _fail(f"{key}={value}: hydra/launcher=slurm asks SLURM for {key} {asks}; give a number "
                      f"({key}=4)")
    from dataclasses import fields

    from binexp.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    unread = sorted({o.key_or_group for o in parsed if o.is_add() and "." not in o.key_or_group}
                    - known - _config_groups() - {"hydra"})
    if unread:  # a top-level key nothing reads: Hydra adds it and the run ignores it
        _fail(f"+{unread[0]}: not a key binexp reads (the top-level keys: {', '.join(sorted(known))})")


ADDABLE = ("callbacks", "logger")  # dicts of objects: `+callbacks.<new name>._target_=...` adds one


# what every run reads: deleting one (`~method`) ended in a traceback once the job started
REQUIRED = ("dataset", "architecture", "method", "schedule", "optimizer", "trainer", "seed", "task_name", "run_dir",
            "paths", "existing_run", "resume", "channels_last")
# the option's own name, which messages, records and exports give it: `method=bnn method.name=xnor` exported a BNN
# as xnor
NAMED = ("dataset", "architecture", "method", "schedule")


def _check_deletions_names_and_interpolations(parsed, cfg) -> None:
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    for o in parsed:
        key = o.key_or_group
        if o.is_delete() and key in REQUIRED:
            _fail(f"~{key}: every run needs {key}" + (f"; choose one of its options ({key}=<option>)"
                                                       if key in _config_groups() else ""))
        if not o.is_delete() and key.count(".") == 1 and key.partition(".")[2] == "name" and key.partition(".")[0] in NAMED:
            group = key.partition(".")[0]
            _fail(f"{key}: the name of the chosen {group} option (messages, records and exports call it so); choose "
                  f"another option with {group}=<option>")
        if key == "task_name":
            _fail(f"{o.input_line}: task_name is the task's own (train or eval: its log file, train.log, and its "
                  f"records are named by it); it cannot be set")
        if "${" in o.input_line and not o.is_delete():
            try:
                OmegaConf.select(cfg, key.replace("/", "."), throw_on_missing=True)
            except (InterpolationResolutionError, MissingMandatoryValue) as err:
                if "HydraConfig was not set" not in str(err):  # Hydra's own, resolved as the job runs
                    _fail(f"{o.input_line}: {str(err).splitlines()[0]}")


def _check_added_keys(added, trial: list[str], cfg) -> None:
    """A `+a.b=v` that nothing would read is refused: Hydra adds it to any node, but only a node with a `_target_`
    hands its keys to a class (which `binexp.builder` checks them against); anywhere else (protocol.*, paths.*,
    dataset.augment.*, lr_scheduler.*) the key would sit in the config unread. New entries of the callbacks and
    logger dicts are objects of their own: they need a `_target_`."""
    from binexp.config import compose_train

    dotted = [o for o in added if "." in o.key_or_group and not o.key_or_group.startswith("hydra")]
    if not dotted:
        return
    before = compose_train([t for t in trial if not t.startswith("+")])
    for o in dotted:
        key = o.key_or_group
        top, _, rest = key.partition(".")
        name = rest.partition(".")[0]
        if top in ADDABLE and OmegaConf.select(before, f"{top}.{name}") is None:
            entry = OmegaConf.select(cfg, f"{top}.{name}")
            if not (OmegaConf.is_dict(entry) and "_target_" in entry):
                _fail(f"+{key}: a new entry of {top} is an object to build; give its class first: "
                      f"'+{top}.{name}._target_=<module.Class>'")
            continue
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent)
        if OmegaConf.is_dict(node) and "_target_" in node:
            continue  # checked against the class's parameters when it is built
        there = OmegaConf.select(before, parent)
        keys = sorted(str(k) for k in there if not str(k).startswith("_")) if OmegaConf.is_dict(there) else []
        _fail(f"+{key}: {parent} has no key {key.rpartition('.')[2]!r} and nothing would read one"
              + (f" (its keys: {', '.join(keys)})" if keys else ""))


def _refused_deletion(parsed, trial: list[str]) -> str | None:
    """Why Hydra could not apply a `~a.b` (its own message says a schema key that is null "does not exist"), or
    None: a key of binexp's schemas cannot be deleted, nor one whose value is an interpolation."""
    from hydra.errors import ConfigCompositionException

    from binexp.config import compose_train

    deletions = [o for o in parsed if o.is_delete() and "." in o.key_or_group]
    if not deletions:
        return None
    try:
        cfg = compose_train([t for t in trial if not t.startswith("~")])
    except ConfigCompositionException:
        return None
    for o in deletions:
        parent_key, _, name = o.key_or_group.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key)
        if not OmegaConf.is_dict(parent) or name not in parent:
            continue
        if OmegaConf.get_type(parent) is not dict:
            return (f"~{o.key_or_group}: a key of binexp's schema for {parent_key}, which cannot be deleted; set its "
                    f"value instead ({o.key_or_group}=...)")
        if OmegaConf.is_interpolation(parent, name):
            raw = OmegaConf.to_container(parent, resolve=False)[name]
            return f"~{o.key_or_group}: its value is an interpolation ({raw}), which Hydra cannot delete; set a value instead"
    return None


def _uncomposable(err: Exception, parsed) -> str:
    """One line for a composition error Hydra raises without a message of its own (`lr_scheduler=null`)."""
    keyless = [o for o in parsed if not o.key_or_group]
    if keyless:
        return f"{keyless[0].input_line}: an override needs a key (key=value)"
    papers = [o for o in parsed if o.key_or_group.startswith("paper.")]
    if papers and not any(o.key_or_group == "experiment" for o in parsed):  # paper is null until an experiment sets it
        return (f"{papers[0].input_line}: paper holds the published numbers an experiment reproduces, set with it "
                f"(experiment=<name>); it cannot be set on its own")
    groups = _config_groups()
    nulled = [o.key_or_group for o in parsed if o.key_or_group in groups and not o.is_delete()
              and o.value() is None]
    if nulled:
        return (f"{nulled[0]}=null: a config group takes one of its options; to leave {nulled[0]} out, "
                f"delete it: '~{nulled[0]}'")
    line = (str(err).strip().splitlines() or [""])[0]
    return f"the overrides {' '.join(o.input_line for o in parsed)} do not compose: {type(err).__name__}: {line}"


def _check_sweep_values(parsed, trial: list[str], shared, swept_groups: set[str], tried) -> None:
    """Every job of a sweep is composed and checked as a job checks its config before training, before the first
    job starts: Hydra composes each job only when it launches, so a bad last job would end the sweep after the
    others had trained. A sweep of more than SWEEP_JOBS_CHECKED jobs has each of its values checked instead, with
    the other sweeps at their first value."""
    from hydra.errors import ConfigCompositionException

    from binexp.config import compose_train
    from binexp.errors import user_error

    sweeps = [o for o in parsed if o.is_sweep_override()]
    if not sweeps:
        return
    here = not any(o.key_or_group == "hydra/launcher" and o.value() != "basic" for o in parsed)  # jobs on this machine
    try:  # `shared`: the overrides every job has, composed
        _check_job(shared, here)
    except Exception as raised:  # an error of the values every job shares: as a single run would report it
        err = user_error(raised)
        if err is None:
            return
        _fail(str(err))
    try:
        values = [[f"{o.get_key_element()}={v}" for v in _sweep_strings(o, parsed)] for o in sweeps]
    except Exception:  # values only the sweeper can list
        values = None
    if values is not None and math.prod(len(v) for v in values) <= SWEEP_JOBS_CHECKED:
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()
                 and (not o.key_or_group.startswith("hydra") or o.key_or_group == SEARCHPATH)]
        jobs = [([*fixed, *job], f"(the sweep's job {' '.join(job)}; no job was started)")
                for job in itertools.product(*values)]
    else:
        jobs = [(job, f"(the sweep's value {job[-1]}, the other sweeps at their first value; no job was started)")
                for o in sweeps if tried(o) or o.key_or_group in swept_groups
                for job in _one_sweep_at_a_time(o, parsed, trial, swept_groups)]
    for job, where in jobs:
        try:
            cfg = compose_train(job)
        except ConfigCompositionException as err:
            _fail(f"{_composition_message(err)} {where}")
        try:
            _check_job(cfg, here)
        except Exception as raised:
            err = user_error(raised)
            if err is None:
                raise
            _fail(f"{str(err).splitlines()[0]} {where}")


SWEEP_JOBS_CHECKED = 64  # about 0.15 s each


def _sweep_strings(o, parsed) -> list[str]:
    """A sweep's values as Hydra's basic sweeper lists them; `glob(...)` over a group's options, binexp's and those
    of the `hydra.searchpath` folders (the sweeper expands it only as it launches, so its jobs went unchecked)."""
    from hydra.core.override_parser.types import Glob

    value = o.value()
    if not isinstance(value, Glob):
        return list(o.sweep_string_iterator())
    from importlib.resources import files

    group = o.key_or_group
    options = {p.name[:-5] for p in files("binexp.conf").joinpath(group).iterdir() if p.name.endswith(".yaml")}
    for item in parsed:
        if item.key_or_group == SEARCHPATH:
            for folder in item.value() or []:
                path = Path(str(folder).removeprefix("file://")) / group
                options |= {p.stem for p in path.glob("*.yaml")} if path.is_dir() else set()
    return value.filter(sorted(options))


def _sweep_values_or_none(o, parsed) -> list[str] | None:
    """`o`'s sweep values, or None where they cannot be listed here (Hydra reports those itself)."""
    try:
        return _sweep_strings(o, parsed)
    except Exception:
        return None


def _one_sweep_at_a_time(o, parsed, trial: list[str], swept_groups: set[str]):
    """The overrides of `o`'s values, each with the other sweeps at their first value (the swept value last)."""
    values = _sweep_values_or_none(o, parsed)
    if values is None:
        return
    key = o.get_key_element()
    rest = [t for t in trial if t.partition("=")[0] != key]
    if o.key_or_group in swept_groups:  # each option with the first values of its own keys' sweeps
        rest += [f"{k.get_key_element()}={next(iter(k.sweep_string_iterator()), '')}" if k.is_sweep_override()
                 else k.input_line for k in parsed
                 if k.key_or_group.startswith(f"{key}.") and (k.is_sweep_override() or k.is_add())]
    for value in values:
        yield [*rest, f"{key}={value}"]


def _check_job(cfg, on_this_machine: bool) -> None:
    """What `train` checks of a config before it trains: value ranges, the trainer (its fit to this machine only for
    jobs that run on it), method, schedule and protocol, and the dataset's and the architecture's own checks (the
    network built on the meta device: no memory, no init cost; for a dataset whose image size only its files tell,
    the architecture is left to the job)."""
    from binexp.builder import build
    from binexp.models import check_input_fits
    from binexp.protocol import protocol_config
    from binexp.ranges import check_ranges
    from binexp.train import build_method, build_schedule, check_trainer

    check_ranges(cfg)
    check_trainer(cfg.trainer, on_this_machine)
    method = build_method(cfg)
    build_schedule(cfg, method)
    protocol_config(cfg)
    declared = build(cfg.dataset).declared_shape()
    if declared is not None:
        check_input_fits(cfg.architecture, lambda: build_method(cfg), *declared)


def _composition_message(err: Exception) -> str:
    """Hydra's composition error in one line: its first line (a type error's, where Hydra wraps one, after the key)
    and the options of the group when an option was not found."""
    cause = err.__cause__ if isinstance(err.__cause__, Exception) and str(err.__cause__) else err
    lines = str(cause).splitlines()
    key = getattr(cause, "full_key", None)
    message = f"{key}: {lines[0].strip()}" if key else lines[0].strip()
    if message.startswith("Could not append to config"):  # the next two lines say what to write instead
        message = " ".join(line.strip() for line in lines[:3])
    for i, line in enumerate(lines):
        if line.startswith("Available options in "):
            options = []
            for option in lines[i + 1:]:
                if not option.startswith("\t"):
                    break
                options.append(option.strip())
            message += f"; {line.rstrip(':').replace('Available options in', 'the options of')}: {', '.join(options)}"
    return message


def _check_launcher_installed(args: list[str]) -> None:
    """hydra/launcher=slurm needs a plugin the base install leaves out; Hydra's own message does not say which."""
    import importlib.util

    try:
        installed = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ModuleNotFoundError:  # no hydra_plugins package at all
        installed = False
    if "hydra/launcher=slurm" in (a.lstrip("+~") for a in args) and not installed:
        _fail("hydra/launcher=slurm needs Hydra's submitit launcher, which is not installed: pip install -e '.[cluster]' "
              "(or pip install hydra-submitit-launcher)")


def _check_output_dirs(args: list[str]) -> None:
    """A run or sweep folder that is a file: Hydra's makedirs would end in a FileExistsError traceback."""
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and "${" not in value and Path(value).exists() and not Path(value).is_dir():
            _fail(f"{key}={value}: is a file; give a directory (made if it does not exist)")


def _check_eval_args(args: list[str]) -> None:
    """`run=` names a run directory that exists, checked before Hydra makes `<run>/eval/<time>/` in it."""
    if any(a in ("-h", "--help", "--hydra-help", "--info") or a.startswith("--cfg") for a in args):
        return
    from dataclasses import fields

    from binexp.evaluate import EvalConfig

    options = [f.name for f in fields(EvalConfig)]
    for arg in args:
        key = arg.partition("=")[0].lstrip("+~")
        if not arg.startswith("-") and not key.startswith(("hydra.", "hydra/")) and key.partition(".")[0] not in options:
            _fail(f"{arg}: eval takes {', '.join(f'{o}=' for o in options)} (keys of the run's own config go in "
                  f"'run_overrides=[\"key=value\"]')")
    for arg in args:
        value = arg.partition("=")[2]
        if arg.startswith("run_overrides=[") and "=" in value and not any(q in value for q in "\"'"):
            # Hydra's grammar error ("no viable alternative at input") does not say what is wrong
            _fail(f"{arg}: quote each override inside the list: 'run_overrides=[\"key=value\", ...]'")
    value = next((a.split("=", 1)[1] for a in args if a.startswith("run=")), None)
    if value is None:
        _fail("eval needs run=<run dir>, a directory made by `binexp train`")
    saved = Path(value) / ".hydra" / "config.yaml"
    if not saved.exists():
        _fail(f"run={value}: {saved} not found; `run` takes a directory made by `binexp train`")


@contextmanager
def _help_lists_searchpath(args: list[str]):
    """Hydra's `--help` lists the options of its starting search path only, not those a `hydra.searchpath=[...]`
    on the same command adds (a method kept outside binexp). Its config loader lists them when handed that
    override, so for the one help call the loader's listing gets it."""
    from hydra._internal.hydra import Hydra

    searchpath = [a for a in args if a.partition("=")[0] == SEARCHPATH]
    if not searchpath or not any(a in ("-h", "--help") for a in args):
        yield
        return
    listing = Hydra.format_config_groups

    def format_config_groups(self, predicate, compact=True):
        loader = self.config_loader
        loader.get_group_options = partial(loader.get_group_options, overrides=searchpath)
        try:
            return listing(self, predicate, compact)
        finally:
            del loader.get_group_options

    Hydra.format_config_groups = format_config_groups
    try:
        yield
    finally:
        Hydra.format_config_groups = listing


def _hydra_task(config_name: str, fn):
    import hydra

    from binexp.config import register_configs
    from binexp.errors import NonFiniteLossError, OtherJobThere, user_error

    register_configs()

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
    def app(cfg):
        try:
            return fn(cfg)
        except Exception as raised:
            err = user_error(raised)
            if err is None:
                raise
            # a user-fixable problem: its message, no traceback; once on the terminal, and in the run's log file
            _log_to_files(str(err))
            print(f"binexp: error: {err}", file=sys.stderr)
            if isinstance(err, NonFiniteLossError) and _in_sweep():
                _DIVERGED.append(str(cfg.get("run_dir")))  # a diverging job is a sweep's result, not its end
                return None
            if isinstance(err, OtherJobThere) and _in_sweep():
                _restore_sweep_record()
            raise SystemExit(err.exit_code) from None

    return app


def _log_to_files(message: str) -> None:
    """An ERROR record for the log files only: Hydra's console handler would print the message a second time."""
    record = logging.getLogger("binexp").makeRecord("binexp", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


_DIVERGED: list[str] = []  # run directories of this sweep's jobs that stopped on a non-finite loss
_SWEEP_RECORD: dict[Path, bytes] = {}  # the multirun.yaml a re-run into an existing sweep folder found there


def _remember_sweep_record(args: list[str]) -> None:
    """Hydra writes the sweep's multirun.yaml before its first job; a re-run refused at a job that holds another
    job's results would leave it describing the refused sweep, and `binexp report` would count that one's jobs."""
    _SWEEP_RECORD.clear()
    dirs = [a.partition("=")[2] for a in args if a.startswith("hydra.sweep.dir=")]
    if dirs and any(a in ("-m", "--multirun") for a in args):
        record = Path(dirs[-1]) / "multirun.yaml"
        if record.is_file():
            _SWEEP_RECORD[record] = record.read_bytes()


def _restore_sweep_record() -> None:
    for record, content in _SWEEP_RECORD.items():
        record.write_bytes(content)


def _in_sweep() -> bool:
    """A multirun whose jobs run in this process (Hydra's basic launcher): only then can the sweep's end report
    its diverged jobs; a cluster launcher's job must fail itself."""
    from hydra.types import RunMode

    from binexp.hydra_output import running_hydra

    hc = running_hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN and str(hc.launcher.get("_target_", "")).endswith(".BasicLauncher")


def _run_plain(task: str, args: list[str]) -> None:
    """Tasks that read a run or an artifact rather than compose a config: errors print without a traceback."""
    from binexp.errors import user_error
    from binexp.export.commands import main_export, main_verify
    from binexp.report import main as main_report

    try:
        {"report": main_report, "export": main_export, "verify": main_verify}[task](args)
    except Exception as raised:
        err = user_error(raised)
        if err is None:
            raise
        print(f"binexp: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _DIVERGED.clear()
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return
    task, rest = argv[0], argv[1:]
    if task not in TASKS:
        _fail(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if task in ("report", "export", "verify"):
        _run_plain(task, rest)
        return
    _check_output_dirs(rest)
    if task == "train":
        from binexp.train import train

        _check_launcher_installed(rest)

        if any(a.startswith("resume=") for a in rest):
            rest = _resume_args(rest)
        else:
            _check_override_keys(rest)
            _remember_sweep_record(rest)
        app = _hydra_task("train", train)
    else:
        from binexp.evaluate import evaluate

        _check_eval_args(rest)
        app = _hydra_task("eval", evaluate)
    sys.argv = [f"binexp {task}", *rest]
    with _help_lists_searchpath(rest):
        app()
    if _DIVERGED:
        _fail_diverged()


def _fail_diverged() -> None:
    from binexp.errors import NonFiniteLossError

    print(f"binexp: error: {len(_DIVERGED)} job(s) of the sweep stopped on a non-finite loss (the others ran): "
          f"{', '.join(_DIVERGED)}", file=sys.stderr)
    raise SystemExit(NonFiniteLossError.exit_code)


if __name__ == "__main__":
    main()
