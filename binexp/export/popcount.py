"""The popcount GEMM of binary layers: the compiled kernel (`_popcount.c`, built by the install) or numpy.

`popcount_gemm(x, w, use_and)` takes rows of packed 64-bit words, x (R, K) and w (O, K) as uint64, and returns the
int32 matrix of popcount(xnor(x_r, w_o)) (or popcount(x_r & w_o)) summed over the K words.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

# rows per numpy chunk: the broadcast (rows, O, K) temporary stays near 64 MB
_NUMPY_CHUNK_BYTES = 64 << 20


@lru_cache(maxsize=1)
def _kernel() -> ctypes.CDLL | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_popcount{suffix}"
        if path.exists():
            try:
                lib = ctypes.CDLL(str(path))
                lib.popcount_gemm, lib.popcount_threads  # noqa: B018  (both symbols, or it is no kernel of ours)
            except (OSError, AttributeError) as err:  # a damaged or foreign build: numpy computes the same sums
                warnings.warn(f"{path} does not load ({err}); the popcount runs in numpy", stacklevel=2)
                return None
            missing = _missing_instructions(lib)
            if missing:
                warnings.warn(f"{path} was compiled for instructions this CPU lacks ({', '.join(missing)}; built with "
                              f"-march=native on another machine?); the popcount runs in numpy. Reinstall binexp on "
                              f"this machine for the compiled kernel", stacklevel=2)
                return None
            lib.popcount_gemm.restype = None
            lib.popcount_gemm.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                          ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
            lib.popcount_threads.restype = ctypes.c_int
            return lib
    return None


def compiled_instructions(lib: ctypes.CDLL) -> list[str]:
    """The instruction sets the kernel was compiled to use, as CPU flag names; [] for a build from before it said."""
    try:
        isa = lib.popcount_isa
    except AttributeError:
        return []
    isa.restype = ctypes.c_char_p
    return isa().decode().split()


def _missing_instructions(lib: ctypes.CDLL) -> list[str]:
    """The instruction sets the build uses that this CPU's flags (Linux's /proc/cpuinfo) do not list; [] where the
    flags are unknown (another system)."""
    flags = cpu_flags()
    return [] if flags is None else [name for name in compiled_instructions(lib) if name not in flags]


def cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), None)
    return set(line.partition(":")[2].split()) if line else None


def backend() -> str:
    """'compiled (N threads)' when the install built the kernel, else 'numpy'."""
    lib = _kernel()
    return f"compiled ({lib.popcount_threads()} threads)" if lib is not None else "numpy"


def popcount_gemm(x: np.ndarray, w: np.ndarray, use_and: bool = False, force_numpy: bool = False) -> np.ndarray:
    if x.dtype != np.uint64 or w.dtype != np.uint64 or x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"popcount_gemm takes uint64 (R, K) and (O, K) words, got {x.dtype}{x.shape} and {w.dtype}{w.shape}")
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.int32)
    lib = None if force_numpy else _kernel()
    if lib is not None:
        lib.popcount_gemm(x.ctypes.data, w.ctypes.data, out.ctypes.data, x.shape[0], w.shape[0], x.shape[1], int(use_and))
        return out
    rows = max(1, _NUMPY_CHUNK_BYTES // max(1, 8 * w.shape[0] * w.shape[1]))
    for start in range(0, x.shape[0], rows):
        xs = x[start : start + rows, None, :]
        both = (xs & w[None]) if use_and else ~(xs ^ w[None])
        out[start : start + rows] = np.bitwise_count(both).sum(axis=-1, dtype=np.int32)
    return out
