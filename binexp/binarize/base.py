"""The interface every binarization method implements, and the default (float) blocks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from binexp.errors import ConfigError


@dataclass
class MethodConfig:
    _target_: str = "???"
    name: str = "???"


SCOPES = ("all", "last")


class ActivationScope:
    """Which hidden activations a method binarizes: `all`, `last` (the last hidden one), or a list of layer names.

    The method asks `includes(name, last)` while the architecture is built, and `check()` afterwards refuses
    listed names the architecture does not have, naming the ones it has.
    """

    def __init__(self, scope: str | list[str] = "all"):
        if isinstance(scope, str) and scope not in SCOPES:
            raise ConfigError(f"method.scope={scope!r}: allowed are {', '.join(SCOPES)} or a list of activation names")
        if not isinstance(scope, str) and not list(scope):  # a float network trained under the method's name
            raise ConfigError(f"method.scope=[]: allowed are {', '.join(SCOPES)} or a non-empty list of activation names")
        self.scope = scope
        self.seen: list[str] = []

    def includes(self, name: str, last: bool) -> bool:
        self.seen.append(name)
        if self.scope == "all":
            return True
        if self.scope == "last":
            return last
        return name in self.scope

    def check(self, selected: int) -> None:
        if isinstance(self.scope, str):
            if selected == 0 and self.scope == "last":
                raise ConfigError(
                    "method.scope=last: this architecture marks no activation as the last hidden one (the ResNets' and "
                    "DenseNets' heads keep a float ReLU before the classifier); list activations instead, e.g. "
                    f"method.scope=[{self.seen[-1] if self.seen else 'name'}] (allowed: {', '.join(self.seen)})")
            if selected == 0:
                raise ConfigError(f"method.scope={self.scope}: this architecture has no such activation")
            return
        unknown = [n for n in self.scope if n not in self.seen]
        if unknown:
            raise ConfigError(f"method.scope lists {unknown}, not activations of this architecture (allowed: {', '.join(self.seen)})")


class Method:
    """Builds layers for an architecture. Subclasses override the blocks they binarize.

    Architectures call the block factories with a stable layer `name` (conv1, fc1, ...) and say whether a
    layer is the network's first or last, and whether an activation is the last hidden one; the method
    decides what each becomes. Layers that have a step-function form set `self.step = True` in step mode.
    """

    name = "base"
    # names of the 0-d buffers (nu, lambda, phase, ...) this method's layers read from the schedule
    schedule_keys: tuple[str, ...] = ()

    def conv(
        self, name: str, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
        bias: bool = True, *, first: bool = False,
    ) -> nn.Module:
        return nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias)

    def linear(self, name: str, in_features: int, out_features: int, bias: bool = True, *, last: bool = False) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=bias)

    def bn(self, name: str, channels: int, *, dims: int = 2) -> nn.Module:
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)

    def act(self, name: str, channels: int, *, last: bool = False) -> nn.Module:
        return nn.ReLU()

    # ---- training hooks ----------------------------------------------------------------------------
    def regularization(self, model: nn.Module) -> torch.Tensor | None:
        """An extra loss term (e.g. in-loss slope growth); None when the method has none."""
        return None

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Updates applied outside the learning rate after every optimizer step."""

    def decays(self, param_name: str, param: torch.Tensor) -> bool:
        """Whether weight decay applies: weights of conv/linear layers yes; biases, BN and slopes no."""
        return param.ndim > 1

    def callbacks(self) -> list:
        return []

    def finalize(self, model: nn.Module) -> None:
        """Called once the architecture is built: check that the method's options fit it."""


class BinaryWeights:
    """Layers whose `weight` is binary at inference (1 bit per weight in size tables and export).

    They all compute out = (x . B) * scale + bias (their `forward`, which a subclass keeps): `signs()` is B (sign(W) with its training-time estimator, or a
    soft form), `output_scale()` the scale of sign(W) (None, a scalar, or one per output channel), and `finish`
    applies scale and bias after the product. The scale is the method's (`method_scale()`, derived from W) unless
    the layer holds a frozen `sign_scale` buffer: Section 4.4 replaces W by its signs, from which the method's
    scale would come out as 1, so it keeps the scale the network trained with. Keeping the scale out of the weights makes a binary
    input's product an exact integer in step mode, which the exported model computes by popcount.
    """

    bias: torch.Tensor | None
    # buffers only training reads (STE B's input-gradient scale): not deployed, so not in size tables
    training_buffers: tuple[str, ...] = ()

    def signs(self) -> torch.Tensor:
        raise NotImplementedError

    def freeze_scales(self) -> None:
        """Before Section 4.4 sets W to its signs: keep as buffers the scales the method derives from W."""
        scale = self.output_scale()
        if scale is not None:
            self.register_buffer("sign_scale", scale.detach().clone())  # type: ignore[attr-defined]

    def output_scale(self) -> torch.Tensor | None:
        frozen = self._buffers.get("sign_scale")  # type: ignore[attr-defined]
        return frozen if frozen is not None else self.method_scale()

    def method_scale(self) -> torch.Tensor | None:
        return None

    def layer_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the product takes it: itself, unless a method shapes its gradient (STE's B scaling)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """finish(x . signs()), the conv's or the linear layer's product, then the layer's `output_norm` if it has
        one (the BN after a binary output layer)."""
        x, signs = self.layer_input(x), self.signs()
        y = self.finish(self._conv_forward(x, signs, None) if isinstance(self, nn.Conv2d) else F.linear(x, signs))  # type: ignore[attr-defined]
        norm = getattr(self, "output_norm", None)
        return y if norm is None else norm(y)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        scale = self.output_scale()
        if scale is not None:
            y = y * (scale.view(1, -1, *([1] * (y.dim() - 2))) if scale.dim() == 1 else scale)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * (y.dim() - 2)))
        return y


class BinarizationProbe:
    """Mixin for layers that report how binary they are (binexp.callbacks.binarization drives it).

    Over an evaluation pass the callback calls `probe_reset()`, runs the data through the model with
    `self.probing = True`, then collects `probe_counts()`: a dict of tensors that are *sums* over the samples
    seen (so ranks can add them up), and finally `probe_summary(counts)`: named floats to log, e.g.
    {"binary99": share of units binary at least 99% of the time, "saturated": ...}. `layer_name` names the
    layer in logs and CSV files.
    """

    layer_name: str = ""
    probing: bool = False
    measures_activations: bool = True  # False for probes of weights: no firing matrix for those
    # True where the statistics read BN running statistics that mean nothing before the first step (sign layers'
    # gradient window): no record before training
    measured_after_training_starts: bool = False

    def probe_reset(self) -> None:
        raise NotImplementedError

    def probe_counts(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def probe_summary(self, counts: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError


class RecordedProbe(BinarizationProbe):
    """A probe of activations: while probing, its forward passes each batch's counts (sums over the batch's
    samples) to `add_counts`, which sums them over the pass."""

    def probe_reset(self) -> None:
        self._counts: dict[str, torch.Tensor] = {}

    def add_counts(self, batch: dict[str, torch.Tensor]) -> None:
        counts = self.__dict__.setdefault("_counts", {})
        for key, value in batch.items():
            counts[key] = counts[key] + value if key in counts else value

    def probe_counts(self) -> dict[str, torch.Tensor]:
        return dict(self.__dict__.get("_counts", {}))


def probes(model: nn.Module) -> list[BinarizationProbe]:
    return [m for m in model.modules() if isinstance(m, BinarizationProbe)]


def set_step_mode(model: nn.Module, on: bool = True) -> None:
    """Switch every layer that has a step-function form between its training and its inference form."""
    for module in model.modules():
        if hasattr(module, "step"):
            module.step = on


@contextlib.contextmanager
def step_mode(model: nn.Module) -> Iterator[nn.Module]:
    previous = {m: m.step for m in model.modules() if hasattr(m, "step")}
    set_step_mode(model, True)
    try:
        yield model
    finally:
        for module, state in previous.items():
            module.step = state


@contextlib.contextmanager
def evaluating(model: nn.Module, step: bool = False) -> Iterator[nn.Module]:
    """Eval mode (BN on running statistics), in step mode when `step`, no gradients; the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (step_mode(model) if step else contextlib.nullcontext()):
            yield model
    finally:
        model.train(was_training)
