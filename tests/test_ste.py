"""STE: sign forward, clipped straight-through backward, scaling modes, xnor/popcount, sizes, sweeps."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from binexp.binarize.functional import SignActivation
from binexp.binarize.ste import STE, BinaryConv2d, BinaryLinear, weight_scale
from binexp.export.lower import pack_rows
from binexp.export.popcount import popcount_gemm
from binexp.export.runtime import BinaryLayer, pack_channels
from binexp.models import build_model
from binexp.size import model_size
from tests.conftest import compose_train


def test_sign_activation_forward_is_plus_minus_one_with_sign_of_zero_plus_one():
    act = SignActivation("a", t_clip=0.5)
    assert act(torch.tensor([-3.0, -0.0, 0.0, 2e-8, 0.7])).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("t_clip", [0.25, 0.5, 1.0])
def test_ste_gradient_is_exactly_one_inside_t_clip_and_zero_outside(t_clip):
    x = torch.linspace(-2, 2, 81, requires_grad=True)
    SignActivation("a", t_clip)(x).sum().backward()
    inside = x.detach().abs() <= t_clip
    assert torch.equal(x.grad, inside.float())
    assert 0 < inside.sum() < 81


def test_weights_are_signs_and_get_the_straight_through_gradient():
    layer = BinaryLinear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, -2.0, 0.0, -0.1]]))
    out = layer(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert out.item() == 1 - 2 + 3 - 4
    out.backward()
    assert layer.weight.grad.tolist() == [[1.0, 2.0, 3.0, 4.0]]


@pytest.mark.parametrize("mode, output, input_grad", [
    ("none", -2.0, [1.0, -1.0, 1.0, -1.0]),
    ("backward", -2.0, [1.25, -1.25, 1.25, -1.25]),  # B: alpha * sign(W) only in the input gradient
    ("forward_backward", -2.5, [1.25, -1.25, 1.25, -1.25]),  # FB: alpha * sign(W) in both passes
])
def test_scaling_modes_on_a_hand_made_weight_tensor(mode, output, input_grad):
    """BMXNet's N / B / FB with alpha = mean |W| = 1.25; W's own gradient is out_grad x input in every mode."""
    layer = BinaryLinear(4, 1, bias=False, scaling=mode)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.5, 2.0, -1.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    out = layer(x)
    out.backward()
    assert out.item() == output
    assert x.grad.tolist() == [input_grad]
    assert layer.weight.grad[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 4.0], rel=1e-6)
    assert layer.signs().tolist() == [[1.0, -1.0, 1.0, -1.0]]  # what the export packs; FB's alpha is the output scale
    scale = weight_scale(layer.weight, mode)
    assert (scale is None) if mode != "forward_backward" else scale.item() == 1.25


def test_backward_scaling_keeps_sign_inputs_exact():
    """B scales a gradient only: the values a binary layer computes stay the integers the popcount export reproduces."""
    conv = BinaryConv2d(8, 4, 3, padding=1, bias=False, scaling="backward")
    x = torch.randint(0, 2, (2, 8, 5, 5)).float() * 2 - 1
    plain = BinaryConv2d(8, 4, 3, padding=1, bias=False)
    plain.load_state_dict(conv.state_dict())
    assert torch.equal(conv(x), plain(x)) and torch.equal(conv(x), conv(x).round())


def test_first_and_last_layers_stay_float_unless_asked():
    arch = compose_train(["architecture=lenet", "architecture.conv_act=true", "architecture.batch_norm=true"]).architecture
    net = build_model(arch, STE(), (1, 28, 28), 10)
    kinds = [type(m).__name__ for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert kinds == ["Conv2d", "BinaryConv2d", "BinaryLinear", "Linear"]
    net = build_model(arch, STE(binarize_first=True, binarize_last=True), (1, 28, 28), 10)
    assert all(isinstance(m, (BinaryConv2d, BinaryLinear)) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def test_xnor_popcount_equals_the_dot_product_of_random_sign_vectors():
    """x . w = 2 * popcount(xnor(x, w)) - n, as the exported runtime computes it (bits: +1 -> 1, -1 -> 0; a word's
    padding bits are not counted)."""
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 64, 65, 100, 1000):
        x = torch.from_numpy(rng.choice([-1, 1], size=(5, n))).float()
        w = torch.from_numpy(rng.choice([-1, 1], size=(3, n))).float()
        layer = BinaryLayer({"input": "pm1", "weight_shape": [3, n]}, pack_rows(w))
        matches = popcount_gemm(pack_channels((x >= 0).to(torch.uint8)), pack_channels((w >= 0).to(torch.uint8)))
        padding = 64 * -(-n // 64) - n  # zero bits on both sides: their xnor is 1
        assert torch.equal(torch.from_numpy(2 * (matches - padding) - n).float(), x @ w.T)
        assert torch.equal(layer((x >= 0).to(torch.uint8)).float(), x @ w.T)


def test_model_size_counts_one_bit_per_binary_weight():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), BinaryLinear(16, 8, bias=True), torch.nn.BatchNorm1d(8))
    size = model_size(net)
    floats = 2 * 9 + 2 + 8 + 8 + 8 + 8 + 8  # conv weight and bias, linear bias, BN weight, bias, mean, var
    assert size["size/binary_params"] == 128 and size["size/params"] == 128 + floats
    assert size["size/bytes_binary"] == 128 / 8 + 4 * floats
    assert size["size/bytes_float"] == 4 * (128 + floats)
    net[0].register_buffer("nu", torch.tensor(3.0))  # a schedule's value (SBN's nu): training state, not deployed
    net[0].register_buffer("fixed", torch.ones(2))  # any other float buffer is
    assert model_size(net)["size/params"] == 128 + floats + 2


def test_model_size_counts_the_scales_a_deployed_binary_layer_stores():
    from binexp.binarize.hard import SignConv2d

    bwn = SignConv2d(3, 8, 3, bias=False, scaled=True)  # alpha per output channel: 8 floats
    fb = BinaryLinear(16, 8, bias=False, scaling="forward_backward")  # one mean |W| for the layer
    backward_only = BinaryLinear(16, 8, bias=False, scaling="backward")  # scaled in the gradient only: nothing stored
    size = model_size(torch.nn.Sequential(bwn, fb, backward_only))
    binary = 8 * 27 + 128 + 128
    assert size["size/binary_params"] == binary and size["size/params"] == binary
    assert size["size/bytes_binary"] == binary / 8 + 4 * (8 + 1)
    assert size["size/bytes_float"] == 4 * binary


def test_model_size_leaves_out_the_buffers_the_runs_schedule_writes_whichever_schedules_are_imported():
    """`binexp export` builds no schedule: one kept in a module of its own was not imported, and its values counted
    as stored floats (4 bytes each) against the run's own size/bytes_binary."""
    net = torch.nn.Sequential(BinaryLinear(16, 8, bias=False))
    net[0].register_buffer("tanh_a", torch.tensor(3.0))  # a value an outside schedule writes
    assert model_size(net)["size/params"] == 128 + 1
    assert model_size(net, ("tanh_a",)) == model_size(torch.nn.Sequential(BinaryLinear(16, 8, bias=False)))


def test_section_4_4s_frozen_scales_are_counted_once():
    from binexp.protocol import freeze_sign_weights

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 8, 3, bias=False), torch.nn.Flatten(),
                              torch.nn.Linear(8, 10, bias=False))
    before = model_size(net)
    freeze_sign_weights(net)  # the first conv stays float; the second gets 8 scales (one per unit), the classifier 1
    binary = 8 * 36 + 80
    assert model_size(net) == {"size/params": before["size/params"], "size/binary_params": binary,
                               "size/bytes_float": before["size/bytes_float"],
                               "size/bytes_binary": binary / 8 + 4 * (4 * 27 + 4 + 8 + 1)}


def test_section_4_4_keeps_the_backward_modes_input_gradient_scale():
    """B scales the input gradient by mean |W|; once Section 4.4 sets W to its signs, mean |W| is 1, so the trained
    alpha is kept (the earlier layers' biases and BN finetune with the gradients they trained with) and is not
    deployed: the size table does not count it, and a rebuilt network loads it from the checkpoint."""
    from binexp.protocol import freeze_sign_weights

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), BinaryLinear(16, 8, bias=True, scaling="backward"))
    x = torch.randn(3, 4)

    def input_grad(model):
        model.zero_grad()
        model(x).pow(2).sum().backward()
        return model[0].bias.grad.clone()

    trained, size = input_grad(net), model_size(net)
    alpha = net[1].weight.abs().mean()
    freeze_sign_weights(net)
    assert torch.allclose(input_grad(net), trained, rtol=1e-6) and alpha < 0.5  # not 1/alpha times larger
    assert model_size(net) == size
    rebuilt = torch.nn.Sequential(torch.nn.Linear(4, 16), BinaryLinear(16, 8, bias=True, scaling="backward"))
    freeze_sign_weights(rebuilt)
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(input_grad(rebuilt), input_grad(net))


def test_sign_curves_count_the_inputs_inside_the_gradient_window_ones_and_constant_units():
    x = torch.tensor([[1.0, -0.25, 0.0, 2.0], [0.1, -0.5, 0.5, -3.0], [0.3, -0.9, 0.2, -5.0]])
    act = SignActivation("fc1", t_clip=0.5)
    act.probe_reset()
    act.probing = True
    assert torch.equal(act(x), torch.where(x >= 0, 1.0, -1.0))  # probing leaves the output as it is
    act.probing = False
    act(torch.full((3, 4), 9.0))  # not probing: not counted
    # 7 of 12 inputs have |x| <= 0.5 (the gradient passes at +-t_clip itself); 7 outputs are +1 (sign(0) = +1);
    # units 0, 1 and 2 keep one sign
    assert act.probe_summary(act.probe_counts()) == {"passing": 7 / 12, "ones": 7 / 12, "constant": 0.75}
    everything = SignActivation("fc1", t_clip=None)  # no cancellation: the gradient passes everywhere
    everything.probe_reset()
    everything.probing = True
    everything(x)
    assert everything.probe_summary(everything.probe_counts())["passing"] == 1.0


def test_a_threshold_shifts_the_sign_its_gradient_window_and_its_curves():
    """sign(x - t) per channel (ReActNet's RSign): t gets the negated straight-through gradient, and the curves
    count the shifted input."""
    act = SignActivation("fc1", t_clip=0.5)
    act.threshold = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[0.4, -1.0], [0.5, -1.25], [1.25, 0.0]], requires_grad=True)
    act.probe_reset()
    act.probing = True
    y = act(x)
    assert y.tolist() == [[-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]
    y.sum().backward()
    # x - t: [[-0.1, 0], [0, -0.25], [0.75, 1]]; inside |.| <= 0.5 everywhere but the last row
    assert x.grad.tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert act.threshold.grad.tolist() == [-2.0, -2.0]
    assert act.probe_summary(act.probe_counts()) == {"passing": 4 / 6, "ones": 4 / 6, "constant": 0.0}
    fixed = SignActivation("fc1")  # fixed thresholds are a buffer: saved and moved with the layer, not trained
    fixed.register_buffer("threshold", torch.tensor([0.5, -1.0]))
    assert list(fixed.state_dict()) == ["threshold"] and fixed(x.detach()).tolist() == y.tolist()


def test_sign_layers_curves_wait_for_training_and_never_stop_a_run_as_collapsed(tmp_path):
    from types import SimpleNamespace

    from binexp.binarize.abr import BoundedRectifier
    from binexp.callbacks.binarization import BinarizationCurves, TrainingCollapsed, append_csv, measure
    from binexp.report.curves import curve_kind, read_curves

    class OwnForward(SignActivation):  # written before binarize() existed: records nothing
        def forward(self, x):
            return torch.where(x >= 0, 1.0, -1.0)

    net = torch.nn.Sequential(BoundedRectifier("abr", 4), SignActivation("sign", t_clip=0.5), OwnForward("own"))
    batches = [(torch.randn(8, 4), None)]
    assert list(measure(net, batches, before_training=True)) == ["abr"]  # BN's running statistics mean nothing yet
    stats = measure(net, batches)
    assert list(stats) == ["abr", "sign"]
    append_csv(tmp_path / "b.csv", 4, 0, stats)
    append_csv(tmp_path / "b.csv", 8, 1, stats)  # the header's columns: the union of both kinds', blanks elsewhere
    header = (tmp_path / "b.csv").read_text().splitlines()[0].split(",")
    assert header[3:] == sorted({*stats["abr"], *stats["sign"]})
    curves = read_curves(tmp_path / "b.csv")
    assert curve_kind(curves["sign"]).per_layer == "passing" and curve_kind(curves["abr"]).per_layer == "binary99"
    trainer = SimpleNamespace(global_step=8, default_root_dir=str(tmp_path))
    BinarizationCurves()._check_collapse(trainer, {"sign": {"passing": 0.0, "ones": 1.0, "constant": 1.0}})
    with pytest.raises(TrainingCollapsed, match="100.0% of the units of layer abr"):
        BinarizationCurves()._check_collapse(trainer, {"abr": {"stuck": 1.0}})


def test_the_curves_file_widens_when_sign_layers_start_reporting_after_the_first_record(tmp_path):
    """The record before training has no sign layers; its header was kept, so their rows stayed blank all run."""
    import csv

    from binexp.binarize.abr import BoundedRectifier
    from binexp.callbacks.binarization import append_csv, measure

    net = torch.nn.Sequential(BoundedRectifier("abr", 4), SignActivation("sign", t_clip=0.5))
    batches = [(torch.randn(8, 4), None)]
    path = tmp_path / "b.csv"
    append_csv(path, 0, 0, measure(net, batches, before_training=True))
    stats = measure(net, batches)
    append_csv(path, 4, 0, stats)
    rows = list(csv.DictReader(path.open()))
    assert [(r["step"], r["layer"]) for r in rows] == [("0", "abr"), ("4", "abr"), ("4", "sign")]
    assert set(rows[0]) == {"step", "epoch", "layer", *stats["abr"], *stats["sign"]}
    assert rows[0]["passing"] == "" and rows[2]["passing"] == f"{stats['sign']['passing']:.6g}"
    assert rows[0]["binary99"] == rows[1]["binary99"] == f"{stats['abr']['binary99']:.6g}"


def test_an_ste_run_logs_its_sign_layers_curves_and_reports_them(tmp_path):
    from binexp.report import report
    from binexp.report.curves import curve_kind, read_curves
    from binexp.train import train

    run_dir = tmp_path / "run"
    train(compose_train(["dataset=synthetic", "debug=smoke", "method=ste", "method.t_clip=0.25",
                         "architecture.conv_act=true", "architecture.batch_norm=true"], run_dir=run_dir))
    curves = read_curves(run_dir / "binarization.csv")
    assert list(curves) == ["conv1", "conv2", "fc1"]  # the signs after conv1, conv2 and fc1
    assert curves["fc1"]["step"] == [4, 8] and all(0 < v < 1 for v in curves["fc1"]["passing"])  # from step 4 on
    assert curve_kind(curves["fc1"]).per_layer == "passing"
    _, written = report([run_dir], out=tmp_path / "report")
    assert {"run-binarization.png", "run-binarization-layers.png"} <= {p.name for p in written}
    assert (run_dir / "firing_matrix.npy").exists()  # the last sign layer's units, per class


@pytest.mark.parametrize("method", ["bnn", "bc"])
def test_a_network_binary_already_gets_the_protocol_and_its_derived_checkpoints(tmp_path, method):
    """LeNet without batch norm has no BinaryBN to step (bnn: signs with no BN before them; bc: sign weights and
    ReLUs): its binary accuracy is its regular one, and Section 4.4's network is still derived and saved."""
    from binexp.train import train

    run_dir = tmp_path / "run"
    metrics = train(compose_train(["dataset=synthetic", "debug=smoke", f"method={method}",
                                   "protocol.binary_weights_epochs=1"], run_dir=run_dir))
    assert metrics["protocol/binary"] == metrics["protocol/regular"] == metrics["test/acc"]
    assert "protocol/finetuned" in metrics and "protocol/binary_weights" in metrics
    assert (run_dir / "checkpoints" / "binary_weights.ckpt").exists()


def test_step_mode_changing_a_binary_networks_accuracy_is_flagged(tmp_path, caplog):
    """A shift written into binarize() (not `threshold`) trains one network and steps another: the protocol says so.
    A plain STE network, stepped by BinaryBN, keeps every prediction and gets no such line."""
    from binexp.train import train

    common = ["dataset=synthetic", "debug=smoke", "method=ste", "architecture.batch_norm=true", "architecture.conv_act=true"]
    flag = "step mode changed the test accuracy of a network with nothing to step"
    with caplog.at_level(logging.WARNING, logger="binexp"):
        plain = train(compose_train(common, run_dir=tmp_path / "plain"))
    assert plain["protocol/binary"] == plain["protocol/regular"] and flag not in caplog.text
    with caplog.at_level(logging.WARNING, logger="binexp"):
        shifted = train(compose_train(common + ["method._target_=tests.helpers.ShiftedInsideBinarize"],
                                      run_dir=tmp_path / "shifted"))
    assert shifted["protocol/binary"] != shifted["protocol/regular"] and flag in caplog.text


def test_a_t_clip_multirun_gives_two_runs_and_a_two_row_report(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sweep = tmp_path / "sweep"
    out = subprocess.run(
        [sys.executable, "-m", "binexp.cli", "train", "-m", "method=ste", "method.t_clip=0.25,0.75", "dataset=synthetic",
         "debug=smoke", "trainer.max_epochs=1", "architecture.conv_act=true", "architecture.batch_norm=true",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted(sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    assert all(json.loads(r.read_text())["size/binary_params"] > 0 for r in runs)
    out = subprocess.run([sys.executable, "-m", "binexp.cli", "report", str(sweep)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = (sweep / "report.csv").read_text().splitlines()
    assert rows[0].split(",")[1] == "method.t_clip" and sorted(r.split(",")[1] for r in rows[1:]) == ["0.25", "0.75"]
    assert (sweep / "accuracy-vs-method.t_clip.png").exists()
