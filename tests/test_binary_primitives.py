"""The shared binary primitives: sign with sign(0) = +1 and the clipped straight-through estimator."""

from __future__ import annotations

import torch

from binexp.binarize.functional import binary_sign, sign_ste


def test_sign_of_zero_is_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    assert binary_sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]


def test_ste_gradient_is_one_inside_t_clip_and_zero_outside():
    x = torch.tensor([-1.5, -0.75, -0.5, 0.0, 0.5, 0.75, 1.5], requires_grad=True)
    sign_ste(x, t_clip=0.75).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_ste_without_t_clip_passes_every_gradient():
    x = torch.tensor([-5.0, 0.1, 9.0], requires_grad=True)
    (sign_ste(x, t_clip=None) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0]


def test_bnn_and_xnor_activations_pass_the_gradient_where_abs_x_le_1():
    """BinaryNet's straight-through window is |x| <= 1 (hard.py), not STE's default t_clip."""
    from binexp.binarize.hard import BinaryNet, XNORNet
    for method in (BinaryNet(), XNORNet()):
        act = method.act("a", 1)
        x = torch.tensor([-1.0, -0.75, 0.75, 1.0, 1.25], requires_grad=True)
        act(x).sum().backward()
        assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_binary_bn_is_exact_for_a_threshold_between_two_float32s():
    """A threshold that is no float32 is rounded towards the comparison, so sign(BN(x)) stays exact."""
    import math

    from binexp.binarize.binary_bn import BinaryBN, SignBatchNorm1d
    # T = mu - sigma*beta/gamma = 2/3 is no float32; x = the float32 nearest below T must give -1 (O < 0 exactly)
    for num in range(1, 200):
        t = num / 3
        below = torch.tensor(t, dtype=torch.float32)
        if below.double().item() > t:
            below = torch.nextafter(below, torch.tensor(-math.inf))
        if below.double().item() < t and torch.tensor(t, dtype=torch.float32).double().item() == below.double().item():
            break  # float32 nearest of T lies below T: the rounding a mutant could get wrong
    bn = SignBatchNorm1d(1)
    bn.eps = 0.0
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(-float(num))
    bn.eval()
    x = below.view(1, 1)
    exact = 3.0 * x.double() - num  # BN in float64: x < T, so O < 0
    assert exact.item() < 0
    assert BinaryBN.from_batchnorm(bn)(x).item() == -1.0


def test_a_binary_weight_layer_that_only_says_its_signs_computes_with_them():
    """A researcher's layer gives signs() (README: "Adding a method"); without a forward of its own it ran torch's,
    on the latent float weights, while the size table and the export took it as binary."""
    from torch import nn
    from torch.nn import functional as F

    from binexp.binarize.base import BinaryWeights

    class MyConv(BinaryWeights, nn.Conv2d):
        def signs(self):
            return binary_sign(self.weight)

    class MyLinear(BinaryWeights, nn.Linear):
        def signs(self):
            return binary_sign(self.weight)

    torch.manual_seed(0)
    conv, linear, x = MyConv(2, 3, 3), MyLinear(4, 2), torch.randn(2, 2, 5, 5)
    assert torch.equal(conv(x), F.conv2d(x, torch.where(conv.weight >= 0, 1.0, -1.0), conv.bias))
    v = torch.randn(3, 4)
    assert torch.equal(linear(v), F.linear(v, torch.where(linear.weight >= 0, 1.0, -1.0), linear.bias))
