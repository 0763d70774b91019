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
