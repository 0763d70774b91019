"""Process-wide settings a run changes, given back when it ends: Hydra's basic launcher runs a sweep's jobs one after
another in one process, and a job must train as it would alone.

Lightning's DDP launcher sets one thread per process (and OMP_NUM_THREADS) and its watcher never restores them; the
trainer sets cuDNN's and torch's determinism flags only where the run asks, so `trainer.benchmark=null` or
`trainer.deterministic=null` would take the previous job's; a fit that ends in an exception leaves binexp's stop
handler installed, and the next job's first Ctrl-C only asked a finished run to stop."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ENVIRONMENT = ("OMP_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))


@contextmanager
def restored_process_state() -> Iterator[None]:
    threads = torch.get_num_threads()
    environment = {name: os.environ.get(name) for name in ENVIRONMENT}
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS} if main_thread else {}
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        for sig, handler in handlers.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)
