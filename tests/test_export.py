"""Export: packing, threshold folding, the file's integrity checks, the popcount runtime, export + verify of a run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binexp.binarize.base import evaluating
from binexp.binarize.functional import SignActivation, sign_ste
from binexp.binarize.ste import STE
from binexp.builder import build
from binexp.cli import main
from binexp.errors import ConfigError
from binexp.evaluate import load_trained
from binexp.export import artifact
from binexp.export.artifact import ArtifactError
from binexp.export.commands import _sha256_file, export_run, verify_artifact
from binexp.export.lower import ExportError, integer_bounds, lower, pack_rows
from binexp.export.popcount import _kernel, popcount_gemm
from binexp.export.runtime import BinaryLayer, StepModel, unpack_weights
from binexp.models import build_model
from binexp.protocol import accuracy
from tests.conftest import compose_train
from tests.test_train import run


# ---- packing ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5), (4, 3, 3, 3), (2, 64), (5, 7, 1, 1)])
def test_pack_unpack_round_trip(shape):
    w = torch.randn(shape)
    w.view(-1)[0] = 0.0  # sign(0) = +1
    bits = pack_rows(w)
    k = int(np.prod(shape[1:]))
    assert bits.shape == (shape[0], (k + 7) // 8) and bits.dtype == np.uint8
    expected = torch.where(w >= 0, 1.0, -1.0).numpy()
    assert np.array_equal(unpack_weights(bits, list(shape)), expected)


@pytest.mark.parametrize("use_and", [False, True])
@pytest.mark.parametrize("words", [5, 40, 200])  # the kernel's scalar path, its AVX2 path, and AVX2 with flushes
def test_compiled_and_numpy_popcount_agree(use_and, words):
    rng = np.random.default_rng(words)
    x = rng.integers(0, 2**64, (37, words), dtype=np.uint64, endpoint=False)
    w = rng.integers(0, 2**64, (11, words), dtype=np.uint64, endpoint=False)
    x[0], w[0] = ~np.uint64(0), ~np.uint64(0)  # all ones: the largest counts
    numpy_counts = popcount_gemm(x, w, use_and, force_numpy=True)
    expected = [[sum(bin(int(a & b) if use_and else int(~(a ^ b)) & (2**64 - 1)).count("1") for a, b in zip(xr, wr))
                 for wr in w] for xr in x]
    assert numpy_counts.tolist() == expected
    if _kernel() is None:
        pytest.skip("the install built no popcount kernel (no C compiler): numpy's counts checked only")
    assert np.array_equal(popcount_gemm(x, w, use_and), numpy_counts)


def test_a_kernel_built_for_instructions_this_cpu_lacks_is_not_loaded(monkeypatch):
    """-march=native builds for the installing machine: on an older CPU of the same cluster the first call died of
    SIGILL. The loader now compares the build's instruction sets with the CPU's flags."""
    from binexp.export import popcount

    if _kernel() is None:
        pytest.skip("the install built no popcount kernel (no C compiler)")
    isa = popcount.compiled_instructions(_kernel())
    if not isa:
        pytest.skip("this build uses no instruction set beyond the baseline")
    try:
        popcount._kernel.cache_clear()
        monkeypatch.setattr(popcount, "cpu_flags", lambda: set(isa[1:]))
        with pytest.warns(UserWarning, match=rf"was compiled for instructions this CPU lacks \({isa[0]}; built with "
                                             r"-march=native on another machine\?\); the popcount runs in numpy"):
            assert popcount._kernel() is None
        popcount._kernel.cache_clear()
        monkeypatch.setattr(popcount, "cpu_flags", lambda: set(isa))
        assert popcount._kernel() is not None
    finally:
        popcount._kernel.cache_clear()


@pytest.mark.parametrize("sem", ["pm1", "01"])
@pytest.mark.parametrize("stride,padding,channels", [(1, 1, 3), (2, 1, 70), (1, 0, 64), (2, 2, 5)])
def test_binary_conv_sums_equal_a_float_conv_of_the_same_values(sem, stride, padding, channels):
    torch.manual_seed(0)
    bits = (torch.rand(2, channels, 7, 6) < 0.5).to(torch.uint8)
    w = torch.randn(4, channels, 3, 3)
    layer = BinaryLayer({"kernel": [3, 3], "stride": [stride] * 2, "padding": [padding] * 2, "input": sem,
                         "weight_shape": list(w.shape)}, pack_rows(w))
    x = bits.float() * 2 - 1 if sem == "pm1" else bits.float()
    expected = F.conv2d(x, torch.where(w >= 0, 1.0, -1.0), stride=stride, padding=padding)
    got = layer(bits)
    assert got.dtype == torch.int32 and torch.equal(got.float(), expected)


@pytest.mark.parametrize("sem", ["pm1", "01"])
def test_binary_linear_sums_equal_a_float_product(sem):
    torch.manual_seed(1)
    bits = (torch.rand(5, 130) < 0.5).to(torch.uint8)
    w = torch.randn(9, 130)
    layer = BinaryLayer({"input": sem, "weight_shape": [9, 130]}, pack_rows(w))
    x = bits.float() * 2 - 1 if sem == "pm1" else bits.float()
    assert torch.equal(layer(bits).float(), x @ torch.where(w >= 0, 1.0, -1.0).T)


# ---- threshold folding -----------------------------------------------------------------------------------------
def test_integer_bounds_reproduce_every_side_and_constant_channels():
    values = torch.arange(-4, 5, dtype=torch.float32)
    x = values[:, None]
    fires = torch.cat([x >= 2, x <= -1, x > 100, x > -100, x >= -4], dim=1)
    direction, bound = integer_bounds(fires, values, "test")
    assert direction.tolist() == [1, -1, 1, 1, 1]
    assert bound[:2].tolist() == [2, 1]  # x >= 2;  -x >= 1 <=> x <= -1
    signed = torch.from_numpy(direction.astype(np.int64))[None] * values.to(torch.int64)[:, None]
    assert torch.equal(signed >= torch.from_numpy(bound.astype(np.int64))[None], fires)


def test_a_channel_that_is_not_a_threshold_is_refused():
    values = torch.arange(-3, 4, dtype=torch.float32)
    fires = (values.abs() <= 1)[:, None]
    with pytest.raises(ExportError, match=r"layer conv9: channels \[0\] do not fire on one side"):
        integer_bounds(fires, values, "layer conv9")


class _HandMadeSign(nn.Module):
    def forward(self, x):
        return torch.where(x >= 0, 1.0, -1.0)


def test_an_unknown_op_is_refused_naming_its_layer_and_what_exports():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _HandMadeSign(), nn.Linear(3, 2))
    with pytest.raises(ExportError, match=r"^ge: function ge in layer 2 \(_HandMadeSign\) has no export rule; an "
                                          r"activation whose forward is sign subclasses binexp\.binarize\.functional"
                                          r"\.SignActivation \(its binarize\(\) has the method's own backward\)"):
        lower(net, (1, 2, 2))


class _ShapeReadingPReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.relu(x - self.shift.view(1, -1, *([1] * (x.dim() - 2))))


def test_a_forward_torch_fx_cannot_trace_is_refused_naming_its_layer():
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sequential(nn.BatchNorm2d(3), _ShapeReadingPReLU(3)), nn.Flatten())
    with pytest.raises(ExportError, match=r"^layer 1\.1 \(_ShapeReadingPReLU\): torch\.fx cannot trace its forward "
                                          r"\(\w+: .*\); the export reads a network through torch\.fx, so a forward "
                                          r"must not branch on or iterate over tensor values or shapes$"):
        lower(net, (1, 5, 5))


class _HandMadeBinaryLinear(nn.Linear):
    def forward(self, x):
        return nn.functional.linear(x, torch.where(self.weight >= 0, 1.0, -1.0), self.bias)


def test_a_weighted_layer_with_its_own_forward_is_refused_not_exported_with_its_latent_weights():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _HandMadeBinaryLinear(3, 2))
    with pytest.raises(ExportError, match=r"^layer 2 \(_HandMadeBinaryLinear\) overrides the forward of Linear, which "
                                          r"the export would not run; "):
        lower(net, (1, 2, 2))


def randomize(net: nn.Module, seed: int = 0) -> None:
    """Trained-looking parameters: BN statistics, gammas of both signs and some exactly 0, slopes of both signs
    and some 0, nonzero biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 2, generator=g)
                m.running_var.uniform_(0.5, 4, generator=g)
                m.weight.normal_(0, 1, generator=g)
                m.weight[::5] = 0.0
                m.bias.normal_(0, 1, generator=g)
            if hasattr(m, "slope"):
                m.slope.normal_(0, 3, generator=g)
                m.slope[::7] = 0.0
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0, 0.5, generator=g)


def step_outputs(net: nn.Module, x: torch.Tensor, layers: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    modules = dict(net.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, out)) for n in layers]
    with evaluating(net, step=True):
        logits = net(x)
    for h in hooks:
        h.remove()
    return logits, seen


CASES = [
    ("lenet", "abr", ["architecture.batch_norm=true", "architecture.conv_act=true"]),
    ("lenet", "fp", ["architecture.batch_norm=true", "architecture.conv_act=true"]),
    ("lenet", "ste", ["architecture.batch_norm=true", "architecture.conv_act=true", "method.scaling=forward_backward"]),
    ("cifar_quick", "abr", []),
    ("vgg_small", "xnor", []),
    ("vgg_small", "sbn", ["method.base=bnn"]),
    ("resnet18", "ste", []),
    ("densenet13", "bnn", []),
    ("resnet18", "bwn", []),
    ("resnet18", "ste", ["architecture.shortcut=binary", "method.scaling=forward_backward"]),
    ("resnet26_bottleneck", "xnor", ["architecture.shortcut=binary"]),
]


@pytest.mark.parametrize("arch,method,extra", CASES)
def test_exported_model_computes_what_the_step_mode_network_computes(arch, method, extra):
    cfg = compose_train([f"architecture={arch}", f"method={method}", "dataset=synthetic", "architecture.width=0.25", *extra])
    shape = (1, 28, 28) if arch == "lenet" else (3, 32, 32)
    net = build_model(cfg.architecture, build(cfg.method), shape, num_classes=10)
    randomize(net)
    ops, inp, out = lower(net, shape)
    names = [op.name for op in ops]
    assert len(names) == len(set(names))  # a value read twice (a residual's sum and a batch norm) is computed once
    manifest, tensors = artifact.manifest_and_tensors(ops, inp, out, {})
    thresholds = [op for op in manifest["ops"] if op["kind"] == "threshold"]
    x = torch.randn(24, *shape) * 2
    logits, activations = step_outputs(net, x, [op["attrs"]["layer"] for op in thresholds])
    recorded: dict[str, torch.Tensor] = {}
    got = StepModel(manifest, tensors)(x, record=recorded)
    assert torch.equal(got, logits)  # bit for bit, not approximately
    for op in thresholds:
        layer, sem = op["attrs"]["layer"], op["attrs"]["output"]
        expected = (activations[layer] > (0 if sem == "pm1" else 0.5)).to(torch.uint8)
        assert torch.equal(recorded[layer], expected), layer
    if method in ("xnor", "sbn", "ste", "bnn"):  # binary activations feed binary layers: popcount does the work
        assert any(op["kind"].startswith("binary_") for op in manifest["ops"])


class _ThresholdedSign(SignActivation):
    def __init__(self, name: str, channels: int):
        super().__init__(name, t_clip=0.5)
        self.threshold = nn.Parameter(torch.zeros(channels))


class _ThresholdedSTE(STE):
    def act(self, name, channels, *, last=False):
        return _ThresholdedSign(name, channels)


@pytest.mark.parametrize("arch,extra", [("lenet", ["architecture.batch_norm=true", "architecture.conv_act=true"]),
                                        ("resnet18", []), ("densenet13", [])])
def test_learned_thresholds_fold_into_the_export_and_the_step_form_is_the_trained_network(arch, extra):
    """sign(x - t) after a binary layer (integer sums) and after float values: the export computes the step form
    bit for bit, and the step form (its BN kept float) predicts what the network in eval mode does."""
    cfg = compose_train([f"architecture={arch}", "dataset=synthetic", "architecture.width=0.25", *extra])
    shape = (1, 28, 28) if arch == "lenet" else (3, 32, 32)
    net = build_model(cfg.architecture, _ThresholdedSTE(), shape, num_classes=10)
    randomize(net)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, _ThresholdedSign):
                m.threshold.normal_(0, 1, generator=g)
                m.threshold[::3] = 0.0
    ops, inp, out = lower(net, shape)
    manifest, tensors = artifact.manifest_and_tensors(ops, inp, out, {})
    thresholds = [op for op in manifest["ops"] if op["kind"] == "threshold"]
    inputs = {op["attrs"]["input"] for op in thresholds}  # after binary sums (conv -> BN -> sign) and after floats
    assert inputs == ({"float"} if arch == "densenet13" else {"int", "float"})
    x = torch.randn(24, *shape) * 2
    logits, activations = step_outputs(net, x, [op["attrs"]["layer"] for op in thresholds])
    recorded: dict[str, torch.Tensor] = {}
    assert torch.equal(StepModel(manifest, tensors)(x, record=recorded), logits)
    for op in thresholds:
        assert torch.equal(recorded[op["attrs"]["layer"]], (activations[op["attrs"]["layer"]] > 0).to(torch.uint8))
    with evaluating(net):
        assert torch.equal(net(x).argmax(1), logits.argmax(1))
    with torch.no_grad():  # the thresholds are in the file: without them the model computes something else
        for m in net.modules():
            if isinstance(m, _ThresholdedSign):
                m.threshold.zero_()
    manifest0, tensors0 = artifact.manifest_and_tensors(*lower(net, shape), {})
    assert not torch.equal(StepModel(manifest0, tensors0)(x), logits)


class _ShiftedInBinarize(SignActivation):
    def binarize(self, x):
        return sign_ste(x - 0.01, self.t_clip)


def test_an_activation_whose_binarize_is_not_sign_is_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), _ShiftedInBinarize("fc1"), nn.Linear(3, 2))
    with pytest.raises(ExportError, match=r"^layer 2 \(_ShiftedInBinarize\): binarize\(x\) is not sign\(x\) in the "
                                          r"forward \(at x=0 it gives \[-1.0\]\); .*a shift goes in the activation's "
                                          r"`threshold`"):
        lower(net, (1, 2, 2))


def test_gamma_zero_and_negative_gamma_channels_threshold_like_the_network():
    cfg = compose_train(["architecture=vgg_small", "method=bnn", "dataset=synthetic", "architecture.width=0.125"])
    net = build_model(cfg.architecture, build(cfg.method), (3, 32, 32), num_classes=10)
    randomize(net, seed=3)
    bn = [m for m in net.features if isinstance(m, nn.BatchNorm2d)][1]  # conv2 -> pool -> BN: on integer sums
    with torch.no_grad():
        bn.weight[:4] = torch.tensor([0.0, 0.0, -1.5, 2.0])
        bn.bias[:4] = torch.tensor([0.5, -0.5, 0.3, -0.2])
    ops, inp, out = lower(net, (3, 32, 32))
    manifest, tensors = artifact.manifest_and_tensors(ops, inp, out, {})
    op = next(o for o in manifest["ops"] if o["kind"] == "threshold" and o["attrs"]["input"] == "int")
    direction = tensors[op["tensors"]["direction"]]
    bound = tensors[op["tensors"]["bound"]]
    assert direction[2] == -1 and direction[3] == 1  # gamma < 0 flips the comparison
    assert bound[0] == -(2**30) and bound[1] == 2**30  # gamma = 0: sign(beta), always / never
    x = torch.randn(16, 3, 32, 32)
    logits, _ = step_outputs(net, x, [])
    assert torch.equal(StepModel(manifest, tensors)(x), logits)


# ---- the file --------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    cfg = compose_train(["architecture=lenet", "method=ste", "dataset=synthetic", "architecture.width=0.25"])
    net = build_model(cfg.architecture, build(cfg.method), (1, 28, 28), num_classes=10)
    ops, inp, out = lower(net, (1, 28, 28))
    manifest, tensors = artifact.manifest_and_tensors(ops, inp, out, {"method": "ste"})
    path = tmp_path / "model.safetensors"
    artifact.write(path, manifest, tensors)
    return path


def test_a_written_file_reads_back_identically(saved):
    manifest, tensors = artifact.read(saved)
    assert manifest["format"] == "binexp-step" and manifest["version"] == 2 and manifest["method"] == "ste"
    assert set(tensors) == set(manifest["checksums"])
    assert any(name.endswith("weight_bits") for name in tensors)


def test_a_truncated_file_is_refused(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) - 100])
    with pytest.raises(ArtifactError, match="truncated or damaged"):
        artifact.read(saved)
    saved.write_bytes(data[:50])
    with pytest.raises(ArtifactError, match="truncated"):
        artifact.read(saved)


def test_an_altered_tensor_is_refused(saved):
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0xFF  # a bit flip in the last tensor's bytes
    saved.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its checksum; the file was altered or damaged"):
        artifact.read(saved)


def test_an_altered_tensor_type_is_refused(saved):
    data = saved.read_bytes()
    header = data[: 8 + int.from_bytes(data[:8], "little")]
    name = next(n for n in artifact.read(saved)[1] if n.endswith(".bias"))
    entry = f'"{name}":{{"dtype":"F32"'.encode()
    assert header.count(entry) == 1
    saved.write_bytes(data.replace(entry, entry.replace(b"F32", b"I32"), 1))  # same bytes, read as integers
    with pytest.raises(ArtifactError, match=f"tensor {name} does not match its checksum; the file was altered"):
        artifact.read(saved)


def test_a_version_1_file_still_reads(saved, tmp_path):
    manifest, tensors = artifact.read(saved)
    manifest["version"] = 1  # its checksums covered the bytes only
    manifest["checksums"] = {n: artifact._sha256(a.tobytes())[:16] for n, a in tensors.items()}
    old = tmp_path / "v1.safetensors"
    artifact.write(old, manifest, tensors)
    read_manifest, read_tensors = artifact.read(old)
    assert read_manifest == manifest and all(np.array_equal(read_tensors[n], a) for n, a in tensors.items())


def test_an_altered_manifest_is_refused(saved):
    data = saved.read_bytes()
    altered = data.replace(b'\\"method\\": \\"ste\\"', b'\\"method\\": \\"abr\\"')
    assert altered != data
    saved.write_bytes(altered)
    with pytest.raises(ArtifactError, match="manifest does not match its checksum"):
        artifact.read(saved)


def test_a_file_whose_version_is_no_number_is_refused(saved, tmp_path):
    manifest, tensors = artifact.read(saved)
    odd = tmp_path / "odd.safetensors"
    artifact.write(odd, {**manifest, "version": "2"}, tensors)
    with pytest.raises(ArtifactError, match=r"odd.safetensors: format version '2' is not a version number"):
        artifact.read(odd)


def test_other_files_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        artifact.read(tmp_path / "missing.safetensors")
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(ArtifactError, match="without a binexp manifest"):
        artifact.read(plain)


# ---- a trained run ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ste", "abr"])
def test_export_and_verify_a_trained_run(tmp_path, method, capsys):
    extra = ["architecture.batch_norm=true", "architecture.conv_act=true"] if method == "ste" else []
    run_dir, _ = run(tmp_path, [f"method={method}", *extra])
    path, sizes = export_run(run_dir)
    assert path == run_dir / "export" / "model.safetensors" and path.stat().st_size == sizes["file_bytes"]
    assert json.loads((run_dir / "export" / "export-size.json").read_text()) == sizes
    if method == "abr":  # float weights, binary activations: nothing to pack
        assert sizes["binary_layers_ratio"] is None and sizes["file_vs_ideal"] <= 1.1
    else:
        assert sizes["binary_layers_ratio"] == pytest.approx(1 / 32, rel=0.02)
        assert 0.9 <= sizes["file_vs_ideal"] <= 1.1
    result = verify_artifact(path)
    assert result["differing_predictions"] == 0
    assert result["accuracy_exported"] == result["accuracy_trained_step"]
    assert result["samples"] > 0 and sum(result["differing_activations"].values()) == 0
    assert json.loads((run_dir / "export" / "verify.json").read_text())["differing_predictions"] == 0
    assert json.loads((run_dir / "export" / "verify.json").read_text())["artifact_sha256"] == _sha256_file(path)
    export_run(run_dir)  # a new export: the verify.json beside it was about the file it replaced
    assert not (run_dir / "export" / "verify.json").exists()


def test_section_4_4_binary_weight_network_is_saved_and_exports_its_weights_as_bits(tmp_path):
    run_dir, metrics = run(tmp_path, ["method=abr", "method.scope=all", "protocol.binary_weights_epochs=1"])
    _, dm, module, path = load_trained(run_dir, "binary_weights")
    assert path == run_dir / "checkpoints" / "binary_weights.ckpt"
    layers = [m for m in module.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert type(layers[0]) is nn.Conv2d  # the first layer keeps its float weights, as trained: only biases and slopes train
    trained = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    first = next(k for k in trained if k.endswith(".weight"))
    assert torch.equal(module.net.state_dict()[first.removeprefix("net.")], trained[first])
    assert not torch.equal(module.net.state_dict()["features.0.bias"], trained["net.features.0.bias"])
    assert all(set(m.weight.unique().tolist()) <= {-1.0, 1.0} and not m.weight.requires_grad for m in layers[1:])
    assert accuracy(module.net, dm.batches("test"), step=True) == metrics["protocol/binary_weights"]
    last, _ = export_run(run_dir)
    out, sizes = export_run(run_dir, "binary_weights")  # beside the last checkpoint's export, not over it
    assert (last.name, out.name) == ("model.safetensors", "model-binary_weights.safetensors") and last.exists()
    assert sizes["binary_layers_ratio"] == pytest.approx(1 / 32, rel=0.02)
    assert json.loads((out.parent / "model-binary_weights.size.json").read_text()) == sizes
    result = verify_artifact(out)
    assert result["differing_predictions"] == 0 and sum(result["differing_activations"].values()) == 0
    assert json.loads((out.parent / "model-binary_weights.verify.json").read_text()) == json.loads(json.dumps(result))


def test_export_and_verify_from_the_command_line(tmp_path, capsys):
    run_dir, _ = run(tmp_path, ["method=ste"])
    main(["export", str(run_dir), "out=" + str(tmp_path / "m.safetensors")])
    assert "file / ideal" in capsys.readouterr().out
    main(["verify", str(tmp_path / "m.safetensors"), "limit=64"])
    out = capsys.readouterr().out
    assert re.search(r"test samples\W+64\b", out) and re.search(r"differing predictions\W+0\b", out)
    with pytest.raises(SystemExit) as err:
        main(["verify", str(tmp_path / "m.safetensors"), "limt=64"])
    assert err.value.code == 2
    assert "limt: unknown option (allowed: run, ckpt, limit, batch_size, dataset, dataset.<key>)" in capsys.readouterr().err
    main(["verify", str(tmp_path / "m.safetensors"), "dataset=synthetic", "limit=8"])  # its own dataset: fine
    assert re.search(r"test samples\W+8\b", capsys.readouterr().out)
    with pytest.raises(SystemExit) as err:
        main(["verify", str(tmp_path / "m.safetensors"), "dataset=mnist"])
    assert err.value.code == 2 and "dataset=mnist: " in capsys.readouterr().err
    for option, message in [("limit=abc", "limit=abc: allowed is a whole number >= 1"),
                            ("batch_size=0", "batch_size=0: allowed is a whole number >= 1"),
                            ("limit=-3", "limit=-3: allowed is a whole number >= 1"),
                            ("dataset.nmu_test=8", "dataset.nmu_test: not a key of the config of")]:
        with pytest.raises(SystemExit) as err:
            main(["verify", str(tmp_path / "m.safetensors"), option])
        assert err.value.code == 2 and message in capsys.readouterr().err, option


def test_verify_fails_on_a_differing_activation_even_with_every_prediction_equal(monkeypatch, capsys):
    result = {"samples": 8, "differing_predictions": 0, "accuracy_trained_step": 0.5, "accuracy_exported": 0.5,
              "popcount": "numpy", "differing_activations": {"conv1": 0, "fc1": 1},
              "activations_compared": {"conv1": 64, "fc1": 32}}
    monkeypatch.setattr("binexp.export.commands.verify_artifact", lambda *args: result)
    with pytest.raises(SystemExit) as err:
        main(["verify", "m.safetensors"])
    assert err.value.code == 1
    assert capsys.readouterr().err == ("binexp: error: 0 predictions differ between m.safetensors and the trained "
                                       "network (differing binary activations: fc1 1)\n")


def test_verify_refuses_a_checkpoint_that_is_not_the_exported_one(tmp_path):
    run_dir, _ = run(tmp_path, ["method=ste"])
    path, _ = export_run(run_dir)
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))[0]
    state = torch.load(best, weights_only=False)
    state["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    torch.save(state, run_dir / "checkpoints" / "last.ckpt")
    with pytest.raises(Exception, match="is not the checkpoint .* was exported from"):
        verify_artifact(path)


def test_verify_that_cannot_write_its_json_still_returns_its_result(tmp_path, monkeypatch, caplog):
    run_dir, _ = run(tmp_path, ["method=ste"])
    path, _ = export_run(run_dir)
    (tmp_path / "a-file").write_text("")
    unwritable = tmp_path / "a-file" / "verify.json"  # its folder is a file: a real OSError
    monkeypatch.setattr("binexp.export.commands.sidecar", lambda artifact_path, kind: unwritable)
    result = verify_artifact(path, limit=16)
    assert result["samples"] == 16 and result["differing_predictions"] == 0
    assert f"verify: could not write {unwritable} (Not a directory); the result is printed only" in caplog.text


def test_verify_refuses_other_data_than_the_export_was_made_for(tmp_path):
    run_dir, _ = run(tmp_path, ["method=ste"])
    path, _ = export_run(run_dir)
    with pytest.raises(ConfigError, match=r"dataset.normalize=caffe, but the network trained on inputs normalised as "
                                          r"mean_only; it cannot be tested on others"):
        verify_artifact(path, overrides=["dataset.normalize=caffe"])
    manifest, tensors = artifact.read(path)
    moved = {**manifest["input_norm"], "mean": [0.25]}  # a file whose record disagrees with the run's checkpoint
    artifact.write(path, {**manifest, "input_norm": moved}, tensors)
    with pytest.raises(ConfigError, match=r"dataset.normalize=mean_only: .*model.safetensors was exported for inputs "
                                          r"normalised as mean_only \(mean \[0.25\]\); verify checks it on those inputs"):
        verify_artifact(path)
    artifact.write(path, {**manifest, "dataset": "mnist"}, tensors)  # as if exported from an MNIST run
    with pytest.raises(ConfigError, match=r"run=.* trains ste on lenet \(synthetic\), but .* is an export of ste on "
                                          r"lenet \(mnist\): give the run it came from"):
        verify_artifact(path)


def test_export_targets_and_the_checkpoints_it_reads_are_checked(tmp_path):
    run_dir, _ = run(tmp_path, ["method=ste"])
    last = run_dir / "checkpoints" / "last.ckpt"
    out, _ = export_run(run_dir, str(last))  # the run's last.ckpt by its path: the same export as ckpt=last
    assert out == run_dir / "export" / "model.safetensors"
    (tmp_path / "exports").mkdir()
    out, _ = export_run(run_dir, "last", tmp_path / "exports")  # a directory: the default name inside it
    assert out == tmp_path / "exports" / "model.safetensors" and out.is_file()
    with pytest.raises(ConfigError, match="ckpt=nope"):
        export_run(run_dir, "nope", str(tmp_path / "new") + "/")
    assert not (tmp_path / "new").exists()  # a refused export makes no folder
    out, _ = export_run(run_dir, "last", str(tmp_path / "new") + "/")
    assert out == tmp_path / "new" / "model.safetensors" and out.is_file()
    for target in (run_dir / "metrics.json" / "model.safetensors", str(run_dir / "metrics.json") + "/"):
        with pytest.raises(ConfigError, match=f"out={target}: cannot make the folder {run_dir / 'metrics.json'} "
                                              f"\\({run_dir / 'metrics.json'} is a file\\)"):
            export_run(run_dir, "last", target)
    before = last.read_bytes()
    with pytest.raises(ConfigError, match=r"out=.*last.ckpt: an export is a .safetensors file \(e.g. out=.*last.safetensors\)"):
        export_run(run_dir, "last", last)  # it would have overwritten the checkpoint it reads
    assert last.read_bytes() == before
    for ckpt, message in [("", "ckpt= is empty"), ("checkpoints", r"checkpoints is a directory \(allowed: last, best"),
                          ("metrics.json", "metrics.json is not a checkpoint torch can read")]:
        with pytest.raises(ConfigError, match=message):
            export_run(run_dir, ckpt)  # a relative path is looked for in the run too
    other, _ = run(tmp_path, ["method=ste", "architecture.width=2"], name="wide")
    with pytest.raises(ConfigError, match=r"ckpt=.*wide/checkpoints/last.ckpt: .* was trained as another job than .*run's "
                                          r"\(architecture.width: 2.0 there, 1.0 here\); give the run directory that "
                                          r"trained it as run=$"):
        export_run(run_dir, str(other / "checkpoints" / "last.ckpt"))


def test_verify_finds_a_moved_run_and_refuses_a_run_of_another_network(tmp_path):
    run_dir, _ = run(tmp_path, ["method=ste"])
    export_run(run_dir)
    abr, _ = run(tmp_path, ["method=abr"], name="abr")
    with pytest.raises(ConfigError, match=r"run=.*abr trains abr on lenet \(synthetic\), but .*model.safetensors is an "
                                          r"export of ste on lenet \(synthetic\): give the run it came from"):
        verify_artifact(run_dir / "export" / "model.safetensors", run=str(abr))
    moved = run_dir.rename(tmp_path / "moved")
    result = verify_artifact(moved / "export" / "model.safetensors", limit=64)  # its run and checkpoint, found
    assert result["checkpoint"] == str(moved / "checkpoints" / "last.ckpt") and result["differing_predictions"] == 0
    with pytest.raises(ArtifactError, match=f"{moved}: a directory; verify takes an export file, e.g. "
                                            f"{moved / 'export' / 'model.safetensors'}"):
        artifact.read(moved)
    with pytest.raises(ArtifactError, match="not a binexp export, or a truncated one"):
        artifact.read(moved / "checkpoints" / "last.ckpt")


def test_the_runtime_refuses_inputs_of_another_size_and_takes_an_empty_batch(tmp_path):
    """Inputs of another size can pack into as many 64-bit words: the sums came out without an error."""
    from binexp.export.runtime import StepModel

    run_dir, _ = run(tmp_path, ["method=bnn", "architecture=vgg_small", "architecture.width=0.012"])
    path, _ = export_run(run_dir)
    model = StepModel(*artifact.read(path))
    assert model(torch.zeros(0, 1, 28, 28)).shape == (0, 10)
    with pytest.raises(ValueError, match=r"^input of shape \(2, 3, 28, 28\): the model was exported for images of "
                                         r"shape \(1, 28, 28\), given as \(N, C, H, W\)$"):
        model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"^classifier.1: input of shape \(2, \d+\), the exported layer takes "
                                         r"\(N, \d+\)$"):
        model(torch.zeros(2, 1, 20, 20))


def test_a_popcount_library_that_does_not_load_falls_back_to_numpy(tmp_path, monkeypatch):
    import importlib.machinery

    from binexp.export import popcount

    damaged = tmp_path / f"_popcount{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    damaged.write_bytes(b"not a library")
    monkeypatch.setattr(popcount, "__file__", str(tmp_path / "popcount.py"))
    popcount._kernel.cache_clear()
    try:
        with pytest.warns(UserWarning, match="does not load"):
            assert popcount.backend() == "numpy"
        x = np.array([[5, 7]], dtype=np.uint64)
        assert popcount.popcount_gemm(x, x).tolist() == [[128]]
    finally:
        popcount._kernel.cache_clear()
