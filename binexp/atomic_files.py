"""Files written so that a kill at any moment (SIGKILL, the OOM killer, a node lost) leaves the old file or the new
one, never part of one: the new content goes to a temporary file beside the old (the same filesystem, so the
rename is atomic) and is renamed over it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; renamed over `path` when the block ends, removed if it
    raises. The name holds the process id, so two processes writing one file do not write into each other's."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        _fsync(tmp)  # the content on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with replacing(path) as tmp:
        torch.save(obj, tmp)

