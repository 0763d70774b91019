"""A trained network's step-function form as a list of ops (`Op`) that `binexp.export.runtime` executes.

The network is traced with torch.fx, binexp's layers kept whole, and each node is lowered on what it computes in
step mode (the network's inference form):

- a layer with binary weights stores them as bits (1 bit per weight). Fed binary activations it becomes
  `binary_conv` / `binary_linear`: integer sums by xnor (+-1 inputs) or and ({0,1} inputs) + popcount. Fed real
  values (the first layer, or methods with float activations) it is a float conv with the +-1 weights. Either way
  its scale and bias (`BinaryWeights.finish`) are still pending.
- every binary activation becomes `threshold`: out = [D * x >= bound] per channel, x the raw value the activation
  depends on. On integer sums the pending scale and bias, a batch norm in between and the activation itself
  (ABR's 1[k*y >= 0], sign, the float baseline's 1[y > 0]) fold into one integer bound per channel, found by running
  the trained network's own modules on every sum the layer can produce: the bound is exact, and a channel that
  does not threshold monotonically is refused. On floats, sign after a BN is BinaryBN's comparison (the step form
  of that BN in the trained network), and the other activations compare with 0 by the sign of their slope.
- max pooling between a layer and its threshold commutes with a positive scale and stays in its place on the
  integers; everything else (float convs, BN that feeds no binary activation, pooling, concatenation, residual
  additions) stays float and runs as torch runs it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

from binexp.binarize.abr import BoundedRectifier
from binexp.binarize.base import BinaryWeights, evaluating
from binexp.binarize.binary_bn import BinaryBN, _BinaryBNStepForm
from binexp.binarize.fp import ThresholdableReLU
from binexp.binarize.functional import SignActivation, binary_sign
from binexp.binarize.sbn import ScaledTanh
from binexp.errors import BinexpError

THRESHOLD_ACTIVATIONS = (BoundedRectifier, ThresholdableReLU, SignActivation, ScaledTanh)
PLUS_MINUS_ONE = (SignActivation, ScaledTanh)
LEAVES = (nn.Conv2d, nn.Linear, _BatchNorm, *THRESHOLD_ACTIVATIONS)
# the forwards the lowering reproduces from a layer's parameters (binary-weight layers: BinaryWeights' contract);
# activations are different: their thresholds come from running the modules themselves
WEIGHTED = (nn.Conv2d, nn.Linear, _BatchNorm)
KNOWN_FORWARDS = {nn.Conv2d.forward, nn.Linear.forward, _BatchNorm.forward, _BinaryBNStepForm.forward}
INT_LIMIT = 2**30  # beyond any popcount sum: the bound of a channel that always (-) or never (+) fires


class ExportError(BinexpError):
    """The network has something the step-function form cannot express; the message names the layer."""


# what a new method's layers need to be, so that the lowering knows them (README, "Adding a method")
EXPORTABLE = ("an activation whose forward is sign subclasses binexp.binarize.functional.SignActivation (its "
              "binarize() has the method's own backward), a binary-weight layer is an nn.Conv2d or nn.Linear with "
              "binexp.binarize.base.BinaryWeights; float layers export as torch's Conv2d, Linear, BatchNorm, ReLU, "
              "max/average pooling, Flatten, add and cat, and no others (README: Adding a method)")


def _no_rule(node: fx.Node, what: str) -> ExportError:
    """The error for a traced op the lowering does not know, naming the layer whose forward it came from."""
    stack = node.meta.get("nn_module_stack") or {}
    where = ""
    if stack:
        path, kind = list(stack.values())[-1]
        where = f" in layer {path} ({getattr(kind, '__name__', str(kind).rpartition('.')[2])})"
    return ExportError(f"{node.name}: {what}{where} has no export rule; {EXPORTABLE}")


@dataclass
class Op:
    kind: str
    name: str  # the value it produces
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Value:
    """What a runtime value holds: `float`, `bits` (`pm1`: 1 is +1, 0 is -1; `01`) or `ints` (popcount sums), and
    what is still to be applied to it: the binary `layer`'s scale and bias, then a batch norm `bn`."""

    name: str
    kind: str
    sem: str = ""
    layer: nn.Module | None = None
    bn: _BatchNorm | None = None


class _Tracer(fx.Tracer):
    def __init__(self):
        super().__init__()
        self.failed_in: tuple[str, nn.Module] | None = None  # the innermost layer whose forward did not trace

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            self.failed_in = self.failed_in or (self.path_of_module(m), m)
            raise


def _trace(net: nn.Module) -> fx.Graph:
    """torch.fx's graph of `net`; a forward it cannot trace (Python that reads tensor values or iterates over a
    shape) is refused naming the layer, not with fx's traceback."""
    tracer = _Tracer()
    try:
        return tracer.trace(net)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError ... from inside the user's forward
        if tracer.failed_in is None:
            raise
        path, m = tracer.failed_in
        raise ExportError(f"layer {path} ({type(m).__name__}): torch.fx cannot trace its forward ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); the export reads a network through "
                          f"torch.fx, so a forward must not branch on or iterate over tensor values or shapes") from None


def _np(t: torch.Tensor, dtype=np.float32) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype)


def pack_rows(signs: torch.Tensor) -> np.ndarray:
    """(O, ...) weights -> (O, ceil(K/8)) uint8, bit 1 for w >= 0 (+1), rows in torch's (C, kh, kw) order."""
    flat = signs.detach().cpu().reshape(signs.shape[0], -1).numpy()
    return np.packbits(flat >= 0, axis=-1)


def _fires(out: torch.Tensor, act: nn.Module) -> torch.Tensor:
    return out > (0 if isinstance(act, PLUS_MINUS_ONE) else 0.5)


# every sign of a float32 near 0 and far from it: a forward that is not sign(x) differs from it on one of these
SIGN_PROBE = torch.cat((-torch.logspace(-30, 30, 601), torch.zeros(1), torch.logspace(-30, 30, 601)))


def check_sign_forward(act: SignActivation, channels: int, where: str) -> None:
    """The lowering computes sign(x - threshold) for a SignActivation, as its step form does with BinaryBN: a
    `binarize` whose forward is something else would be exported as a sign, silently, so it is refused."""
    x = SIGN_PROBE[:, None].expand(len(SIGN_PROBE), channels).contiguous()
    with torch.no_grad():
        out = act.binarize(x)
    wrong = (out != binary_sign(x)).any(dim=1).nonzero()
    if len(wrong):
        at = float(SIGN_PROBE[wrong[0, 0]])
        raise ExportError(f"{where}: binarize(x) is not sign(x) in the forward (at x={at:g} it gives "
                          f"{sorted(set(out[wrong[0, 0]].tolist()))}); the export and step mode compute sign(x - "
                          "threshold): a shift goes in the activation's `threshold` (one value per channel, e.g. a "
                          "Parameter: ReActNet's RSign), and binarize() keeps sign's forward with the method's backward")


def integer_bounds(fires: torch.Tensor, values: torch.Tensor, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(D, bound) per channel with [D*x >= bound] == fires[x] for every x of `values` (fires: (len(values), C)).

    A channel that fires for a top range of values gets D = +1, for a bottom range D = -1, always or never a bound
    beyond every value; any other pattern is not a threshold and is refused."""
    x = values.to(torch.int64)[:, None]
    top = fires[-1]
    direction = torch.where(top | ~fires[0], 1, -1)  # fires at the top (or never): +1; only at the bottom: -1
    signed = direction[None, :] * x
    big = torch.full_like(signed, INT_LIMIT)
    bound = torch.where(fires, signed, big).min(dim=0).values  # the smallest D*x that fires
    bound = torch.where(fires.any(0), bound, torch.full_like(bound, INT_LIMIT))
    bound = torch.where(fires.all(0), torch.full_like(bound, -INT_LIMIT), bound)
    wrong = ((signed >= bound[None, :]) != fires).any(0)
    if wrong.any():
        channels = torch.nonzero(wrong).flatten()[:5].tolist()
        raise ExportError(f"{where}: channels {channels} do not fire on one side of a threshold; no step form")
    return direction.numpy().astype(np.int8), bound.numpy().astype(np.int32)


class Lowering:
    def __init__(self, net: nn.Module, image_shape: tuple[int, ...]):
        self.net = net
        self.modules = dict(net.named_modules())
        self.graph = fx.GraphModule(net, _trace(net))
        with evaluating(self.graph, step=True):
            ShapeProp(self.graph).propagate(torch.zeros(1, *image_shape))
        self.ops: list[Op] = []
        self.values: dict[str, Value] = {}
        self.input, self.output = "", ""

    # ---- helpers ----------------------------------------------------------------------------------------
    def emit(self, kind: str, name: str, inputs: list[str], attrs: dict | None = None,
             tensors: dict[str, np.ndarray] | None = None) -> None:
        self.ops.append(Op(kind, name, inputs, attrs or {}, tensors or {}))

    @staticmethod
    def channels(node: fx.Node) -> int:
        return int(node.meta["tensor_meta"].shape[1])

    @staticmethod
    def shape(node: fx.Node) -> list[int]:
        return [int(s) for s in node.meta["tensor_meta"].shape[1:]]

    def materialize(self, v: Value) -> Value:
        """A value with its pending scale and bias applied (an `affine` op, the same arithmetic as the layer's
        `finish`); bits and bare ints become floats in the runtime as they are."""
        if v.bn is not None:
            raise ExportError(f"internal: a batch norm pending on {v.name} reached a non-threshold op")
        if v.layer is None:
            return v
        name = f"{v.name}.affine"
        if name in self.values:  # read by several ops (a residual's sum and the next batch norm): scaled once
            return self.values[name]
        tensors = {}
        scale = v.layer.output_scale()
        if scale is not None:
            tensors["scale"] = _np(scale)
        if v.layer.bias is not None:
            tensors["shift"] = _np(v.layer.bias)
        self.emit("affine", name, [v.name], {}, tensors)
        out = Value(name, "float")
        self.values[name] = out
        return out

    def arg(self, node: fx.Node, index: int = 0) -> Value:
        a = node.args[index]
        if not isinstance(a, fx.Node):
            raise ExportError(f"{node.name}: a constant argument {a!r} has no export rule")
        return self.values[a.name]

    # ---- lowering -----------------------------------------------------------------------------------------
    def run(self) -> list[Op]:
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                self.values[node.name] = Value(node.name, "float")
                self.input = node.name
            elif node.op == "call_module":
                self.values[node.name] = self.module(node, self.modules[node.target])
            elif node.op == "call_function":
                self.values[node.name] = self.function(node)
            elif node.op == "call_method":
                self.values[node.name] = self.method(node)
            elif node.op == "output":
                out = self.materialize(self.values[node.args[0].name])
                self.output = out.name
            else:
                raise _no_rule(node, f"fx op {node.op}")
        return self.ops

    def module(self, node: fx.Node, m: nn.Module) -> Value:
        if isinstance(m, WEIGHTED) and not isinstance(m, BinaryWeights) and type(m).forward not in KNOWN_FORWARDS:
            # the lowering reads a layer's parameters, never runs its forward: a sign(weight) in a forward of the
            # user's own would be exported as the latent float weights
            raise ExportError(f"layer {node.target} ({type(m).__name__}) overrides the forward of "
                              f"{next(b.__name__ for b in type(m).__mro__[1:] if b.forward in KNOWN_FORWARDS)}, which "
                              f"the export would not run; {EXPORTABLE}")
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return self.weighted(node, m)
        if isinstance(m, _BatchNorm):
            return self.batch_norm(node, m, self.arg(node))
        if isinstance(m, THRESHOLD_ACTIVATIONS):
            return self.threshold(node, m)
        if isinstance(m, nn.ReLU):
            v = self.materialize(self.arg(node))
            self.emit("relu", node.name, [v.name])
            return Value(node.name, "float")
        if isinstance(m, nn.MaxPool2d):
            return self.max_pool(node, m)
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            v = self.materialize(self.arg(node))
            if isinstance(m, nn.AvgPool2d):
                attrs = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": _pair(m.padding),
                         "ceil_mode": bool(m.ceil_mode), "count_include_pad": bool(m.count_include_pad)}
                self.emit("avg_pool", node.name, [v.name], attrs)
            else:
                self.emit("adaptive_avg_pool", node.name, [v.name], {"output_size": _pair(m.output_size)})
            return Value(node.name, "float")
        if isinstance(m, nn.Flatten):
            return self.flatten(node, self.arg(node), m.start_dim)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return self.arg(node)
        raise ExportError(f"layer {node.target} ({type(m).__name__}) has no export rule; {EXPORTABLE}")

    def weighted(self, node: fx.Node, m: nn.Module) -> Value:
        conv = isinstance(m, nn.Conv2d)
        if conv and (m.groups != 1 or _pair(m.dilation) != [1, 1] or m.padding_mode != "zeros"):
            raise ExportError(f"layer {node.target}: only groups=1, dilation=1, zero padding convolutions export")
        v = self.arg(node)
        attrs: dict[str, Any] = {"layer": node.target, "in": self.shape(node.args[0]), "out": self.shape(node)}
        if conv:
            attrs.update(kernel=_pair(m.kernel_size), stride=_pair(m.stride), padding=_pair(m.padding))
        kind = "conv" if conv else "linear"
        if isinstance(m, BinaryWeights):
            with evaluating(m, step=True):
                tensors = {"weight_bits": pack_rows(m.signs())}
            attrs["weight_shape"] = list(m.weight.shape)
            if v.kind == "bits":
                attrs["input"] = v.sem
                self.emit(f"binary_{kind}", node.name, [v.name], attrs, tensors)
                out = Value(node.name, "ints", layer=m)
            else:
                self.emit(kind, node.name, [self.materialize(v).name], attrs, tensors)
                out = Value(node.name, "float", layer=m)
        else:
            tensors = {"weight": _np(m.weight)}
            if m.bias is not None:
                tensors["bias"] = _np(m.bias)
            self.emit(kind, node.name, [self.materialize(v).name], attrs, tensors)
            out = Value(node.name, "float")
        norm = getattr(m, "output_norm", None)
        if norm is not None:  # the BN a binary output layer carries inside itself
            out = self.batch_norm(node, norm, out, name=f"{node.name}.output_norm")
        return out

    def batch_norm(self, node: fx.Node, bn: _BatchNorm, v: Value, name: str | None = None) -> Value:
        users = list(node.users) if name is None else []
        if len(users) == 1 and users[0].op == "call_module" and isinstance(self.modules[users[0].target], THRESHOLD_ACTIVATIONS):
            return Value(v.name, v.kind, v.sem, v.layer, bn=bn)  # folded into the threshold
        return self.emit_batch_norm(self.materialize(v), bn, name or node.name)

    def emit_batch_norm(self, v: Value, bn: _BatchNorm, name: str) -> Value:
        tensors = {"mean": _np(bn.running_mean), "var": _np(bn.running_var)}
        if bn.affine:
            tensors.update(weight=_np(bn.weight), bias=_np(bn.bias))
        self.emit("batch_norm", name, [v.name], {"eps": float(bn.eps)}, tensors)
        return Value(name, "float")

    def threshold(self, node: fx.Node, m: nn.Module) -> Value:
        v = self.arg(node)
        if isinstance(m, SignActivation):
            check_sign_forward(m, self.channels(node), f"layer {node.target} ({type(m).__name__})")
        sem = "pm1" if isinstance(m, PLUS_MINUS_ONE) else "01"
        attrs = {"layer": node.target, "output": sem, "shape": self.shape(node)}
        if v.kind == "ints":
            source, direction, bound = self.integer_threshold(node, m, v)
            attrs["input"] = "int"
        else:
            source, direction, bound = self.float_threshold(node, m, v)
            attrs["input"] = "float"
        self.emit("threshold", node.name, [source], attrs, {"direction": direction, "bound": bound})
        return Value(node.name, "bits", sem)

    def integer_threshold(self, node: fx.Node, m: nn.Module, v: Value) -> tuple[str, np.ndarray, np.ndarray]:
        """(the value compared, D, bound): the layer's finish, the BN and the activation run on every sum the layer
        can produce, +-fan-in."""
        fan_in = int(np.prod(v.layer.weight.shape[1:]))
        values = torch.arange(-fan_in - 1, fan_in + 2, dtype=torch.float32)
        c = self.channels(node)
        x = values[:, None].expand(len(values), c).contiguous()
        if isinstance(v.layer, nn.Conv2d):
            x = x[:, :, None, None]
        with evaluating(self.net, step=True):
            y = v.layer.finish(x)
            if v.bn is not None:
                y = v.bn(y)
            fires = _fires(m(y), m).reshape(len(values), c)
        return (v.name, *integer_bounds(fires, values, f"layer {node.target}"))

    def float_threshold(self, node: fx.Node, m: nn.Module, v: Value) -> tuple[str, np.ndarray, np.ndarray]:
        bn = v.bn
        v = self.materialize(Value(v.name, v.kind, v.sem, v.layer))
        c = self.channels(node)
        if bn is not None and isinstance(bn, _BinaryBNStepForm) and bn.feeds_sign:
            # the trained network's own step form: BinaryBN, s*y >= s*T rounded up to float32
            s, bound = BinaryBN.from_batchnorm(bn).float32_comparison()
            return v.name, s.numpy().astype(np.int8), bound.numpy()
        if bn is not None:
            v = self.emit_batch_norm(v, bn, f"{node.name}.bn")
        direction, bound = np.ones(c), np.zeros(c, dtype=np.float32)
        if isinstance(m, SignActivation) and m.threshold is not None:
            # y - t >= 0 <=> y >= t in float32: a correctly rounded difference keeps the exact one's sign
            bound = _np(m.threshold).reshape(c)
        if isinstance(m, ThresholdableReLU):  # y > 0 <=> y >= the smallest positive float32
            bound[:] = np.nextafter(np.float32(0), np.float32(1))
        if isinstance(m, BoundedRectifier):  # k*y >= 0: y >= 0 for k > 0, -y >= 0 for k < 0, always for k = 0
            k = _np(m.slope, np.float64)
            direction = np.where(k < 0, -1.0, 1.0)
            bound = np.where(k == 0, -np.inf, bound).astype(np.float32)
        return v.name, direction.astype(np.int8), bound

    def max_pool(self, node: fx.Node, m: nn.MaxPool2d) -> Value:
        v = self.arg(node)
        scale = v.layer.output_scale() if v.layer is not None else None
        if scale is not None and not bool((scale > 0).all()):
            v = self.materialize(v)  # max commutes with a positive scale only
        if _pair(m.dilation) != [1, 1] or (v.kind == "bits" and any(_pair(m.padding))):
            raise ExportError(f"layer {node.target}: max pooling with dilation or padding over binary values does not export")
        attrs = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": _pair(m.padding),
                 "ceil_mode": bool(m.ceil_mode)}
        self.emit("max_pool", node.name, [v.name], attrs)
        return Value(node.name, v.kind, v.sem, v.layer)

    def flatten(self, node: fx.Node, v: Value, start_dim: int) -> Value:
        if start_dim != 1:
            raise ExportError(f"{node.name}: only flatten(1) exports")
        v = self.materialize(v)
        self.emit("flatten", node.name, [v.name])
        return Value(node.name, v.kind, v.sem)

    def function(self, node: fx.Node) -> Value:
        if node.target is torch.cat:
            tensors, dim = node.args[0], node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            if dim != 1:
                raise ExportError(f"{node.name}: only concatenation over channels (dim=1) exports")
            names = [self.materialize(self.values[t.name]).name for t in tensors]
            self.emit("cat", node.name, names)
            return Value(node.name, "float")
        if node.target in (operator.add, torch.add):
            a, b = (self.materialize(self.arg(node, i)) for i in range(2))
            self.emit("add", node.name, [a.name, b.name])
            return Value(node.name, "float")
        if node.target is torch.flatten:
            return self.flatten(node, self.arg(node), node.args[1] if len(node.args) > 1 else 0)
        raise _no_rule(node, f"function {getattr(node.target, '__name__', node.target)}")

    def method(self, node: fx.Node) -> Value:
        if node.target == "flatten":
            return self.flatten(node, self.arg(node), node.args[1] if len(node.args) > 1 else 0)
        raise _no_rule(node, f"tensor method .{node.target}()")


def _pair(v: Any) -> list[int]:
    if isinstance(v, (tuple, list)):
        return [int(x) for x in v]
    return [int(v), int(v)]


def lower(net: nn.Module, image_shape: tuple[int, ...]) -> tuple[list[Op], str, str]:
    """(ops, input value name, output value name) of `net`'s step-function form."""
    lowering = Lowering(net, image_shape)
    ops = lowering.run()
    return ops, lowering.input, lowering.output
