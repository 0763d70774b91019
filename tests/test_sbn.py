"""SBN and the hard baselines: BinaryBN, the nu schedule, weight scaling, every architecture, a run and its resume."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from binexp.binarize.base import BinaryWeights, probes, step_mode
from binexp.binarize.binary_bn import BinaryBN, SignBatchNorm1d, SignBatchNorm2d, disagreements, fraction_bits
from binexp.binarize.functional import binary_sign
from binexp.binarize.hard import (
    Base,
    BinaryConnect,
    BinaryNet,
    BinaryWeightNetwork,
    SignConv2d,
    SignLinear,
    XNORNet,
    channel_scale,
)
from binexp.binarize.sbn import SBN, ScaledTanh, SoftBinaryConv2d, SoftBinaryLinear
from binexp.builder import build
from binexp.errors import ConfigError, RunInterrupted
from binexp.models import build_model
from binexp.protocol import bn_reestimated_accuracy, reestimate_bn
from binexp.schedules import ExponentialNu, Progress
from binexp.train import build_method, build_schedule, train
from tests.conftest import SMOKE, compose_train


def random_bn(channels: int, seed: int) -> SignBatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = SignBatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 3 + 0.1)
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.weight[:3] = 0.0  # gamma = 0: the output is sign(beta) everywhere
        bn.bias[:3] = torch.tensor([0.0, -0.5, 0.25])
        bn.weight[3:8] = -bn.weight[3:8].abs()  # gamma < 0 flips the comparison
    return bn.eval()


# ---- BinaryBN ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_bn_equals_sign_of_bn_on_random_inputs(seed):
    bn = random_bn(16, seed)
    x = torch.randn(32, 16, 6, 6, generator=torch.Generator().manual_seed(100 + seed)) * 2
    expected = binary_sign(bn(x))
    assert torch.equal(BinaryBN.from_batchnorm(bn)(x), expected)
    assert torch.equal(BinaryBN.from_batchnorm(bn)(x.double()), expected.double())
    assert torch.equal(expected[:, 0], torch.ones_like(expected[:, 0]))  # beta = 0: sign(0) = +1
    assert torch.equal(expected[:, 1], -torch.ones_like(expected[:, 1]))
    bn.step, bn.feeds_sign = True, True  # the layer's own step form
    assert torch.equal(bn(x), expected)


def test_binary_bn_ties_give_plus_one_like_bn_output_zero():
    # dyadic parameters and eps = 0: BN computes O = 0 exactly at I == T, and T is exact
    bn = SignBatchNorm1d(3)
    bn.eps = 0.0
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([2.0, 2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0, 4.0, 1.0]))
        bn.weight.copy_(torch.tensor([0.5, -0.5, 0.0]))
        bn.bias.copy_(torch.tensor([-0.25, 0.25, -0.0]))
    bn.eval()
    binary = BinaryBN.from_batchnorm(bn)
    assert binary.threshold.tolist() == [3.0, 3.0, -math.inf]  # T = mu - sigma * beta / gamma; -inf: always +1
    x = torch.tensor([[3.0, 3.0, 5.0], [2.5, 2.5, -5.0], [3.5, 3.5, 0.0]])
    assert bn(x)[0, :2].tolist() == [0.0, 0.0]
    expected = binary_sign(bn(x))
    assert expected.tolist() == [[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, -1.0, 1.0]]
    assert torch.equal(binary(x), expected)


def test_fixed_point_thresholds_count_their_disagreements():
    bn = random_bn(16, 0)
    x = torch.randn(16, 16, 6, 6, generator=torch.Generator().manual_seed(7)) * 2
    data_range = x.abs().max().item()
    exact = BinaryBN.from_batchnorm(bn)
    fixed = exact.quantize(bits=8, data_range=data_range)
    assert fixed.codes.dtype == torch.int8 and fixed.bits_per_channel == 9
    f = fixed.fraction_bits
    assert f == fraction_bits(data_range) and data_range * 2**f <= 127 < data_range * 2 ** (f + 1)  # the most that fit
    finite = fixed.codes > -128  # the lowest code is T = -inf (the constant channels)
    assert (fixed.thresholds[finite] * 2**fixed.fraction_bits == fixed.codes[finite].double()).all()
    assert fixed.thresholds[~finite].eq(-math.inf).all() and (~finite).sum() >= 1
    assert torch.equal(fixed(x)[:, :3], binary_sign(bn(x))[:, :3])  # the constant channels stay constant
    differ, total = disagreements(bn, [x, x[:4]], bits=8, data_range=data_range)
    assert total == x.numel() + x[:4].numel()
    assert 0 < differ < 0.01 * total
    flipped = (exact(x) != fixed(x)).nonzero()[:, 1]  # the channel of each flipped value
    distance = (x.transpose(0, 1).reshape(16, -1) - exact.threshold[:, None]).abs()
    near = (distance <= 2.0 ** -(f + 1)).sum(1)  # values within half a code step of their channel's T
    assert (torch.bincount(flipped, minlength=16) <= near).all() and near[flipped].min() > 0


def _trained_bn(seed: int, means_within: float, var: float) -> SignBatchNorm1d:
    """16 channels in eval mode: means uniform in +-means_within, half of the gammas negative, betas within +-3."""
    g = torch.Generator().manual_seed(seed)
    bn = SignBatchNorm1d(16)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(16, generator=g) * 2 * means_within - means_within)
        bn.running_var.fill_(var)
        bn.weight.copy_((1 + torch.rand(16, generator=g)) * torch.tensor([1.0, -1.0]).repeat(8))
        bn.bias.copy_(torch.randn(16, generator=g).clamp(-3, 3))
    return bn.eval()


def test_fixed_point_thresholds_are_exact_on_inputs_of_their_grid():
    """For integer inputs (a binary layer's sums) and f >= 0, codes rounded towards the comparison: the 8-bit form is
    the float form exactly, for either sign of gamma; T's nearest code (the rounding for other inputs) flips values."""
    bn = _trained_bn(seed=3, means_within=60, var=100.0)  # T = mu - sigma * beta / gamma within +-(60 + 10 * 3)
    exact = BinaryBN.from_batchnorm(bn)
    assert 10 < exact.threshold.abs().max() < 127 and exact.negative.sum() == 8
    x = torch.arange(-300.0, 301.0).view(-1, 1).expand(-1, 16)  # every integer sum, each channel
    fixed = exact.quantize(bits=8, data_range=300.0, input_grid=1.0)
    assert fixed.fraction_bits >= 0
    assert torch.equal(fixed(x), exact(x)) and torch.equal(exact(x), binary_sign(bn(x)))
    nearest = exact.quantize(bits=8, data_range=300.0)
    assert torch.equal(nearest.codes.double(), torch.round(exact.threshold * 2**nearest.fraction_bits))
    assert (nearest(x) != exact(x)).any()


def test_the_input_grid_is_the_largest_power_of_two_dividing_every_input():
    from binexp.binarize.binary_bn import GRID_EXPONENTS, input_grid

    assert input_grid(torch.tensor([2.0, -4.0, 6.0, 0.0])).item() == 2.0
    assert input_grid(torch.tensor([8.0, -24.0])).item() == 8.0
    assert input_grid(torch.tensor([3.0, 2.0])).item() == 1.0 and input_grid(torch.tensor([2.0, 0.5])).item() == 0.0
    assert input_grid(torch.zeros(3)).item() == 2.0**GRID_EXPONENTS


def test_thresholds_too_large_for_integer_codes_are_exact_on_even_sums():
    """A binary layer's sums over an even fan-in are even: with codes in steps of 2 (f = -1, thresholds in the
    hundreds) rounding towards the comparison is still exact there."""
    exact = BinaryBN.from_batchnorm(_trained_bn(seed=5, means_within=200, var=400.0))
    x = torch.arange(-300.0, 301.0, 2.0).view(-1, 1).expand(-1, 16)  # every even sum
    fixed = exact.quantize(bits=8, data_range=300.0, input_grid=2.0)
    assert fixed.fraction_bits == -1 and torch.equal(fixed(x), exact(x))
    assert (exact.quantize(bits=8, data_range=300.0, input_grid=1.0)(x) != exact(x)).any()  # nearest codes flip some


@pytest.mark.parametrize("input_grid", [0.0, 1.0])
def test_thresholds_beyond_the_code_range_stay_constant_up_to_its_ends(input_grid):
    """x >= T for T above every input: -1 even at the largest code's value (a clamped code would fire there)."""
    bn = SignBatchNorm1d(4)
    bn.eps = 0.0
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([200.0, 200.0, -200.0, -200.0]))
        bn.running_var.fill_(1.0)
        bn.weight.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0]))
        bn.bias.zero_()
    exact = BinaryBN.from_batchnorm(bn)
    fixed = exact.quantize(bits=8, data_range=127.0, input_grid=input_grid)
    assert fixed.fraction_bits == 0
    x = torch.arange(-127.0, 128.0).view(-1, 1).expand(-1, 4)  # every integer input within the data range
    assert exact(x)[:, 0].eq(-1).all() and exact(x)[:, 1].eq(1).all()
    assert exact(x)[:, 2].eq(1).all() and exact(x)[:, 3].eq(-1).all()
    assert torch.equal(fixed(x), exact(x))


@pytest.mark.parametrize("input_grid", [0.0, 1.0])
def test_gamma_zero_channels_stay_constant_over_the_whole_data_range(input_grid):
    """A layer whose finite thresholds are small but whose inputs reach 300, beyond the codes' range: its gamma = 0
    channels (always +1, always -1) keep their one output for every input (the lowest code is T = -inf)."""
    bn = SignBatchNorm1d(3)
    bn.eps = 0.0
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([10.0, 0.0, 0.0]))
        bn.running_var.fill_(100.0)
        bn.weight.copy_(torch.tensor([1.0, 0.0, 0.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    bn.eval()
    exact = BinaryBN.from_batchnorm(bn)
    fixed = exact.quantize(bits=8, data_range=300.0, input_grid=input_grid)
    x = torch.arange(-300.0, 301.0).view(-1, 1).expand(-1, 3)
    assert exact(x)[:, 1].eq(1).all() and exact(x)[:, 2].eq(-1).all()
    assert torch.equal(fixed(x), exact(x))
    assert fixed.fraction_bits == fraction_bits(10.0)  # from the largest finite |T|: thresholds keep their precision
    far = torch.tensor([[-1e30] * 3, [1e30] * 3])
    assert torch.equal(fixed(far)[:, 1:], exact(far)[:, 1:])


def bnn_lenet_and_batches():
    """A BNN LeNet with BN, random training and test batches, and BN statistics of its step form (so thresholds sit
    among its inputs)."""
    cfg = compose_train(SMOKE + ["method=bnn", "architecture.batch_norm=true", "architecture.conv_act=true"])
    torch.manual_seed(0)
    net = build_model(cfg.architecture, build(cfg.method), (1, 28, 28), 10)
    g = torch.Generator().manual_seed(1)
    train = [(torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(3)]
    test = [(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)) for _ in range(2)]
    reestimate_bn(net, train, count=3, step=True)
    return net, train, test


def test_fixed_point_bn_puts_its_forms_into_the_network_and_counts_their_flips():
    from binexp.binarize.base import evaluating
    from binexp.binarize.binary_bn import binary_bn_layers
    from binexp.protocol import accuracy, fixed_point_bn

    net, train, test = bnn_lenet_and_batches()
    layers = binary_bn_layers(net)
    assert list(layers) == ["features.2", "features.6", "classifier.2"]  # conv1, conv2, fc1; fc2's output BN is not one

    acc, per_layer = fixed_point_bn(net, train, test, bits=3, range_batches=2)

    # by hand: each layer's range over the first two training batches, its 3-bit form substituted with a hook
    seen = {name: [] for name in layers}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=name: seen[n].append(a[0])) for name, m in layers.items()]
    with evaluating(net, step=True):
        for x, _ in train[:2]:
            net(x)
    for h in hooks:
        h.remove()
    largest = {n: max(x.abs().max().item() for x in seen[n]) for n in layers}

    def grid(xs: list[torch.Tensor]) -> float:
        if not all(torch.equal(x, x.round()) for x in xs):
            return 0.0
        step = 1.0
        while all(bool((torch.remainder(x, 2 * step) == 0).all()) for x in xs):
            step *= 2
        return step

    grids = {n: grid(seen[n]) for n in layers}
    # the image; sums of 500 and 800 +-1 products (even fan-ins, max-pooled): even numbers
    assert grids == {"features.2": 0.0, "features.6": 2.0, "classifier.2": 2.0}
    forms = {n: BinaryBN.from_batchnorm(m).quantize(3, largest[n], grids[n]) for n, m in layers.items()}
    flips = dict.fromkeys(layers, 0)
    outputs = dict.fromkeys(layers, 0)

    def substitute(name, out, inputs):
        fixed = forms[name](inputs[0])
        flips[name] += int((fixed != out).sum())
        outputs[name] += out.numel()
        return fixed

    hooks = [m.register_forward_hook(lambda _m, a, o, n=name: substitute(n, o, a)) for name, m in layers.items()]
    try:
        by_hand = accuracy(net, test, step=True)
    finally:
        for h in hooks:
            h.remove()

    assert acc == by_hand
    for name in layers:
        assert per_layer[name] == {"fraction_bits": forms[name].fraction_bits, "data_range": largest[name],
                                   "input_grid": grids[name], "flips": flips[name], "values": outputs[name]}, name
    assert sum(flips.values()) > 0  # 3 bits are too few to be exact here
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in layers.values())  # it removed its own hooks


def test_fraction_bits_fit_the_range():
    assert fraction_bits(1.0) == 6 and fraction_bits(127.0) == 0 and fraction_bits(200.0) == -1
    assert fraction_bits(0.0) == 7


# ---- the nu schedule --------------------------------------------------------------------------------------------
def test_nu_grows_from_one_to_nu_end_exponentially_per_epoch():
    schedule = ExponentialNu(nu_end=1000.0)
    nu = lambda step: schedule.values(Progress(step, steps_per_epoch=10, max_epochs=5))["nu"]  # noqa: E731
    assert nu(0) == 1.0 and nu(9) == 1.0
    assert nu(20) == pytest.approx(1000.0**0.5)  # epoch 2 of 0..4
    assert nu(40) == 1000.0 and nu(49) == 1000.0
    assert nu(10) / nu(0) == pytest.approx(nu(40) / nu(30))  # a constant factor per epoch


def test_nu_per_step_and_bad_values():
    schedule = ExponentialNu(nu_start=2.0, nu_end=32.0, per_step=True)
    at = [schedule.nu(Progress(s, steps_per_epoch=2, max_epochs=2)) for s in range(4)]
    assert at == pytest.approx([2.0, 4.0 * 2 ** (1 / 3), 8.0 * 2 ** (2 / 3), 32.0])
    with pytest.raises(ConfigError, match="schedule.nu_start=10.0, schedule.nu_end=1.0"):
        ExponentialNu(nu_start=10.0, nu_end=1.0)
    with pytest.raises(ConfigError, match="trainer.max_epochs=1.*schedule.per_step=true"):
        ExponentialNu().check(1)


@pytest.mark.parametrize("base", [b.value for b in Base])
def test_table1_experiments_pick_the_method_base_and_nu_schedule(base):
    hard = compose_train([f"experiment=sbn_table1_{base}"])
    soft = compose_train([f"experiment=sbn_table1_sbn_{base}"])
    assert (hard.method.name, hard.schedule.name) == (base, "constant")
    assert (soft.method.name, soft.method.base.value, soft.schedule.name) == ("sbn", base, "exp_nu")
    assert soft.schedule.nu_end == 1000.0 and soft.trainer.max_epochs == 100 and soft.dataset.batch_size == 256


def test_sbn_needs_a_schedule_that_provides_nu(tmp_path):
    with pytest.raises(ConfigError, match=r"method=sbn reads \['nu'\].*schedule=constant"):
        train(compose_train(SMOKE + ["method=sbn", "schedule=constant"], run_dir=tmp_path / "run"))


@pytest.mark.parametrize("overrides,unread", [(["method=ste", "schedule=exp_nu"], r"\['nu'\], which method=ste"),
                                              (["method=fp", "schedule=two_phase", "trainer.max_epochs=2"],
                                               r"\['slope_lambda', 'phase'\], which method=fp")])
def test_a_schedule_whose_values_the_method_does_not_read_is_refused(overrides, unread):
    cfg = compose_train(SMOKE + overrides)
    with pytest.raises(ConfigError, match=rf"schedule={cfg.schedule.name} drives {unread} does not read: .*choose schedule=constant"):
        build_schedule(cfg, build_method(cfg))


def test_two_phase_weight_decay_applies_to_any_method():
    cfg = compose_train(SMOKE + ["method=fp", "schedule=two_phase", "schedule.weight_decay2=1e-3", "trainer.max_epochs=2"])
    schedule = build_schedule(cfg, build_method(cfg))
    assert schedule.values(Progress(step=1, steps_per_epoch=1, max_epochs=2))["weight_decay"] == 1e-3


def test_the_record_before_training_is_measured_at_the_schedules_first_nu(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_train(SMOKE + ["method=sbn", "schedule.nu_start=100", "trainer.max_steps=1", "protocol.enabled=false"],
                        run_dir=run_dir))
    first = next(r for r in csv.DictReader((run_dir / "binarization.csv").open()) if r["layer"] == "conv1.weight")
    # at the layers' initial nu of 1 the small initial weights give tanh(P) well inside (-0.99, 0.99): a share of 0
    assert first["step"] == "0" and float(first["binary99"]) > 0.5


def test_the_protocol_fits_on_training_batches_and_measures_on_the_test_set(tmp_path):
    from binexp.protocol import ProtocolConfig, run_protocol
    from binexp.train import build_data, build_module

    cfg = compose_train(SMOKE + ["method=bnn", "architecture.batch_norm=true", "architecture.conv_act=true"],
                        run_dir=tmp_path / "run")
    dm, method = build_data(cfg), build_method(cfg)
    net = build_module(cfg, dm, method).net
    served, batches = [], dm.batches

    def spy(stage, train=False, device=None, shard=True):
        served.append((stage, train))
        return batches(stage, train=train, device=device, shard=shard)

    dm.batches = spy
    config = ProtocolConfig(finetune_epochs=1, binary_weights_epochs=1, bn_batches=2)
    assert sorted(run_protocol(net, method, dm, config, seed=0)) == sorted(
        f"protocol/{k}" for k in ("regular", "binary", "binary_bn_reestimated", "binary_fixed_bn", "fixed_bn_flips",
                                  "finetuned", "binary_weights"))
    assert served == [
        ("test", False),  # regular and binary
        ("train", True), ("train", True),  # BN statistics re-estimated; the fixed-point thresholds' ranges
        ("train", False), ("test", False),  # the finetuned classifier: fitted on training features, then tested
        ("train", True), ("test", False),  # Section 4.4: finetuned on training batches, then tested
    ]


def test_scaled_tanh_approaches_sign_for_large_nu():
    act = ScaledTanh("fc1")
    x = torch.linspace(-1, 1, 201)
    x = x[x.abs() > 0.01]
    act.nu.fill_(1.0)
    assert (act(x) - binary_sign(x)).abs().max() > 0.5
    act.nu.fill_(1000.0)
    assert torch.allclose(act(x), binary_sign(x), atol=1e-6)
    act.step = True
    assert torch.equal(act(torch.tensor([-0.5, 0.0, 0.5])), torch.tensor([-1.0, 1.0, 1.0]))


@pytest.mark.parametrize("nu", [1.0, 30.0])
def test_activation_grad_ste_keeps_tanh_forward_and_passes_one_inside_the_clip(nu):
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.01, 0.5, 1.0, 1.5], requires_grad=True)
    exact, ste = ScaledTanh("fc1"), ScaledTanh("fc1", grad="ste")
    exact.nu.fill_(nu)
    ste.nu.fill_(nu)
    assert torch.equal(ste(x), exact(x))
    ste(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]))
    x.grad = None
    exact(x).sum().backward()
    assert torch.allclose(x.grad, nu * (1 - torch.tanh(nu * x.detach()) ** 2))


def test_activation_grad_reaches_every_activation_and_bad_values_name_the_key():
    cfg = compose_train(["method=sbn", "method.activation_grad=ste", "architecture=lenet", "dataset=synthetic"])
    net = build_model(cfg.architecture, build(cfg.method), (1, 28, 28), 10)
    acts = [m for m in net.modules() if isinstance(m, ScaledTanh)]
    assert acts and all(m.straight_through for m in acts)
    with pytest.raises(ConfigError, match="method.activation_grad='exact': allowed are tanh, ste"):
        SBN(activation_grad="exact")


# ---- weights and their scaling ----------------------------------------------------------------------------------
HAND_MADE = torch.tensor([[0.5, -0.25, 0.75, -1.0], [-0.125, 0.0, 0.25, 0.125]])  # mean |w|: 0.625 and 0.125


def hand_made_linear(layer: torch.nn.Linear) -> torch.nn.Linear:
    with torch.no_grad():
        layer.weight.copy_(HAND_MADE)
    return layer


def test_bwn_and_xnor_scale_sign_w_by_mean_abs_w_per_output_channel():
    assert channel_scale(HAND_MADE).flatten().tolist() == [0.625, 0.125]
    signs = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, 1.0, 1.0]])
    for method in (BinaryWeightNetwork(), XNORNet()):
        layer = hand_made_linear(method.linear("fc", 4, 2, bias=False))
        assert isinstance(layer, SignLinear) and isinstance(layer, BinaryWeights)
        assert torch.equal(layer.signs(), signs)
        assert layer.output_scale().tolist() == [0.625, 0.125]
        # the layer's product is (x . sign(W)) * alpha: for x the identity, the scaled signs themselves
        assert torch.equal(layer(torch.eye(4)), (signs * torch.tensor([[0.625], [0.125]])).T)
    for method in (BinaryConnect(), BinaryNet()):
        layer = hand_made_linear(method.linear("fc", 4, 2, bias=False))
        assert torch.equal(layer.signs(), signs) and layer.output_scale() is None
        assert torch.equal(layer(torch.eye(4)), signs.T)


def test_conv_scale_is_per_output_filter():
    w = torch.tensor([1.0, -0.5, 0.25, 0.25]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    w[1] *= -2
    assert channel_scale(w).flatten().tolist() == [0.5, 1.0]


def test_sbn_weights_soft_in_training_and_signed_in_step_mode():
    layer = hand_made_linear(SBN(base="xnor").linear("fc", 4, 2, bias=False))
    assert isinstance(layer, SoftBinaryLinear) and isinstance(layer, BinaryWeights)
    layer.nu.fill_(3.0)
    alpha = torch.tensor([0.625, 0.125])  # mean |P|: P plays the part of XNOR's real weights
    assert torch.allclose(layer.signs(), torch.tanh(3.0 * HAND_MADE))
    assert torch.equal(layer.output_scale(), alpha)
    assert torch.allclose(layer(torch.eye(4)), (alpha[:, None] * torch.tanh(3.0 * HAND_MADE)).T)
    layer.step = True
    assert torch.equal(layer.signs(), binary_sign(HAND_MADE))  # sign(0) = +1
    assert torch.equal(layer(torch.eye(4)), (alpha[:, None] * binary_sign(HAND_MADE)).T)
    bnn = hand_made_linear(SBN(base="bnn").linear("fc", 4, 2, bias=False))
    bnn.step = True
    assert torch.equal(bnn.signs(), binary_sign(HAND_MADE)) and bnn.output_scale() is None


def test_hard_latent_weights_are_clipped_after_each_step():
    method = BinaryNet()
    net = torch.nn.Sequential(method.conv("conv1", 1, 2, 3, first=True), method.linear("fc", 3, 2, last=True))
    with torch.no_grad():
        net[0].weight.fill_(1.5)
        net[1].weight.fill_(-3.0)
    method.after_optimizer_step(net)
    assert net[0].weight.max() == 1.0 and net[1].weight.min() == -1.0


def test_unknown_base_names_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError, match="method.base='xor': allowed are bc, bnn, bwn, xnor"):
        SBN(base="xor")


# ---- every architecture -----------------------------------------------------------------------------------------
METHODS = {
    "bc": BinaryConnect, "bnn": BinaryNet, "bwn": BinaryWeightNetwork, "xnor": XNORNet,
    **{f"sbn-{b.value}": (lambda b=b: SBN(base=b.value)) for b in Base},
}
SHAPES = {"lenet": (1, 28, 28), "cifar_quick": (3, 16, 16), "vgg_small": (3, 16, 16), "resnet18": (3, 16, 16)}


@pytest.mark.parametrize("arch", list(SHAPES))
def test_every_method_builds_every_architecture_in_both_forms(arch):
    # small images and a thirty-second of the width: the wiring is what is tested
    shrink = ["architecture.blocks=[1,1,1,1]"] if arch == "resnet18" else []  # one block per stage: same wiring
    cfg = compose_train([f"architecture={arch}", "architecture.width=0.03125", *shrink])
    x = torch.randn(2, *SHAPES[arch])
    for name, make in METHODS.items():
        net = build_model(cfg.architecture, make(), SHAPES[arch], num_classes=10)
        first = next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
        assert isinstance(first, (SignConv2d, SoftBinaryConv2d)), name  # BinaryNet's layout: conv1 binary too
        with torch.no_grad():
            trained = net(x)
            net.eval()
            with step_mode(net):
                stepped = net(x)
        assert trained.shape == stepped.shape == (2, 10), name
        assert torch.isfinite(trained).all() and torch.isfinite(stepped).all(), name
        pairs = [m for m in net.modules() if isinstance(m, (SignBatchNorm1d, SignBatchNorm2d)) and m.feeds_sign]
        binary_activations = name in ("bnn", "xnor", "sbn-bnn", "sbn-xnor")
        assert bool(pairs) == (binary_activations and arch in ("vgg_small", "resnet18")), name


def test_step_mode_of_a_trained_hard_network_is_the_same_function():
    cfg = compose_train(["architecture=vgg_small", "architecture.width=0.0625"])
    net = build_model(cfg.architecture, XNORNet(), (3, 16, 16), 10)
    x = torch.randn(16, 3, 16, 16)
    with torch.no_grad():
        for _ in range(3):
            net(x)  # BN running statistics away from their initial values
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            bn.weight.uniform_(-1.5, 1.5)  # as trained: negative, small and large gammas, and betas off zero
            bn.weight[0] = 0.0
            bn.bias.uniform_(-0.5, 0.5)
        net.eval()
        plain = net(x)
        with step_mode(net):
            binary = net(x)
    assert torch.equal(plain, binary)


# ---- BN statistics of the deployed network ----------------------------------------------------------------------
def soft_linear_then_bn() -> torch.nn.Sequential:
    torch.manual_seed(0)
    layer = SBN(base="bc").linear("fc", 4, 3, bias=False)  # nu = 1: tanh(P) and sign(P) differ a lot
    return torch.nn.Sequential(layer, torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))


def test_reestimated_bn_statistics_are_the_plain_average_over_the_batches_in_the_form_asked():
    net = soft_linear_then_bn()
    batches = [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    for step in (False, True):
        reestimate_bn(net, batches + batches, count=3, step=step)  # only the first 3 count
        weight = binary_sign(net[0].weight) if step else torch.tanh(net[0].weight)
        outputs = [x @ weight.detach().T for x, _ in batches]
        assert torch.allclose(net[1].running_mean, torch.cat(outputs).mean(0), atol=1e-6)
        assert torch.allclose(net[1].running_var, torch.stack([o.var(0) for o in outputs]).mean(0), atol=1e-5)
        assert net[1].momentum == 0.1 and not net.training and net[0].step is False


def test_bn_reestimated_accuracy_leaves_the_trained_network_as_it_was():
    net = soft_linear_then_bn().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    x_test = torch.randn(32, 4)
    with torch.no_grad():  # the step form with BN statistics of its own outputs, written out by hand
        outputs = [x @ binary_sign(net[0].weight).T for x, _ in batches]
        mean, var = torch.cat(outputs).mean(0), torch.stack([o.var(0) for o in outputs]).mean(0)
        normed = (x_test @ binary_sign(net[0].weight).T - mean) / torch.sqrt(var + net[1].eps)
        expected = net[2](normed * net[1].weight + net[1].bias).argmax(1)
        assert not torch.equal(expected, net(x_test).argmax(1))
    assert bn_reestimated_accuracy(net, batches, [(x_test, expected)], count=2) == 1.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())



def test_bench_bn_times_forms_that_compute_bn_and_sign():
    # its 8-bit BinaryBN takes integer inputs, where the thresholds rounded towards the comparison are exact
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_bn

    times, differing = bench_bn.measure(channels=64, size=16, batches=[2, 4], repeats=1, device=torch.device("cpu"))
    assert {name: len(t) for name, t in times.items()} == dict.fromkeys(bench_bn.PARAM_BITS, 2)
    assert differing["BN + sign"] == differing["BinaryBN"] == differing["BinaryBN (float)"] == 0
    assert differing["shift-BN + sign"] > 0  # gamma and sigma rounded to powers of two: an approximation
    bn = bench_bn.random_bn(64, torch.device("cpu"))
    i = torch.arange(-bench_bn.INPUT_RANGE, bench_bn.INPUT_RANGE + 1, dtype=torch.int32).view(-1, 1, 1, 1).expand(-1, 64, 1, 1)
    torch.testing.assert_close(bench_bn.binary_bn_int(bn)(i), bench_bn.bn_sign(bn)(i.float()), rtol=0, atol=0)


def test_sharpen_script_switches_only_the_weights_or_only_the_activations():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import sbn_sharpen

    torch.manual_seed(0)
    method = SBN(base="bnn")
    soft, act, head = method.linear("fc", 6, 16, bias=False), ScaledTanh("fc"), torch.nn.Linear(16, 3)
    bn = torch.nn.BatchNorm1d(16)
    net = torch.nn.Sequential(soft, bn, act, head).eval()
    x = torch.randn(64, 6)
    with torch.no_grad():  # the predictions of each partly binary form, written out by hand
        sign_weights = head(torch.tanh(bn(x @ binary_sign(soft.weight).T))).argmax(1)
        sign_activations = head(binary_sign(bn(x @ torch.tanh(soft.weight).T))).argmax(1)
        assert not torch.equal(sign_weights, net(x).argmax(1))  # nu = 1: the switch matters
    kinds_w, kinds_a = (SoftBinaryConv2d, SoftBinaryLinear), (ScaledTanh,)
    assert sbn_sharpen.partial_step_accuracy(net, [(x, sign_weights)], kinds_w) == 1.0
    assert sbn_sharpen.partial_step_accuracy(net, [(x, sign_activations)], kinds_a) == 1.0
    assert sbn_sharpen.partial_step_accuracy(net, [(x, sign_weights)], kinds_a) < 1.0
    assert not soft.step and not act.step  # back in the training form after

# ---- runs -------------------------------------------------------------------------------------------------------
SBN_SMOKE = SMOKE + [
    "method=sbn", "method.base=xnor", "architecture.batch_norm=true", "architecture.conv_act=true",
    "architecture.width=0.5", "dataset.num_test=128", "dataset.eval_batch_size=128", "trainer.max_epochs=2",
    "schedule.per_step=true", "protocol.finetune_epochs=0", "protocol.bn_batches=2", "trainer.deterministic=true",
]


def test_bad_fixed_point_settings_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"protocol.bn_bits=1: allowed are 0 \(off\) or 2..32 bits"):
        train(compose_train(SBN_SMOKE + ["protocol.bn_bits=1"], run_dir=tmp_path / "bits"))
    with pytest.raises(ConfigError, match=r"protocol.bn_range_batches=0: allowed is a count >= 1"):
        train(compose_train(SBN_SMOKE + ["protocol.bn_range_batches=0"], run_dir=tmp_path / "range"))
    assert not any((tmp_path / name / "checkpoints").exists() for name in ("bits", "range"))


def nu_buffers(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(".nu")}


def test_sbn_run_binarizes_and_a_resumed_run_has_the_same_nu(tmp_path):
    straight_dir = tmp_path / "straight"
    metrics = train(compose_train(SBN_SMOKE, run_dir=straight_dir))
    for key in ("test/acc", "protocol/regular", "protocol/binary", "protocol/binary_bn_reestimated",
                "protocol/binary_fixed_bn"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["size/binary_params"] > 0
    fixed = json.loads((straight_dir / "fixed_bn.json").read_text())  # BinaryBN with 8-bit thresholds, per layer
    assert fixed["bits"] == 8 and list(fixed["layers"]) == ["features.2", "features.6", "classifier.2"]
    assert all(layer["values"] > 0 and 0 <= layer["flips"] <= layer["values"] for layer in fixed["layers"].values())
    assert metrics["protocol/fixed_bn_flips"] == (sum(layer["flips"] for layer in fixed["layers"].values())
                                                  / sum(layer["values"] for layer in fixed["layers"].values()))
    from binexp.evaluate import load_trained
    from binexp.protocol import accuracy, fixed_point_bn

    cfg, dm, module, _ = load_trained(straight_dir, "last")  # the protocol measured the trained network itself
    test, train_batches = dm.batches("test"), dm.batches("train", train=True, shard=False)
    assert metrics["protocol/regular"] == accuracy(module.net, test)
    assert metrics["protocol/binary"] == accuracy(module.net, test, step=True)
    assert metrics["protocol/binary_fixed_bn"] == fixed_point_bn(module.net, train_batches, test, 8,
                                                                 cfg.protocol.bn_range_batches)[0]
    rows = list(csv.DictReader((straight_dir / "binarization.csv").open()))
    layers = [r["layer"] for r in rows if r["step"] == "0"]
    assert layers == ["conv1.weight", "conv1.act", "conv2.weight", "conv2.act", "fc1.weight", "fc1.act", "fc2.weight"]
    first, last = (float(r["binary99"]) for r in rows if r["layer"] == "conv1.weight" and r["step"] in ("0", "8"))
    assert first == 0.0 and last > 0.9  # nu = 1 -> 1000 drives the weights to +-1
    # a weight has no samples to be stuck on: its stuck cell is blank (was nan, a NaN curve in TensorBoard too)
    assert {r["stuck"] for r in rows if r["layer"].endswith(".weight")} == {""}
    assert all(r["stuck"] not in ("", "nan") for r in rows if r["layer"].endswith(".act"))
    from binexp.report.curves import curve_kind, read_curves

    kind = curve_kind(read_curves(straight_dir / "binarization.csv")["conv1.weight"])
    assert (dict(kind.last)["binary99"], kind.ylabel, kind.per_layer_ylabel) == (
        "|value| > 0.99", "% of values", "% of values with |value| > 0.99")

    cut_dir = tmp_path / "cut"
    stop = ["+callbacks.signal._target_=binexp.callbacks.guards.SignalAtStep", "+callbacks.signal.step=5"]
    with pytest.raises(RunInterrupted):
        train(compose_train(SBN_SMOKE + stop, run_dir=cut_dir))
    saved = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(v.item() == pytest.approx(1000.0 ** (5 / 7)) for v in nu_buffers(saved).values())  # step 5 of 0..7
    train(compose_train(SBN_SMOKE + [f"resume={cut_dir}"], run_dir=cut_dir))
    a = torch.load(straight_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert len(nu_buffers(a)) == 7 and nu_buffers(a).keys() == nu_buffers(b).keys()
    assert all(torch.equal(a[k], b[k]) for k in nu_buffers(a))
    assert torch.equal(a["net.features.0.weight"], b["net.features.0.weight"])  # the latent P followed the same nu

def test_bn_reestimated_network_is_saved_exported_and_verified(tmp_path):
    from binexp.evaluate import load_trained
    from binexp.export.commands import export_run, verify_artifact
    from binexp.protocol import accuracy

    run_dir = tmp_path / "run"
    metrics = train(compose_train(SBN_SMOKE, run_dir=run_dir))
    _, dm, module, path = load_trained(run_dir, "bn_reestimated")
    assert path == run_dir / "checkpoints" / "bn_reestimated.ckpt"
    assert accuracy(module.net, dm.batches("test"), step=True) == metrics["protocol/binary_bn_reestimated"]
    trained = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    saved = torch.load(path, weights_only=False)["state_dict"]
    stats = [k for k in trained if k.endswith("running_mean")]
    assert stats and all(not torch.equal(trained[k], saved[k]) for k in stats)  # the statistics are new
    assert all(torch.equal(trained[k], saved[k]) for k in trained if k.endswith(".weight"))  # the weights are not
    out, _ = export_run(run_dir, "bn_reestimated")
    result = verify_artifact(out)
    assert result["differing_predictions"] == 0 and sum(result["differing_activations"].values()) == 0
    assert result["accuracy_exported"] == metrics["protocol/binary_bn_reestimated"]


def test_firing_matrix_reads_the_last_activation_probe_not_weights(tmp_path):
    """SBN's last probe is the classifier's weights; the firing matrix is of the last binary activation."""
    from binexp.callbacks.binarization import activation_probes, firing_matrix

    cfg = compose_train(["method=sbn", "method.base=bnn", "architecture=lenet", "architecture.conv_act=true",
                         "architecture.batch_norm=true"])
    net = build_model(cfg.architecture, build(cfg.method), (1, 28, 28), 10)
    assert not probes(net)[-1].measures_activations
    last_act = activation_probes(net)[-1]
    assert last_act.layer_name == "fc1.act"
    x, y = torch.randn(20, 1, 28, 28), torch.arange(20) % 10
    matrix = firing_matrix(net, [(x, y)], 10)
    assert matrix.shape == (10, 500) and ((matrix >= 0) & (matrix <= 1)).all()


def test_the_finetuned_protocol_value_does_not_depend_on_the_mode_the_network_was_left_in(tmp_path):
    """SBN's classifier carries its own BN (output_norm): trained in training mode, tested on running statistics."""
    from binexp.protocol import classifier_of, finetuned_accuracy, protocol_config
    from binexp.train import build_data, build_method, build_module

    cfg = compose_train(SMOKE + ["method=sbn", "protocol.finetune_epochs=2"], run_dir=tmp_path)
    dm = build_data(cfg)
    net = build_module(cfg, dm, build_method(cfg)).net
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in classifier_of(net).modules())
    found = []
    for mode in ("train", "eval"):
        getattr(net, mode)()
        found.append(finetuned_accuracy(net, dm, protocol_config(cfg), seed=0))
    assert found[0] == found[1]


def test_fixed_point_protocol_is_exact_where_inputs_lie_on_the_code_grid():
    """The protocol hands each layer's input grid to the 8-bit quantizer: where the code step divides it, no flips."""
    from binexp.protocol import fixed_point_bn

    net, train, test = bnn_lenet_and_batches()
    _, per_layer = fixed_point_bn(net, train, test, bits=12, range_batches=2)
    on_grid = {n: layer for n, layer in per_layer.items()
               if layer["input_grid"] > 0 and 2.0 ** -layer["fraction_bits"] <= layer["input_grid"]}
    assert on_grid and all(layer["flips"] == 0 for layer in on_grid.values()), per_layer
