"""Stop a run cleanly: on a non-finite loss, and on SIGINT/SIGTERM/SIGUSR1 with a resumable checkpoint."""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch

from binexp.errors import NonFiniteLossError, RunInterrupted

log = logging.getLogger(__name__)


def weights_finite(trainer, pl_module) -> bool:
    """Every parameter finite, on every rank (a collective: call it at the same step on all of them)."""
    bad = ~torch.stack([torch.isfinite(p.detach()).all() for p in pl_module.parameters()]).all()
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce(bad.float(), reduce_op="max") > 0
    return not bool(bad)


class FiniteLossGuard(pl.Callback):
    """Raise `NonFiniteLossError` once the training loss is NaN or inf, before a checkpoint can save its weights.

    The check accumulates on the device and reads back every `check_every_n_steps` steps, so a GPU run
    does not synchronise each step. It also reads back, and checks that every parameter is finite, wherever
    Lightning may save a checkpoint or training ends: when validation starts (ModelCheckpoint saves at its end),
    at the end of each training epoch (where it saves when there is no validation; checkpoint callbacks run
    after this one) and at the end of training, before the test. So the last checkpoint is a good one, and a
    diverged run never reaches its metrics.
    """

    def __init__(self, check_every_n_steps: int = 10):
        self.check_every_n_steps = check_every_n_steps
        self._bad: torch.Tensor | None = None
        self._last_loss: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        self._bad = bad if self._bad is None else (self._bad | bad)
        self._last_loss = loss.detach()
        if 0 < trainer.max_steps <= trainer.global_step:  # a max_steps cut: curves and the cut checkpoint come next
            self._check(trainer, pl_module, parameters=True)
        elif trainer.global_step % self.check_every_n_steps == 0:
            self._check(trainer, pl_module, parameters=False)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # not a test's or trainer.validate's
            self._check(trainer, pl_module, parameters=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, parameters=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, parameters=True)

    def _check(self, trainer, pl_module, parameters: bool) -> None:
        own = self._bad if self._bad is not None else torch.zeros((), dtype=torch.bool, device=pl_module.device)
        found = own
        if trainer.world_size > 1:  # one rank's inf must stop them all at the same step, or the others hang
            found = trainer.strategy.reduce(own.float(), reduce_op="max") > 0
        if bool(found) or (parameters and not weights_finite(trainer, pl_module)):
            ckpt = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            kept = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint had been saved yet"
            loss = "nan" if self._last_loss is None else f"{self._last_loss.item()}"
            if bool(found) and not bool(own):  # rank zero reports, but the non-finite loss was another rank's
                loss = f"non-finite on another rank; {loss} on rank {trainer.global_rank}"
            what = "training loss or weights" if parameters else "training loss"
            raise NonFiniteLossError(
                f"{what} became non-finite by step {trainer.global_step} (epoch {trainer.current_epoch}; last loss "
                f"{loss}); stopped, {kept}. Try a lower optimizer.lr, or check the inputs (dataset.normalize)."
            )


class CutEpochCheckpoint(pl.Callback):
    """When `trainer.max_steps` ends training inside an epoch, last.ckpt holds the state after that step, so a
    resume with a larger max_steps goes on with the cut epoch's next batch.

    Lightning's epoch-end checkpoint would count the cut epoch as done, and a resume would skip the rest of it.
    The state is saved when the last step ends (as GracefulStop does on a signal) to `last.ckpt.cut`, and moved
    over last.ckpt when training ends, after the epoch-end checkpoints."""

    def __init__(self):
        self._cut: Path | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        max_steps = trainer.max_steps
        if max_steps == -1 or trainer.global_step < max_steps or batch_idx + 1 >= trainer.num_training_batches:
            return
        self._cut = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt.cut"
        trainer.save_checkpoint(self._cut)  # every rank reaches max_steps at the same step

    def on_train_end(self, trainer, pl_module) -> None:
        if self._cut is not None and trainer.is_global_zero and self._cut.exists():
            self._cut.replace(self._cut.with_name("last.ckpt"))
        self._cut = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A run stopped after the cut was saved (non-finite weights found at training's end): last.ckpt stays."""
        if self._cut is not None and trainer.is_global_zero:
            self._cut.unlink(missing_ok=True)
        self._cut = None


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
# signals a cluster sends before the time limit to ask for a requeue: SIGUSR1 for Lightning's SLURM
# auto-requeue (SLURMEnvironment.requeue_signal), SIGUSR2 for submitit
REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2")


class GracefulStop(pl.Callback):
    """On the first SIGINT/SIGTERM/SIGUSR1/SIGUSR2, finish the current batch, save `checkpoints/last.ckpt`, stop.

    It saves at the end of the batch and stops by raising `RunInterrupted` as the next batch starts (once Lightning
    has logged the saved step's values): letting the epoch wind down instead would let ModelCheckpoint overwrite
    last.ckpt with the epoch marked finished, and a resume would skip its rest. Inside a gradient-accumulation
    window it waits for the window's last batch, as the window's gradients are in no checkpoint. A signal that
    comes after the last batch (during the last validation) stops the run as training ends, before the test.
    On an epoch's last batch it lets the epoch finish instead (its validation, its checkpoint and its logged epoch
    values), then saves and raises as training ends: a resume from a checkpoint taken in the last batch's end hook
    restarts in the next epoch, without this epoch's validation and epoch values; one taken in the epoch's end
    hooks comes before Lightning writes the epoch's values, and they are lost.
    A second Ctrl-C interrupts at once.

    Cluster requeue: while training, this callback owns the signals; the handler that was installed before it
    for SIGUSR1/SIGUSR2 (Lightning's SLURM auto-requeue: hpc checkpoint + `scontrol requeue`; submitit:
    resubmit the job) is called after last.ckpt is saved, at a batch boundary rather than mid-step. The
    requeued job finds last.ckpt in its run directory and continues from it (`existing_run=continue`).
    Under DDP the ranks agree every `sync_every_n_steps` steps on whether, and on which signal, to stop.
    """

    def __init__(self, signals: tuple[str, ...] = STOP_SIGNALS, sync_every_n_steps: int = 10):
        self.sync_every_n_steps = max(1, sync_every_n_steps)
        self.signals = [getattr(signal, s) for s in signals if hasattr(signal, s)]
        self.received: int | None = None
        self.checkpoint: Path | None = None
        self._previous: dict[int, object] = {}
        self._stop_at_epoch_end = False
        self._stop_before_next_batch = False
        self._saved_at = (0, 0)
        self.test_handler = None  # set by stop_after_fit: the handler the test after training runs under

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: stopping after this batch and saving a checkpoint", signal.Signals(signum).name)

    def on_fit_start(self, trainer, pl_module) -> None:
        # Ctrl-C in the sanity check or the curves' first pass stops as one in training does (Lightning leaves SIGINT
        # alone; the other signals are Lightning's until training starts: its SLURM requeue handler must see them free)
        if _main_thread() and signal.SIGINT in self.signals:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)

    def on_train_start(self, trainer, pl_module) -> None:
        if not _main_thread():
            return
        for sig in self.signals:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)
        if trainer.received_sigterm:  # under Lightning's handler (the sanity check, the curves' first pass): it would
            trainer._signal_connector.received_sigterm = False  # end the run at the first batch with exit status 0
            self._handle(signal.SIGTERM, None)
        if self._agreed_signal(trainer, pl_module, every_n_steps=1):  # stopped before the first batch
            self._save(trainer)
            self._stop(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if not last_of_epoch and (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # inside an accumulation window: its gradients are in no checkpoint, so stop where it steps
        signum = self._agreed_signal(trainer, pl_module, every_n_steps=self.sync_every_n_steps)
        if not signum:
            return
        if last_of_epoch:
            self._stop_at_epoch_end = True
        else:  # saved now, raised once Lightning has logged this step's values
            self._save(trainer)
            self._stop_before_next_batch = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._stop_before_next_batch:
            self._stop(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        if self.test_handler is not None and _main_thread():  # over Lightning's, which it puts back after the test
            signal.signal(signal.SIGTERM, self.test_handler)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._stop_at_epoch_end:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self._stop_before_next_batch:  # a max_steps cut ended training at the step that was saved
            self._stop(trainer)
        # a signal during the last epoch's validation, after its last batch, stops here too (every rank asks)
        if self._stop_at_epoch_end or self._agreed_signal(trainer, pl_module, every_n_steps=1):
            self._save(trainer)
            self._stop(trainer)

    def _agreed_signal(self, trainer, pl_module, every_n_steps: int) -> int:
        """The signal to stop on (0: none); under DDP every rank's, agreed every `every_n_steps` steps."""
        signum = int(self.received or 0)
        if trainer.world_size > 1:  # every rank must stop at the same step, for the same signal
            if trainer.global_step % every_n_steps:
                return 0
            flag = torch.tensor(float(signum), device=pl_module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if signum:
            self.received = signum
        return signum

    def _save(self, trainer) -> None:
        self.checkpoint = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if not weights_finite(trainer, trainer.lightning_module):  # between FiniteLossGuard's read-backs
            raise NonFiniteLossError(
                f"stopping on a signal at step {trainer.global_step}: the weights are non-finite, so {self.checkpoint} "
                f"was not overwritten. Try a lower optimizer.lr, or check the inputs (dataset.normalize)."
            )
        trainer.save_checkpoint(self.checkpoint)
        self._saved_at = (trainer.global_step, trainer.current_epoch)

    def _stop(self, trainer) -> None:
        self._stop_before_next_batch = False
        self._hand_on_requeue(trainer)
        step, epoch = self._saved_at
        raise RunInterrupted(
            f"stopped at step {step} (epoch {epoch}); saved {self.checkpoint}.\n" + resume_hint(Path(trainer.default_root_dir))
        )

    def _hand_on_requeue(self, trainer) -> None:
        """Give a requeue signal to the handler that was there before (a no-op where there was none)."""
        names = {getattr(signal, n) for n in REQUEUE_SIGNALS if hasattr(signal, n)}
        previous = self._previous.get(self.received) if self.received in names else None
        if callable(previous):
            log.warning("handing %s on to the cluster's requeue handler", signal.Signals(self.received).name)
            previous(self.received, None)  # submitit's exits the process on rank zero: last.ckpt is saved

    def _restore_handlers(self) -> None:
        # Lightning's trainer puts back the handlers it replaced before this callback's teardown runs. Putting back
        # ours only where ours is still installed stops us re-installing Lightning's SIGTERM handler, which only
        # logs: the test and the protocol after training would then ignore SIGTERM (`timeout`, a cluster's kill).
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, handler)
        self._previous.clear()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_handlers()


# how a collective fails when another rank has exited
PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


@contextmanager
def stop_after_fit(run_dir: Path, trainer: pl.Trainer):
    """SIGTERM or Ctrl-C while a finished fit is tested and evaluated ends the run with the resume hint (the trained
    network is in last.ckpt; the resume tests and evaluates it again), on every rank.

    The handler raises KeyboardInterrupt where the code is, as Ctrl-C does, rather than stopping at a batch: the
    test and the protocol have nothing to save, and Lightning's own SIGTERM handler (which `trainer.test` installs,
    replaced here through GracefulStop) runs a collective inside the handler, so a signal to one DDP rank hung
    both. Lightning turns an interrupt inside `trainer.test` into `sys.exit(1)`; that exit is taken back here.
    The launching rank passes SIGTERM on to the other ranks."""
    received: list[int] = []

    def interrupt(signum, frame) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    installed = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
    stops = [cb for cb in trainer.callbacks if isinstance(cb, GracefulStop)]
    for cb in stops:
        cb.test_handler = interrupt
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as err:
        if isinstance(err, SystemExit) and not received:
            raise
        from binexp.distributed import launcher_of

        launcher = launcher_of(trainer)
        if launcher is not None:
            launcher.kill(signal.SIGTERM)
        raise RunInterrupted(f"interrupted after training, in the test or the protocol: {resume_hint(run_dir)} "
                             f"(it tests and evaluates the trained network again)") from None
    except RuntimeError as err:  # gloo/NCCL: the rank a signal stopped left this one's collective
        if trainer.world_size == 1 or not any(gone in str(err) for gone in PEER_GONE):
            raise
        raise RunInterrupted(f"another rank of this DDP run stopped after training, in the test or the protocol (a "
                             f"signal to it, or an error it printed): {resume_hint(run_dir)} (it tests and evaluates "
                             f"the trained network again)") from None
    finally:
        for sig, handler in installed.items():
            signal.signal(sig, handler)
        for cb in stops:
            cb.test_handler = None


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class SignalAtStep(pl.Callback):
    """Debugging aid: send this process a signal while it runs the batch that starts at `step`
    (tests preemption and Ctrl-C; the checkpoint then holds step + 1)."""

    def __init__(self, step: int, signal_name: str = "SIGINT"):
        self.step, self.signal_name = step, signal_name
        self._sent = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self._sent:  # once: the batches of an accumulation share a step
            self._sent = True
            os.kill(os.getpid(), getattr(signal, self.signal_name))


def resume_hint(run_dir: Path) -> str:
    """How to go on: this run alone, or, for a job of a sweep (any later jobs do not start), the sweep again."""
    import shlex
    import sys

    from hydra.types import RunMode

    from binexp.hydra_output import running_hydra

    alone = f"binexp train resume={run_dir}"
    hc = running_hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return f"Resume with: {alone}"
    args = [a for a in sys.argv[1:] if not a.startswith("hydra.sweep.dir=")]  # Hydra's arguments: the task is gone
    again = shlex.join(["binexp", "train", *args, f"hydra.sweep.dir={hc.sweep.dir}"])
    return (f"This run is job {hc.job.num} of a sweep, which stops with it. Resume the sweep (finished jobs "
            f"are skipped, this one continues from its checkpoint) with:\n  {again}\nor this job alone with: {alone}")
