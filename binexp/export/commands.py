"""`binexp export <run dir>` and `binexp verify <artifact>`.

    binexp export logs/train/runs/<time>                  # -> <run>/export/model.safetensors + export-size.json
    binexp export <run> ckpt=binary_weights               # -> <run>/export/model-binary_weights.safetensors + ...size.json
    binexp export <run> ckpt=best out=model.safetensors
    binexp verify <run>/export/model.safetensors dataset.root=/data   # exported vs trained, whole test set

`verify` rebuilds the trained network from the run the artifact names (its config and the very checkpoint, checked
by sha256), runs it in step mode and the packed model on the same test batches, and reports differing predictions
and differing binary activations per layer (it fails unless both are 0), and the accuracy of each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from binexp.binarize.base import evaluating
from binexp.errors import BinexpError, ConfigError
from binexp.evaluate import load_run_config, load_trained
from binexp.export import artifact
from binexp.export.lower import lower
from binexp.export.popcount import backend
from binexp.export.runtime import StepModel

VERIFY_KEYS = ("run", "ckpt", "limit", "batch_size", "dataset")
log = logging.getLogger("binexp")


class VerificationFailed(BinexpError):
    exit_code = 1


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def size_table(net: torch.nn.Module, manifest: dict, tensors: dict[str, np.ndarray], file_bytes: int,
               scheduled: tuple[str, ...] = ()) -> dict[str, float | None]:
    """File bytes against float32 bytes, for the whole model and for the binary layers alone; `scheduled` as in
    binexp.size.model_size."""
    from binexp.size import model_size

    sizes = model_size(net, scheduled)
    binary_ops = [op for op in manifest["ops"] if "weight_bits" in op["tensors"]]
    packed = sum(tensors[op["tensors"]["weight_bits"]].nbytes for op in binary_ops)
    binary_float = 4 * sum(int(np.prod(op["attrs"]["weight_shape"])) for op in binary_ops)
    return {
        "file_bytes": float(file_bytes),
        "float32_bytes": sizes["size/bytes_float"],
        "ideal_bytes": sizes["size/bytes_binary"],
        "file_vs_ideal": file_bytes / sizes["size/bytes_binary"],
        "file_vs_float32": file_bytes / sizes["size/bytes_float"],
        "binary_layers_packed_bytes": float(packed),
        "binary_layers_float32_bytes": float(binary_float),
        "binary_layers_ratio": packed / binary_float if binary_float else None,
    }


def export_run(run_dir: Path, ckpt: str = "last", out: Path | str | None = None) -> tuple[Path, dict[str, float]]:
    cfg, dm, module, path = load_trained(run_dir, ckpt)
    out = export_target(out, run_dir, ckpt, path)  # before the lowering: a target that cannot be written fails fast
    net = module.eval().net
    ops, input_name, output_name = lower(net, dm.image_shape)
    info = {
        "method": str(cfg.method.name),
        "architecture": str(cfg.architecture.name),
        "dataset": str(OmegaConf.select(cfg, "dataset.name", default="")),
        "image_shape": list(dm.image_shape),
        "num_classes": int(dm.num_classes),
        "input_norm": dict(dm.norm.__dict__),
        "source": {"run_dir": str(run_dir.resolve()), "checkpoint": str(path.resolve()), "checkpoint_sha256": _sha256_file(path)},
    }
    manifest, tensors = artifact.manifest_and_tensors(ops, input_name, output_name, info)
    sidecar(out, "verify").unlink(missing_ok=True)  # it verified the file this export replaces: gone first
    try:
        file_bytes = artifact.write(out, manifest, tensors)
    except OSError as err:
        raise ConfigError(f"out={out}: cannot write the export there ({err.strerror})") from None
    sizes = size_table(net, manifest, tensors, file_bytes, tuple(module.method.schedule_keys))
    sidecar(out, "size").write_text(json.dumps(sizes, indent=2) + "\n")
    return out, sizes


def export_target(out: Path | str | None, run_dir: Path, ckpt: str, ckpt_path: Path) -> Path:
    """Where an export goes: `out` (a .safetensors file, or a directory, existing or written with a trailing /, to
    put the default name in) or the run's export/ folder. The run's last.ckpt named by its path exports as
    `ckpt=last` does."""
    if ckpt_path.resolve() == (run_dir / "checkpoints" / "last.ckpt").resolve():
        ckpt = "last"
    default = default_artifact(run_dir, ckpt)
    if out is None:
        return _writable(default, "the run's export folder")
    raw, out = str(out), Path(out)
    if out.is_dir() or raw.endswith("/"):
        return _writable(out / default.name, f"out={raw}")
    if out.suffix != ".safetensors":  # and so never the checkpoint it reads, nor another kind of file
        raise ConfigError(f"out={out}: an export is a .safetensors file (e.g. out={out.with_suffix('.safetensors')}), "
                          f"or give a directory to write {default.name} into")
    return _writable(out, f"out={raw}")


def _writable(target: Path, named: str) -> Path:
    """`target`, its folder made; a folder that cannot be made or written is refused naming `named`."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        in_the_way = next((p for p in (target.parent, *target.parent.parents) if p.is_file()), None)
        why = f"{in_the_way} is a file" if in_the_way is not None else err.strerror
        raise ConfigError(f"{named}: cannot make the folder {target.parent} ({why})") from None
    if not os.access(target.parent, os.W_OK) or target.is_dir():
        raise ConfigError(f"{named}: cannot write {target} ({'a directory' if target.is_dir() else 'no write permission'})")
    return target


def default_artifact(run_dir: Path, ckpt: str) -> Path:
    """export/model.safetensors for the last checkpoint; export/model-<checkpoint>.safetensors for any other, so
    exporting a run's binary_weights network does not overwrite the export of its last one."""
    name = "model.safetensors" if ckpt == "last" else f"model-{Path(ckpt).stem}.safetensors"
    return run_dir / "export" / name


def sidecar(artifact_path: Path, kind: str) -> Path:
    """The json beside an artifact: export-size.json / verify.json for model.safetensors, <stem>.<kind>.json else."""
    if artifact_path.name == "model.safetensors":
        return artifact_path.parent / {"size": "export-size.json", "verify": "verify.json"}[kind]
    return artifact_path.with_name(f"{artifact_path.stem}.{kind}.json")


def _bits(activation: torch.Tensor, sem: str) -> torch.Tensor:
    return (activation > (0 if sem == "pm1" else 0.5)).to(torch.uint8)


def verify_artifact(path: Path, run: str | None = None, ckpt: str | None = None, limit: int | None = None,
                    batch_size: int = 500, overrides: list[str] | None = None, dataset: str | None = None) -> dict:
    manifest, tensors = artifact.read(path)
    source = manifest["source"]
    run_dir = Path(run) if run else _source_run(path, source)
    run_cfg = load_run_config(run_dir)
    built = {"method": str(run_cfg.method.name), "architecture": str(run_cfg.architecture.name),
             "dataset": str(OmegaConf.select(run_cfg, "dataset.name", default=""))}
    exported = {key: manifest.get(key) for key in built}
    if built != exported:
        raise ConfigError(f"run={run_dir} trains {built['method']} on {built['architecture']} ({built['dataset']}), but "
                          f"{path} is an export of {exported['method']} on {exported['architecture']} "
                          f"({exported['dataset']}): give the run it came from")
    if dataset is not None and dataset != built["dataset"]:
        raise ConfigError(f"dataset={dataset}: {path} was trained on {built['dataset']}; verify runs on that dataset's "
                          f"test set (dataset.root=<folder> points at a copy)")
    cfg, dm, module, ckpt_path = load_trained(run_dir, ckpt or _source_checkpoint(run_dir, source), overrides)
    norm = json.loads(json.dumps(dm.norm.__dict__))
    if norm != manifest["input_norm"]:
        raise ConfigError(f"dataset.normalize={norm['mode']}: {path} was exported for inputs normalised as "
                          f"{manifest['input_norm']['mode']} (mean {[round(m, 4) for m in manifest['input_norm']['mean']]}); verify checks it on "
                          f"those inputs, so leave the run's normalisation as it was")
    if _sha256_file(ckpt_path) != source["checkpoint_sha256"]:
        raise ConfigError(
            f"{ckpt_path} is not the checkpoint {path} was exported from (sha256 differs): re-export, or pass "
            f"ckpt=<the original checkpoint>"
        )
    net, runtime = module.net.cpu(), StepModel(manifest, tensors)
    layers = {op["attrs"]["layer"]: op["attrs"]["output"] for op in manifest["ops"] if op["kind"] == "threshold"}
    modules = dict(net.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(lambda m, a, out, name=name: captured.__setitem__(name, out))
             for name in layers]
    differ = {name: 0 for name in layers}
    values = {name: 0 for name in layers}
    correct_net = correct_runtime = differ_pred = seen = 0
    split = dm.splits["test"]
    n = len(split.labels) if limit is None else min(limit, len(split.labels))
    scale, shift = dm.norm.affine()
    try:
        with evaluating(net, step=True):
            for start in range(0, n, batch_size):
                images = split.images[start : min(n, start + batch_size)]
                labels = split.labels[start : min(n, start + batch_size)]
                x = images.float() * scale + shift
                recorded: dict[str, torch.Tensor] = {}
                pred_net = net(x).argmax(1)
                pred_runtime = runtime.pixels(images, record=recorded).argmax(1)  # by the file's own normalisation
                correct_net += int((pred_net == labels).sum())
                correct_runtime += int((pred_runtime == labels).sum())
                differ_pred += int((pred_net != pred_runtime).sum())
                seen += len(labels)
                for name, sem in layers.items():
                    differ[name] += int((_bits(captured[name], sem) != recorded[name]).sum())
                    values[name] += recorded[name].numel()
    finally:
        for h in hooks:
            h.remove()
    result = {
        "artifact": str(path), "artifact_sha256": _sha256_file(path), "checkpoint": str(ckpt_path), "samples": seen,
        "popcount": backend(),
        "differing_predictions": differ_pred,
        "accuracy_trained_step": correct_net / seen, "accuracy_exported": correct_runtime / seen,
        "differing_activations": differ, "activations_compared": values,
    }
    try:
        sidecar(path, "verify").write_text(json.dumps(result, indent=2) + "\n")
    except OSError as err:  # an export on a read-only mount is still verified: the result is printed
        log.warning("verify: could not write %s (%s); the result is printed only", sidecar(path, "verify"), err.strerror)
    return result


def _source_run(path: Path, source: dict) -> Path:
    """The run an export came from: where it was, or, moved with its run, the run folder around export/."""
    recorded = Path(source["run_dir"])
    around = path.resolve().parent.parent
    if not (recorded / ".hydra").is_dir() and (around / ".hydra" / "config.yaml").is_file():
        return around
    return recorded


def _source_checkpoint(run_dir: Path, source: dict) -> str:
    """The checkpoint an export came from; in a run that moved, the same file below its new folder (verify's
    sha256 check still proves it the same)."""
    recorded = Path(source["checkpoint"])
    if not recorded.exists():
        try:
            moved = run_dir / recorded.relative_to(source["run_dir"])
        except ValueError:  # exported from a checkpoint outside its run
            return str(recorded)
        if moved.exists():
            return str(moved)
    return str(recorded)


# ---- command line -----------------------------------------------------------------------------------------------
def _key_values(items: list[str], allowed: tuple[str, ...], dotted_prefix: str | None = None) -> tuple[dict, list[str]]:
    plain, dotted = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected key=value (keys: {', '.join(allowed)}{', dataset.<key>' if dotted_prefix else ''})")
        if dotted_prefix and key.startswith(dotted_prefix):
            dotted.append(item)
        elif key in allowed:
            plain[key] = value
        else:
            raise ConfigError(f"{key}: unknown option (allowed: {', '.join(allowed)}{', dataset.<key>' if dotted_prefix else ''})")
    return plain, dotted


def _count(opts: dict[str, str], key: str) -> int:
    value = opts[key]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{key}={value}: allowed is a whole number >= 1")
    return int(value)


def _print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    Console(width=120).print(table)


def main_export(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="binexp export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory made by `binexp train`")
    parser.add_argument("options", nargs="*", default=[], help="ckpt=last|best|binary_weights|bn_reestimated|<path>, out=<.safetensors file or folder>")
    args = parser.parse_args(argv)
    if str(args.run).startswith("run="):  # eval's and verify's form
        raise ConfigError(f"{args.run}: export takes the run directory itself as its first argument: binexp export "
                          f"{str(args.run).removeprefix('run=')}")
    opts, _ = _key_values(args.options, ("ckpt", "out"))
    out = opts.get("out")
    if out == "":
        raise ConfigError("out= is empty: give a .safetensors file or a directory")
    out, sizes = export_run(args.run, opts.get("ckpt", "last"), out)
    kb = lambda v: f"{v / 1024:,.1f} KB"  # noqa: E731
    _print_rows(f"export: {out}", [
        ("file", kb(sizes["file_bytes"])),
        ("float32 model", kb(sizes["float32_bytes"])),
        ("ideal (1 bit per binary weight, float32 rest)", kb(sizes["ideal_bytes"])),
        ("file / ideal", f"{sizes['file_vs_ideal']:.3f}"),
        ("file / float32", f"{sizes['file_vs_float32']:.4f}"),
        ("binary layers: packed / float32", f"{kb(sizes['binary_layers_packed_bytes'])} / {kb(sizes['binary_layers_float32_bytes'])}"
         f" = 1/{1 / sizes['binary_layers_ratio']:.1f}" if sizes["binary_layers_float32_bytes"] else "no binary layers"),
    ])


def main_verify(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="binexp verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="a file written by `binexp export`")
    parser.add_argument("options", nargs="*", default=[], help="run=<dir> ckpt=<path> limit=N batch_size=N dataset=<name> dataset.<key>=<value>")
    args = parser.parse_args(argv)
    opts, dataset = _key_values(args.options, VERIFY_KEYS, dotted_prefix="dataset.")
    result = verify_artifact(
        args.artifact, opts.get("run"), opts.get("ckpt"), _count(opts, "limit") if "limit" in opts else None,
        _count(opts, "batch_size") if "batch_size" in opts else 500, dataset, opts.get("dataset"),
    )
    rows = [
        ("test samples", str(result["samples"])),
        ("differing predictions", str(result["differing_predictions"])),
        ("accuracy, trained network in step mode", f"{100 * result['accuracy_trained_step']:.2f}%"),
        ("accuracy, exported model", f"{100 * result['accuracy_exported']:.2f}%"),
        ("popcount kernel", result["popcount"]),
    ]
    for name, count in result["differing_activations"].items():
        rows.append((f"differing activations {name}", f"{count} / {result['activations_compared'][name]}"))
    _print_rows(f"verify: {args.artifact}", rows)
    # the folding is exact: one differing activation is a wrong export, even where no prediction changes
    differing = {name: count for name, count in result["differing_activations"].items() if count}
    if result["differing_predictions"] or differing:
        layers = ", ".join(f"{name} {count}" for name, count in differing.items()) or "none"
        raise VerificationFailed(f"{result['differing_predictions']} predictions differ between {args.artifact} and "
                                 f"the trained network (differing binary activations: {layers})")
