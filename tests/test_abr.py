"""ABR: the bounded rectifier, slope growth, the two-phase schedule, scopes, curves, protocol and resume."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binexp.binarize.abr import ABR, BoundedRectifier, rectifiers
from binexp.binarize.base import evaluating, step_mode
from binexp.builder import build
from binexp.callbacks.binarization import TrainingCollapsed, clear_units, firing_matrix, measure
from binexp.errors import ConfigError
from binexp.evaluate import load_trained
from binexp.models import build_model
from binexp.protocol import FrozenSignConv2d, FrozenSignLinear, PhaseEvaluation, accuracy, freeze_sign_weights
from binexp.schedules import Progress, TwoPhase
from binexp.train import train
from tests.conftest import SMOKE, compose_train


def rectifier(slopes: list[float]) -> BoundedRectifier:
    r = BoundedRectifier("act", len(slopes))
    with torch.no_grad():
        r.slope.copy_(torch.tensor(slopes))
    return r


def test_forward_is_the_clamped_line_per_channel():
    r = rectifier([1.0, 2.0, -1.0])
    y = torch.tensor([[0.2, 0.2, 0.2], [-1.0, 0.4, -0.7]])
    assert torch.allclose(r(y), torch.tensor([[0.7, 0.9, 0.3], [0.0, 1.0, 1.0]]))


def test_conv_input_shares_one_slope_per_channel():
    r = rectifier([1.0, 4.0])
    y = torch.full((1, 2, 3, 3), 0.1)
    out = r(y)
    assert torch.allclose(out[0, 0], torch.full((3, 3), 0.6)) and torch.allclose(out[0, 1], torch.full((3, 3), 0.9))


def test_step_form_agrees_with_the_forward_wherever_the_output_is_saturated():
    torch.manual_seed(0)
    r = rectifier(torch.randn(16).mul(3).tolist())  # negative slopes too
    y = torch.randn(64, 16, 5, 5) * 2
    smooth = r(y)
    with step_mode(r):
        stepped = r(y)
    saturated = (smooth == 0) | (smooth == 1)
    assert saturated.float().mean() > 0.3
    assert torch.equal(stepped[saturated], smooth[saturated])
    assert set(stepped.unique().tolist()) <= {0.0, 1.0}


def test_gradient_of_the_slope_is_eq_2():
    r = rectifier([1.0, 1.0])
    y = torch.tensor([[0.3, 2.0], [-0.2, 0.1]])
    r(y).sum().backward()
    # dE/dk = sum of y over the units in the linear interval; 2.0 saturates (k*y + 0.5 > 1)
    assert r.slope.grad.tolist() == pytest.approx([0.3 - 0.2, 0.1])


def test_under_bf16_autocast_the_slope_gradient_is_summed_in_float32():
    """trainer=gpu's bf16-mixed: k*y in bfloat16 rounded k and summed its gradient in bfloat16, 7-11% off the
    float32 gradient on the same inputs; the output itself is still bfloat16."""
    torch.manual_seed(0)
    y = (3 * torch.randn(64, 8, 6, 6)).bfloat16()
    grad = torch.randn(64, 8, 6, 6).bfloat16()
    rect = BoundedRectifier("act1", 8)
    with torch.no_grad():
        rect.slope.copy_(torch.linspace(0.3, 7.7, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rect(y)
    assert out.dtype == torch.bfloat16
    out.backward(grad)
    reference = BoundedRectifier("act1", 8)
    reference.load_state_dict(rect.state_dict())
    torch.clamp(reference.slope.view(1, -1, 1, 1) * y.float() + 0.5, 0, 1).backward(grad.float())
    torch.testing.assert_close(rect.slope.grad, reference.slope.grad, rtol=1e-5, atol=1e-5)


def test_growth_outside_the_lr_moves_k_by_exactly_lambda_over_abs_k():
    r = rectifier([0.5, 2.0, -4.0])
    r.slope_lambda.fill_(0.01)
    before = r.slope.detach().clone()
    r.grow()
    assert torch.equal(r.slope.detach(), before + torch.tensor([0.01 / 0.5, 0.01 / 2.0, -0.01 / 4.0]))


def test_in_loss_growth_has_the_gradient_of_minus_lambda_log_abs_k():
    method = ABR(growth="in_loss")
    net = torch.nn.Sequential(method.act("fc1", 2, last=True))
    net[0].slope_lambda.fill_(0.1)
    with torch.no_grad():
        net[0].slope.copy_(torch.tensor([2.0, -0.5]))
    method.regularization(net).backward()
    assert net[0].slope.grad.tolist() == pytest.approx([-0.1 / 2.0, -0.1 / -0.5])
    assert ABR(growth="outside").regularization(net) is None


def test_two_phase_schedule_values_at_given_steps():
    schedule = TwoPhase(phase1_epochs=3, lambda1=1e-4, lambda2=1e-2)
    at = lambda step: schedule.values(Progress(step, steps_per_epoch=10, max_epochs=5))  # noqa: E731
    assert at(0) == {"slope_lambda": 1e-4, "phase": 1.0}
    assert at(29) == {"slope_lambda": 1e-4, "phase": 1.0}
    assert at(30) == {"slope_lambda": 1e-2, "phase": 2.0}
    assert at(49) == {"slope_lambda": 1e-2, "phase": 2.0}
    assert schedule.milestones() == {"phase1": 3}


def test_phase_two_weight_decay_is_a_schedule_value_of_phase_two_only():
    schedule = TwoPhase(phase1_epochs=3, weight_decay2=0.0)
    at = lambda step: schedule.values(Progress(step, steps_per_epoch=10, max_epochs=5))  # noqa: E731
    assert "weight_decay" not in at(29)
    assert at(30)["weight_decay"] == 0.0
    with pytest.raises(ConfigError, match=r"^schedule.weight_decay2=-0.1: allowed is null or a finite number >= 0$"):
        TwoPhase(weight_decay2=-0.1)


def test_phase_two_weight_decay_reaches_the_decaying_parameters_only(tmp_path):
    run_dir, _ = run(tmp_path, ["optimizer.weight_decay=0.25", "schedule.weight_decay2=0.125", "trainer.max_epochs=3",
                                "schedule.phase1_epochs=1"])
    groups = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"]
    assert [(g["decays"], g["weight_decay"]) for g in groups] == [(True, 0.125), (False, 0.0)]


def test_phase_one_longer_than_training_is_refused():
    with pytest.raises(ConfigError, match="schedule.phase1_epochs=5 with trainer.max_epochs=5"):
        TwoPhase(phase1_epochs=5).check(5)


def test_default_phase_one_is_half_of_training():
    cfg = compose_train(["method=abr", "trainer.max_epochs=9"])
    assert cfg.schedule.name == "two_phase" and build(cfg.schedule).phase1_epochs == 4


@pytest.mark.parametrize(
    "scope, expected",
    [("all", ["conv1", "conv2", "conv3", "fc1"]), ("last", ["fc1"]), (["conv2", "fc1"], ["conv2", "fc1"])],
)
def test_scope_picks_the_binarized_activations(scope, expected):
    net = build_model(compose_train(["architecture=cifar_quick"]).architecture, ABR(scope=scope), (3, 32, 32), 10)
    assert [r.layer_name for r in rectifiers(net)] == expected
    relus = [m for m in net.modules() if type(m) is torch.nn.ReLU]
    assert len(relus) == 4 - len(expected)


def test_fp_thresholds_only_its_scopes_relus_to_a_unit_step_in_step_mode():
    from binexp.binarize.fp import FloatReLU, ThresholdableReLU

    net = build_model(compose_train(["architecture=cifar_quick"]).architecture, FloatReLU(scope="last"), (3, 32, 32), 10)
    (fc1,) = [m for m in net.modules() if isinstance(m, ThresholdableReLU)]
    assert fc1.layer_name == "fc1" and len([m for m in net.modules() if type(m) is torch.nn.ReLU]) == 3
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-6, 3.5])
    assert torch.equal(fc1(x), torch.tensor([0.0, 0.0, 0.0, 1e-6, 3.5]))
    with step_mode(net):
        assert torch.equal(fc1(x), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))  # 1[x > 0]: zero stays off

def test_unknown_scope_names_are_refused_with_the_allowed_ones():
    arch = compose_train(["architecture=cifar_quick"]).architecture
    with pytest.raises(ConfigError, match=r"\['conv9'\].*allowed: conv1, conv2, conv3, fc1"):
        build_model(arch, ABR(scope=["conv9"]), (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="allowed are all, last"):
        ABR(scope="first")
    resnet = compose_train(["architecture=resnet18", "architecture.width=0.125"]).architecture
    with pytest.raises(ConfigError, match=r"scope=last: this architecture marks no activation as the last hidden one .*"
                                          r"e\.g\. method\.scope=\[layer4\.1\.conv2\] \(allowed: layer1\.0\.conv1, layer1\.0\.conv2, "):
        build_model(resnet, ABR(scope="last"), (3, 32, 32), 10)


def test_curve_statistics_on_a_hand_made_activation_tensor():
    # 4 test images, 4 units with slope 1: the output is y + 0.5 clamped. Unit 0 is binary for all 4 images,
    # unit 1 for 3 of 4, unit 2 never, unit 3 always 1 (stuck).
    y = torch.tensor([
        [-1.0, 1.0, 0.1, 2.0],
        [1.0, -1.0, 0.2, 2.0],
        [-1.0, 1.0, 0.0, 2.0],
        [1.0, 0.3, -0.1, 2.0],
    ])
    r = rectifier([1.0, 1.0, 1.0, 1.0])
    stats = measure(torch.nn.Sequential(r), [(y[:2], None), (y[2:], None)])["act"]
    assert stats["binary90"] == 0.5 and stats["binary99"] == 0.5 and stats["binary999"] == 0.5
    assert stats["saturated"] == pytest.approx(11 / 16)
    assert stats["ones"] == pytest.approx(8 / 16)
    assert stats["stuck"] == 0.25
    assert stats["median_k"] == 1.0
    assert not r.probing


def test_firing_matrix_and_clear_units():
    r = rectifier([1.0, 1.0, 1.0])
    y = torch.tensor([[1.0, -1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, 1.0], [-1.0, 1.0, -1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    matrix = firing_matrix(torch.nn.Sequential(r), [(y, labels)], num_classes=2)
    assert matrix.tolist() == [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]
    assert clear_units(matrix, ["a", "b"]) == {0: {"positive": ["a"], "negative": ["b"]},
                                               1: {"positive": ["b"], "negative": ["a"]}}


ABR_SMOKE = SMOKE + ["method=abr", "trainer.max_epochs=4", "schedule.phase1_epochs=2", "method.scope=last"]


def run(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[Path, dict]:
    run_dir = tmp_path / name
    return run_dir, train(compose_train(ABR_SMOKE + overrides, run_dir=run_dir))


def test_the_curves_last_row_names_the_last_epoch_not_the_count_of_epochs(tmp_path):
    run_dir, _ = run(tmp_path, ["callbacks.binarization.every_n_epochs=2", "trainer.max_epochs=3",
                                "protocol.enabled=false"])
    rows = list(csv.DictReader((run_dir / "binarization.csv").open()))
    # before training, after epoch 1 (0-based), and as training ends, in epoch 2
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(0, 0), (8, 1), (12, 2)]


def test_abr_run_writes_curves_protocol_and_firing_matrix(tmp_path):
    run_dir, metrics = run(tmp_path, [])
    for key in ("protocol/regular", "protocol/binary", "protocol/finetuned", "protocol/phase1_regular",
                "protocol/phase1_binary"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["protocol/regular"] == metrics["test/acc"] or abs(metrics["protocol/regular"] - metrics["test/acc"]) < 1e-9
    rows = list(csv.DictReader((run_dir / "binarization.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 4, 8, 12, 16]
    assert {r["layer"] for r in rows} == {"fc1"}
    assert float(rows[-1]["median_k"]) > float(rows[0]["median_k"]) == 1.0
    assert np.load(run_dir / "firing_matrix.npy").shape == (10, 500)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert "binarization/fc1/binary99" in events.Tags()["scalars"]
    assert "firing_matrix" in events.Tags()["images"]

    from binexp.report import report
    from binexp.report.curves import read_curves

    _, written = report([run_dir], out=tmp_path / "report")
    assert {p.name for p in written} >= {"run-binarization.png", "run-binarization-layers.png", "report.csv"}
    assert read_curves(run_dir / "binarization.csv")["fc1"]["step"] == [0, 4, 8, 12, 16]
    from binexp.report.curves import curve_kind

    kind = curve_kind(read_curves(run_dir / "binarization.csv")["fc1"])
    assert (dict(kind.last)["binary99"], kind.ylabel, kind.per_layer, kind.per_layer_ylabel) == (
        "binary 99% of the time", "% of units", "binary99", "% of units binary 99% of the time")
    header = (tmp_path / "report" / "report.csv").read_text().splitlines()[0]
    assert "protocol/phase1_binary" in header and "protocol/finetuned" in header


def _assert_slopes_grew(tmp_path, extra: list[str], steps1: int, steps2: int) -> None:
    """With lr 0 the slopes move only by the growth: steps1 steps of k += 0.01/k in phase 1, steps2 of 0.1/k after."""
    run(tmp_path, ["optimizer.lr=0.0", "schedule.lambda1=0.01", "schedule.lambda2=0.1", "trainer.max_epochs=3",
                   "schedule.phase1_epochs=1", *extra])
    k = 1.0
    for lam in [0.01] * steps1 + [0.1] * steps2:
        k += lam / k
    net_k = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]["net.classifier.2.slope"]
    assert torch.allclose(net_k, torch.full_like(net_k, k), rtol=1e-5)


def test_slopes_grow_by_the_schedule(tmp_path):
    """4 steps at lambda1 then 8 at lambda2, each adding lambda/|k| outside the lr: k ends above the phase-1 growth."""
    _assert_slopes_grew(tmp_path, [], steps1=4, steps2=8)


def test_phases_follow_epochs_when_gradient_accumulation_leaves_a_short_last_step(tmp_path):
    """4 batches an epoch accumulated by 3 are 2 optimizer steps (Lightning steps on the epoch's last batch too):
    2 steps at lambda1, then 4 at lambda2; counting 1 step an epoch would start phase 2 after the first step."""
    _assert_slopes_grew(tmp_path, ["trainer.accumulate_grad_batches=3"], steps1=2, steps2=4)


def test_metrics_end_with_the_schedules_last_values_between_logged_steps(tmp_path):
    """The step log samples every trainer.log_every_n_steps (here only step 0, in phase 1); metrics.json holds the
    values of the last step trained, in phase 2."""
    _, metrics = run(tmp_path, ["trainer.max_epochs=2", "schedule.phase1_epochs=1", "trainer.log_every_n_steps=50"])
    assert metrics["schedule/phase"] == 2.0
    assert metrics["schedule/slope_lambda"] == pytest.approx(1e-2)


def test_resumed_run_has_the_same_slopes_lambda_and_phase(tmp_path):
    common = ["trainer.deterministic=true"]
    straight_dir, straight = run(tmp_path, common, "straight")
    stop = ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", "+callbacks.signal.step=9"]
    cut_dir = tmp_path / "cut"
    from binexp.errors import RunInterrupted

    with pytest.raises(RunInterrupted):
        train(compose_train(ABR_SMOKE + common + stop, run_dir=cut_dir))
    saved = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert saved["net.classifier.2.phase"].item() == 2.0
    assert saved["net.classifier.2.slope_lambda"].item() == pytest.approx(1e-2)
    resumed = train(compose_train(ABR_SMOKE + common + [f"resume={cut_dir}"], run_dir=cut_dir))
    a = torch.load(straight_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key in ("net.classifier.2.slope", "net.classifier.2.slope_lambda", "net.classifier.2.phase"):
        assert torch.equal(a[key], b[key]), key
    assert resumed["protocol/phase1_binary"] == straight["protocol/phase1_binary"]
    assert resumed["protocol/binary"] == straight["protocol/binary"]


def test_collapse_stops_the_run_with_a_message(tmp_path):
    # biases far above the inputs' reach: every fc1 unit outputs 1 for every image
    shift = ["+callbacks.shift._target_=tests.helpers.ShiftBiasesAtStep", "+callbacks.shift.step=2",
             "+callbacks.shift.value=1000"]
    with pytest.raises(TrainingCollapsed, match="training collapsed at step 4: 100.0% of the units of layer fc1"):
        run(tmp_path, shift)


def test_fp_baseline_reports_the_same_protocol(tmp_path):
    run_dir = tmp_path / "fp"
    metrics = train(compose_train(SMOKE + ["method.scope=last"], run_dir=run_dir))
    assert {"protocol/regular", "protocol/binary", "protocol/finetuned"} <= set(metrics)
    assert "protocol/phase1_regular" not in metrics and not (run_dir / "binarization.csv").exists()
    _, dm, module, _ = load_trained(run_dir, "last")  # the protocol ran on the last weights
    test = dm.batches("test")
    assert metrics["protocol/regular"] == accuracy(module.net, test) == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metrics["protocol/binary"] == accuracy(module.net, test, step=True)  # ReLU -> 1[x > 0]
    assert metrics["protocol/binary"] != metrics["protocol/regular"]


def test_the_protocol_uses_the_test_batches_test_acc_used(tmp_path):
    # debug=smoke serves 2 test batches of 256; a limit of 1 must cut the protocol's test set as it cuts test/acc's
    run_dir = tmp_path / "fp"
    metrics = train(compose_train(SMOKE + ["method.scope=last", "trainer.limit_test_batches=1"], run_dir=run_dir))
    _, dm, module, _ = load_trained(run_dir, "last")
    first_batch = list(dm.batches("test"))[:1]
    assert metrics["protocol/regular"] == accuracy(module.net, first_batch) == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metrics["protocol/binary"] == accuracy(module.net, first_batch, step=True)
    assert accuracy(module.net, dm.batches("test")) != metrics["protocol/regular"]  # the whole test set differs


def section_4_4_net() -> nn.Module:
    """conv1 (float) -> ABR -> conv2 whose units have weights of +-0.5 and +-0.25 -> ABR -> classifier of +-0.1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), BoundedRectifier("a1", 2), nn.Conv2d(2, 2, 3), BoundedRectifier("a2", 2),
                        nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        conv2, head = net[2], net[5]
        conv2.weight.copy_(torch.sign(torch.randn_like(conv2.weight)) * torch.tensor([0.5, 0.25]).view(2, 1, 1, 1))
        head.weight.copy_(torch.sign(torch.randn_like(head.weight)) * 0.1)
    return net


def test_section_4_4_signs_keep_each_units_function_through_its_scale():
    net = section_4_4_net()
    x = torch.randn(8, 1, 5, 5)
    before = net(x)
    frozen = freeze_sign_weights(net)
    conv2, head = net[2], net[5]
    assert isinstance(conv2, FrozenSignConv2d) and isinstance(head, FrozenSignLinear) and type(net[0]) is nn.Conv2d
    assert [w is m.weight for w, m in zip(frozen, (conv2, head))] == [True, True]
    assert conv2.sign_scale.tolist() == [0.5, 0.25]  # mean |W| per output channel
    assert head.sign_scale.dim() == 0 and head.sign_scale.item() == pytest.approx(0.1)  # one for the classifier
    assert set(conv2.weight.unique().tolist()) == {-1.0, 1.0} and not conv2.weight.requires_grad
    torch.testing.assert_close(net(x), before)  # weights that were +-scale already: the same network


@pytest.mark.parametrize("method", [["method=bwn"], ["method=xnor"], ["method=sbn", "method.base=bwn"],
                                    ["method=ste", "method.scaling=forward_backward", "method.binarize_last=true"]])
def test_section_4_4_keeps_the_scale_a_binarizing_method_derives_from_w(method):
    """BWN/XNOR's alpha and FB's mean |W| come from W; once W is +-1 they would be 1: the trained value is kept."""
    cfg = compose_train(["architecture=vgg_small", "architecture.width=0.0625", "dataset=synthetic", *method])
    torch.manual_seed(0)
    net = build_model(cfg.architecture, build(cfg.method), (3, 32, 32), 10)
    x = torch.randn(4, 3, 32, 32)
    layer = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][1]
    trained_scale = layer.output_scale().clone()
    with evaluating(net, step=True):
        before = net(x)
    freeze_sign_weights(net)
    assert set(layer.weight.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(layer.output_scale(), trained_scale) and not torch.equal(trained_scale, torch.ones_like(trained_scale))
    with evaluating(net, step=True):
        assert torch.equal(net(x), before)  # every binary layer already was sign(W) times its scale
    rebuilt = build_model(cfg.architecture, build(cfg.method), (3, 32, 32), 10)
    freeze_sign_weights(rebuilt)  # as `binexp eval ckpt=binary_weights` rebuilds the saved network
    rebuilt.load_state_dict(net.state_dict())
    with evaluating(rebuilt, step=True):
        assert torch.equal(rebuilt(x), before)


def test_section_4_4_scale_in_step_mode_is_a_rescaled_bias():
    net = section_4_4_net()
    freeze_sign_weights(net)
    conv2 = net[2]
    x = torch.rand(16, 2, 3, 3)
    with torch.no_grad():
        unscaled = F.conv2d(x, conv2.weight, conv2.bias / conv2.sign_scale)
        assert torch.equal(step_of(net[3], conv2(x)), step_of(net[3], unscaled))


def step_of(abr: BoundedRectifier, y: torch.Tensor) -> torch.Tensor:
    with step_mode(abr):
        return abr(y)


class _PredictsByForm(nn.Module):
    """Class 0 in its training form, class 1 in its step form."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))
        self.step = False

    def forward(self, x):
        return F.one_hot(torch.full((len(x),), int(self.step)), 2).float()


def test_phase_evaluation_records_both_forms_at_the_end_of_the_milestone_epoch_only():
    batches = [(torch.zeros(4, 1), torch.tensor([0, 0, 0, 1]))]
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))
    callback = PhaseEvaluation({"phase1": 2})
    net = _PredictsByForm()
    for epoch in range(3):
        trainer = SimpleNamespace(current_epoch=epoch, global_step=10 * (epoch + 1), loggers=[logger],
                                  datamodule=SimpleNamespace(batches=lambda split: batches))
        callback.on_train_epoch_end(trainer, SimpleNamespace(net=net))
        assert net.step is False  # back in its training form
    found = {"protocol/phase1_regular": 0.75, "protocol/phase1_binary": 0.25}
    assert callback.results == found and logged == [(20, found)]


def test_step_form_fires_by_the_sign_of_y_even_where_k_times_y_underflows():
    rect = BoundedRectifier("fc1", 3)
    rect.slope.data = torch.tensor([0.25, -2.0, 0.0])
    rect.step = True
    tiny = 1e-45  # 0.25 * -tiny rounds to -0.0, which `k*y >= 0` would count as firing
    y = torch.tensor([[-tiny, -tiny, -5.0], [tiny, tiny, 3.0], [0.0, -0.0, 7.0]])
    assert rect(y).tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]


def test_the_finetuned_number_is_the_classifier_retrained_on_step_features_of_the_training_images(tmp_path):
    from binexp.protocol import ProtocolConfig, finetuned_accuracy
    from binexp.train import build_data, build_method, build_module

    cfg = compose_train(ABR_SMOKE, run_dir=tmp_path / "run")
    dm, method = build_data(cfg), build_method(cfg)
    net = build_module(cfg, dm, method).net
    torch.manual_seed(0)
    with torch.no_grad():  # slopes far from 1, so the step features differ from the trained ones
        for r in rectifiers(net):
            r.slope.uniform_(0.2, 5.0)
    config = ProtocolConfig(finetune_epochs=2, finetune_lr=1e-2)
    found = finetuned_accuracy(net, dm, config, seed=3)

    # by hand, from the splits themselves: LeNet's features and hidden layer in step mode, its fc2 retrained
    def features(split):
        x = (split.images.float() * dm.norm.affine("cpu")[0] + dm.norm.affine("cpu")[1])
        with torch.no_grad(), step_mode(net):
            net.eval()
            return net.classifier[:-1](net.features(x))

    train_x, test_x = features(dm.splits["train"]), features(dm.splits["test"])
    train_y, test_y = dm.splits["train"].labels, dm.splits["test"].labels
    head = copy.deepcopy(net.classifier[-1])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        order = torch.randperm(len(train_y), generator=g)
        for i in range(0, len(order), dm.batch_size):
            idx = order[i : i + dm.batch_size]
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    by_hand = (head(test_x).argmax(1) == test_y).double().mean().item()
    assert found == pytest.approx(by_hand, abs=1 / len(test_y))  # float summation order may move one image
    untrained = (net.classifier[-1](test_x).argmax(1) == test_y).double().mean().item()
    assert by_hand != untrained  # the retraining moved the number this test pins
