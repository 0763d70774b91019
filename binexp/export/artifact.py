"""The exported file: a safetensors container holding the tensors (binary weights packed 8 per byte, thresholds,
float layers) and, in its metadata, a JSON manifest: format and version, method, architecture, dataset, input
normalisation, the op list with shapes, where it came from, a checksum per tensor (sha256, 64 bits) and the sha256
of the manifest itself.

`load` refuses a file that is truncated, altered, of another format or of a newer version, naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from binexp.atomic_files import write_bytes
from binexp.errors import BinexpError
from binexp.export.lower import Op

FORMAT = "binexp-step"
VERSION = 2  # 2: the tensor checksums cover dtype and shape (version 1 files still read)
MANIFEST_KEY, CHECKSUM_KEY = "binexp.manifest", "binexp.manifest_sha256"


class ArtifactError(BinexpError):
    """The file is not a valid binexp export."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tensor_digest(array: np.ndarray, version: int = VERSION) -> str:
    # 64 bits of sha256 per tensor: catches damage as surely as the whole digest, and keeps the manifest, a fixed
    # cost in every file, small next to small models. From version 2 the dtype and shape are hashed too: they live
    # in the safetensors header, outside the manifest's own checksum, and an I32 read as F32 changes predictions
    described = b"" if version < 2 else f"{array.dtype.str}{array.shape}".encode()
    return _sha256(described + array.tobytes())[:16]


def manifest_and_tensors(ops: list[Op], input_name: str, output_name: str, info: dict) -> tuple[dict, dict[str, np.ndarray]]:
    tensors: dict[str, np.ndarray] = {}
    entries = []
    for op in ops:
        refs = {}
        for key, array in op.tensors.items():
            name = f"{op.name}.{key}"
            tensors[name] = np.ascontiguousarray(array)
            refs[key] = name
        entries.append({"kind": op.kind, "name": op.name, "inputs": op.inputs, "attrs": op.attrs, "tensors": refs})
    manifest = {
        "format": FORMAT, "version": VERSION, **info, "input": input_name, "output": output_name, "ops": entries,
        "checksums": {name: _tensor_digest(array) for name, array in tensors.items()},
    }
    return manifest, tensors


def write(path: Path, manifest: dict, tensors: dict[str, np.ndarray]) -> int:
    """Write the artifact atomically; returns its size in bytes."""
    text = json.dumps(manifest, sort_keys=True)
    data = save(tensors, metadata={MANIFEST_KEY: text, CHECKSUM_KEY: _sha256(text.encode())})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)
    return len(data)


def _header(data: bytes, path: Path) -> dict:
    if len(data) < 8:
        raise ArtifactError(f"{path}: {len(data)} bytes, too short for a binexp export (truncated?)")
    size = int.from_bytes(data[:8], "little")
    if 8 + size > len(data):
        raise ArtifactError(f"{path}: not a binexp export, or a truncated one (its first 8 bytes give a header of {size} "
                            f"bytes; {len(data) - 8} follow them)")
    try:
        return json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: not a binexp export, or a damaged one (its header is not JSON: {err})") from None


def read(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    path = Path(path)
    if path.is_dir():
        hint = path / "export" / "model.safetensors"
        raise ArtifactError(f"{path}: a directory; verify takes an export file"
                            + (f", e.g. {hint}" if hint.is_file() else " (made by `binexp export <run dir>`)"))
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file (an export is made by `binexp export <run dir>`)")
    data = path.read_bytes()
    meta = _header(data, path).get("__metadata__") or {}
    text = meta.get(MANIFEST_KEY)
    if text is None:
        raise ArtifactError(f"{path}: a safetensors file without a binexp manifest; not a binexp export")
    if _sha256(text.encode()) != meta.get(CHECKSUM_KEY):
        raise ArtifactError(f"{path}: the manifest does not match its checksum; the file was altered or damaged")
    manifest = json.loads(text)
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(manifest.get("version", 0), int) or isinstance(manifest.get("version"), bool):
        raise ArtifactError(f"{path}: format version {manifest.get('version')!r} is not a version number")
    if manifest.get("version", 0) > VERSION:
        raise ArtifactError(f"{path}: format version {manifest['version']} is newer than this binexp reads ({VERSION}); upgrade binexp")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as err:
        raise ArtifactError(f"{path}: the tensors cannot be read ({err}); the file is truncated or damaged") from None
    expected = manifest["checksums"]
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:5]
        raise ArtifactError(f"{path}: tensors {missing} listed in the manifest are missing; the file is damaged")
    for name, digest in expected.items():
        if _tensor_digest(tensors[name], manifest.get("version", 1)) != digest:
            raise ArtifactError(f"{path}: tensor {name} does not match its checksum; the file was altered or damaged")
    return manifest, tensors
