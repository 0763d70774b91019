"""Run a plan of `binexp train` runs side by side on one machine, stop them cleanly at a deadline, pack the results.

A plan is a text file, one run per line: a name, then the run's overrides. `#` starts a comment.

    # scripts/plans/tclip.txt
    t0.5   experiment=ste_cifar10_resnet18 trainer=gpu method.t_clip=0.5
    t1.0   experiment=ste_cifar10_resnet18 trainer=gpu method.t_clip=1.0

    python scripts/run_plan.py scripts/plans/tclip.txt --deadline 480 --pack out/tclip.tar.gz
    python scripts/run_plan.py scripts/plans/tclip.txt --only t0.5 --dry-run   # print the command, run nothing

Each run lands in `<logs>/<plan>/<name>/` (its output in `<name>.out` beside it), without the rich progress bar
(it draws nothing useful into a file). `--jobs N` runs N at a time (default: all at once, which is how one large GPU is kept
busy by small networks). At `--deadline` seconds every run still going gets SIGTERM: binexp saves
`checkpoints/last.ckpt` and exits (killed if it has not after `--grace` seconds). Running the plan again skips the runs whose directory holds metrics.json (and
refuses one that finished with other overrides than its line has now), and binexp itself continues each stopped one
from its last.ckpt (same batches and schedule state) in the same directory, refusing one whose job changed.

`--pack FILE` writes one .tar.gz of what `binexp report` reads (configs, metrics.json, TensorBoard events,
binarization.csv, logs), without checkpoints, so a remote machine's results travel as one small file:
`tar -xzf FILE -C logs && binexp report logs/<plan>`. `summary.json` and a table of each run's exit status, wall time
and accuracies are written and printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

LIGHT_FILES = ("metrics.json", "binarization.csv", "train.log", "eval-*.json", ".hydra/*.yaml", "tb/*", "*.png", "*.csv")
SUMMARY_KEYS = ("test/acc", "protocol/binary", "protocol/binary_bn_reestimated", "val/acc_best")
GRACE_S = 60  # default --grace: after SIGTERM, time to finish the batch and write last.ckpt before SIGKILL
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass
class PlannedRun:
    name: str
    overrides: list[str]
    run_dir: Path = Path()
    process: subprocess.Popen | None = None
    started: float = 0.0
    wall_s: float = 0.0
    status: str = "pending"  # pending, running, done, failed (rc), stopped (deadline), skipped (finished before)
    rc: int | None = None
    metrics: dict = field(default_factory=dict)


def read_plan(path: Path) -> list[PlannedRun]:
    runs, seen = [], set()
    if not path.is_file():
        raise SystemExit(f"run_plan.py: plan {path} not found (the plans are in scripts/plans/)")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        name, overrides = words[0], words[1:]
        if not NAME.fullmatch(name):  # it names a folder: no '/', '..', '~lr_scheduler' (an override without a name)
            raise SystemExit(f"{path}:{number}: a line starts with the run's name (letters, digits, '.', '_', '-'), "
                             f"then its overrides; got {name!r}")
        if name in seen:
            raise SystemExit(f"{path}:{number}: run name {name!r} is used twice")
        if any(o.startswith(("hydra.run.dir=", "resume=")) for o in overrides):
            raise SystemExit(f"{path}:{number}: a plan's run sets neither hydra.run.dir (run_plan.py puts it under "
                             f"--logs) nor resume (running the plan again continues unfinished runs)")
        seen.add(name)
        runs.append(PlannedRun(name, overrides))
    if not runs:
        raise SystemExit(f"{path}: no runs in the plan")
    return runs


def added_overrides(run: PlannedRun) -> list[str]:
    return [f"hydra.run.dir={run.run_dir}", "callbacks.rich_progress_bar=null"]


def command(binexp: list[str], run: PlannedRun) -> list[str]:
    return [*binexp, "train", *run.overrides, *added_overrides(run)]


def finished_before(run: PlannedRun, plan: Path) -> bool:
    """Whether the run's directory holds its finished result; one left by a different plan line is refused, as a
    skipped run would report the old line's result under the new line's name."""
    if not (run.run_dir / "metrics.json").exists():
        return False
    saved = run.run_dir / ".hydra" / "config.yaml"
    if saved.exists():  # the same job as binexp tells it (JOB_KEYS): a line only reordered or re-spelled is the same
        from binexp.config import compose_train
        from binexp.train import composed_job_identity, recorded_job_identity

        try:
            line = compose_train(run.overrides)
        except Exception as err:  # a renamed experiment, a key that is gone: the line is not the run it finished
            raise SystemExit(f"{plan}: run {run.name!r} finished in {run.run_dir}, and its line no longer composes "
                             f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
        before = recorded_job_identity(saved)
        if line.seed is None:  # seed=null: the run drew one and recorded it
            line.seed = before.get("seed")
        now = composed_job_identity(line)
        differ = sorted(k for k in set(before) & set(now) if before[k] != now[k])
        if differ:
            shown = ", ".join(f"{k}: {before[k]!r} there, {now[k]!r} on its line" for k in differ[:3])
            raise SystemExit(f"{plan}: run {run.name!r} finished in {run.run_dir} as another job ({shown}); give the "
                             f"changed line a new name or pass another --logs")
    return True


def start(binexp: list[str], run: PlannedRun) -> None:
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    out = (run.run_dir.parent / f"{run.name}.out").open("a")
    run.process = subprocess.Popen(command(binexp, run), stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out.close()
    run.started, run.status = time.monotonic(), "running"
    print(f"[{time.strftime('%H:%M:%S')}] start {run.name}", flush=True)


def finish(run: PlannedRun, stopped: bool) -> None:
    run.rc = run.process.returncode
    run.wall_s = time.monotonic() - run.started
    metrics = run.run_dir / "metrics.json"
    run.metrics = json.loads(metrics.read_text()) if metrics.exists() else {}
    # a stop exits 130 (binexp's resumable stop) or by the signal itself; any other status is the run's own failure
    stopped = stopped and run.rc in (130, -signal.SIGTERM, -signal.SIGKILL)
    run.status = "done" if run.rc == 0 else "stopped (deadline)" if stopped else f"failed ({run.rc})"
    print(f"[{time.strftime('%H:%M:%S')}] {run.status} {run.name} after {run.wall_s:.0f} s", flush=True)


def execute(runs: list[PlannedRun], binexp: list[str], jobs: int, deadline_s: float | None,
            grace_s: float = GRACE_S) -> None:
    t0 = time.monotonic()
    waiting = [r for r in runs if r.status == "pending"]
    running: list[PlannedRun] = []
    stopping = False
    while waiting or running:
        late = deadline_s is not None and time.monotonic() - t0 >= deadline_s
        if late and not stopping:
            stopping = True
            for r in waiting:
                r.status = "not started (deadline)"
            waiting = []
            for r in running:
                r.process.send_signal(signal.SIGTERM)
            stop_sent = time.monotonic()
        while not stopping and waiting and len(running) < jobs:
            run = waiting.pop(0)
            start(binexp, run)
            running.append(run)
        for r in [r for r in running if r.process.poll() is not None]:
            finish(r, stopped=stopping)
            running.remove(r)
        if stopping and running and time.monotonic() - stop_sent > grace_s:
            for r in running:
                r.process.kill()
        time.sleep(0.5)


def pack(runs: list[PlannedRun], where: Path, logs: Path, archive: Path) -> int:
    """The light files of every run and the plan's summary.json (in `where`) into one .tar.gz, paths relative to
    `logs`; returns the number of files."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(archive, "w:gz") as tar:
        for run in runs:
            files = {p for pattern in LIGHT_FILES for p in run.run_dir.glob(pattern) if p.is_file()}
            out = run.run_dir.parent / f"{run.name}.out"
            for path in sorted(files | ({out} if out.exists() else set())):
                tar.add(path, arcname=str(path.relative_to(logs)))
                count += 1
        summary = where / "summary.json"
        if summary.exists():
            tar.add(summary, arcname=str(summary.relative_to(logs)))
            count += 1
    return count


def summarise(runs: list[PlannedRun], where: Path, plan_names: list[str]) -> None:
    """summary.json holds a row for every run of the plan this or an earlier call ran (`--only` adds its rows to the
    earlier ones); the rows of this call are printed."""
    rows = {r.name: {"name": r.name, "status": r.status, "rc": r.rc, "wall_s": round(r.wall_s, 1),
                     **{k: r.metrics[k] for k in SUMMARY_KEYS if k in r.metrics}} for r in runs}
    where.mkdir(parents=True, exist_ok=True)
    summary = where / "summary.json"
    earlier = {row["name"]: row for row in json.loads(summary.read_text())} if summary.exists() else {}
    kept = {name: rows.get(name, earlier.get(name)) for name in plan_names}
    summary.write_text(json.dumps([row for row in kept.values() if row is not None], indent=2) + "\n")
    for row in rows.values():
        values = "  ".join(f"{k}={100 * row[k]:.2f}" for k in SUMMARY_KEYS if k in row)
        print(f"{row['name']:<24} {row['status']:<22} {row['wall_s']:>7.0f} s  {values}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", type=Path)
    parser.add_argument("--only", nargs="+", help="run only these names of the plan")
    parser.add_argument("--jobs", type=int, default=0, help="runs at a time (0: all at once)")
    parser.add_argument("--deadline", type=float, help="seconds after the start at which unfinished runs are stopped")
    parser.add_argument("--grace", type=float, default=GRACE_S,
                        help=f"seconds a stopped run has to save last.ckpt before it is killed (default {GRACE_S})")
    parser.add_argument("--logs", type=Path, default=Path(os.environ.get("BINEXP_LOGS", "logs")) / "plans",
                        help="runs go to <logs>/<plan name>/<run name>")
    parser.add_argument("--pack", type=Path, help="write the runs' light files (no checkpoints) to this .tar.gz")
    parser.add_argument("--binexp", default=f"{shlex.quote(sys.executable)} -m binexp.cli",
                        help="how to call binexp (default: this Python's binexp.cli)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if args.jobs < 0:
        parser.error(f"--jobs={args.jobs}: must be 0 (all at once) or more")
    if args.deadline is not None and args.deadline <= 0:
        parser.error(f"--deadline={args.deadline:g}: must be a number of seconds > 0")
    if args.grace < 0:
        parser.error(f"--grace={args.grace:g}: must be a number of seconds >= 0")

    runs = read_plan(args.plan)
    plan_names = [r.name for r in runs]
    if args.only:
        unknown = sorted(set(args.only) - {r.name for r in runs})
        if unknown:
            parser.error(f"--only: {', '.join(unknown)} not in {args.plan} (its runs: {', '.join(r.name for r in runs)})")
        runs = [r for r in runs if r.name in args.only]
    where = args.logs / args.plan.stem
    binexp = shlex.split(args.binexp)
    for run in runs:
        run.run_dir = where / run.name
        if finished_before(run, args.plan):
            run.status = "skipped (finished before)"
            run.metrics = json.loads((run.run_dir / "metrics.json").read_text())
    if args.dry_run:
        for run in runs:
            print(run.status if run.status != "pending" else shlex.join(command(binexp, run)))
        return 0
    execute(runs, binexp, args.jobs or len(runs), args.deadline, args.grace)
    summarise(runs, where, plan_names)
    if args.pack:
        print(f"packed {pack(runs, where, args.logs, args.pack)} files into {args.pack}")
    return 0 if all(r.status in ("done", "skipped (finished before)") for r in runs) else 1  # a stopped run is not done


if __name__ == "__main__":
    sys.exit(main())
