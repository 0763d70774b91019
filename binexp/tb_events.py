"""Event files of a run's TensorBoard folder, edited in place record by record (each rewritten atomically): what an
earlier launch wrote that the run's present no longer has."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from binexp.atomic_files import replacing


def rewrite_events(log_dir: Path, edit: Callable[[Any], Optional[Any]]) -> None:
    """Each event of the event files directly in `log_dir` through `edit`: the same event to keep it as it is, a new
    one to put in its place, or None to drop it. A file whose events all come back as they were is not rewritten."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        kept, changed = [], False
        for record in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(record)
            edited = edit(event)
            if edited is None:
                changed = True
            elif edited is event:
                kept.append(record)
            else:
                changed = True
                kept.append(edited.SerializeToString())
        if changed:
            with replacing(path) as tmp, tmp.open("wb") as f:
                writer = RecordWriter(f)
                for record in kept:
                    writer.write(record)


def drop_events_after(log_dir: Path, step: int) -> None:
    """The values an earlier launch logged after `step`: a run killed without warning (SIGKILL, a lost node) logged
    past its last checkpoint, and the launch going on from that checkpoint logs those steps again. TensorBoard's
    own purge (a SummaryWriter's purge_step) depends on the order readers take the files in, which the files'
    names do not keep for the launches of one process (a sweep's jobs)."""
    rewrite_events(log_dir, lambda event: None if event.HasField("summary") and event.step > step else event)
