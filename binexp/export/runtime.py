"""The reference runtime: executes an exported step-function model on the CPU.

Binary layers run on bits: activations are packed along channels into 64-bit words per pixel, windows of words
are cut (im2col on words, 64 channels per word), and every output is a popcount of xnor (+-1 inputs) or and
({0,1} inputs) with the layer's packed weights, accumulated as integers (`binexp.export.popcount`):

    +-1 inputs:  x . w = 2 * popcount(xnor(x, w)) - n        {0,1} inputs:  x . w = 2 * popcount(x & w) - popcount(x)

Zero padding of a +-1 input has no bit of its own (a 0 bit is -1), so padded taps are counted as -1 and corrected
by the sum of the weights they met, a per-position constant computed once per input size. Thresholds compare the
integer sums with integer bounds. Float layers (the first and last of most methods, BN that feeds no binary
activation, pooling, residual additions) run as torch runs them, so they compute what the trained network computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from binexp.export.popcount import popcount_gemm


@dataclass
class RuntimeValue:
    tensor: torch.Tensor
    kind: str  # float | bits | ints
    sem: str = ""  # bits: pm1 | 01

    def as_float(self) -> torch.Tensor:
        if self.kind == "float":
            return self.tensor
        # float layers get the memory layout the trained network's have: oneDNN's summation order follows it
        if self.kind == "bits" and self.sem == "pm1":
            return (self.tensor.to(torch.float32) * 2 - 1).contiguous()
        return self.tensor.to(torch.float32).contiguous()  # {0,1} bits, integer sums (exact below 2^24)


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2))) if v.dim() == 1 else v


def _words(bits: np.ndarray) -> np.ndarray:
    """Pack the last axis of a 0/1 uint8 array into uint64 words (the last word zero-padded)."""
    packed = np.packbits(bits, axis=-1)
    pad = (-packed.shape[-1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((*packed.shape[:-1], pad), np.uint8)], axis=-1)
    return np.ascontiguousarray(packed).view(np.uint64)


def pack_channels(bits: torch.Tensor) -> np.ndarray:
    """0/1 uint8 (N, C, ...) -> uint64 words (N, ..., ceil(C/64)) in np.packbits order (the weights' order).
    Binary layers hand out channels-last tensors, so moving channels last is free on the usual path."""
    if bits.dim() > 2:
        bits = bits.permute(0, *range(2, bits.dim()), 1)
    return _words(bits.contiguous().numpy())


def unpack_weights(bits: np.ndarray, shape: list[int]) -> np.ndarray:
    """Packed rows (O, ceil(K/8)) -> +-1 float32 weights of `shape`."""
    k = int(np.prod(shape[1:]))
    return (np.unpackbits(bits, axis=-1, count=k).astype(np.float32) * 2 - 1).reshape(shape)


def _max_pool_exact(x: torch.Tensor, attrs: dict) -> torch.Tensor:
    """Max pooling of integer sums or bits. Non-overlapping windows (kernel = stride, no padding, the usual 2x2)
    are a reshape and a max over channels-last memory; other windows go through float32, exact for these values."""
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    n, c, h, w = x.shape
    if (kh, kw) == (sh, sw) and not (ph or pw) and (not attrs["ceil_mode"] or (h % kh == 0 and w % kw == 0)):
        ho, wo = h // kh, w // kw
        nhwc = x.permute(0, 2, 3, 1)[:, : ho * kh, : wo * kw].contiguous().numpy()
        pooled = nhwc.reshape(n, ho, kh, wo, kw, c).max(axis=(2, 4))
        return torch.from_numpy(pooled).permute(0, 3, 1, 2)
    pooled = F.max_pool2d(x.to(torch.float32), (kh, kw), (sh, sw), (ph, pw), ceil_mode=attrs["ceil_mode"])
    return pooled.to(x.dtype)


class BinaryLayer:
    """A packed binary conv or linear layer: integer sums from xnor/and + popcount."""

    def __init__(self, attrs: dict, bits: np.ndarray):
        self.conv = "kernel" in attrs
        self.use_and = attrs["input"] == "01"
        self.shape = attrs["weight_shape"]
        self.layer = attrs.get("layer", "a binary layer")
        signs = unpack_weights(bits, self.shape)
        self.signs = torch.from_numpy(signs)
        if self.conv:
            self.kernel, self.stride, self.padding = attrs["kernel"], attrs["stride"], attrs["padding"]
            c = self.shape[1]
            # rows in (kh, kw, channel-words) order, the order windows of packed pixels come in
            self.weights = _words((signs.transpose(0, 2, 3, 1) >= 0).astype(np.uint8)).reshape(self.shape[0], -1)
            words_per_pixel = self.weights.shape[1] // (self.kernel[0] * self.kernel[1])
            self.pad_bits = self.kernel[0] * self.kernel[1] * (64 * words_per_pixel - c)
        else:
            self.weights = _words((signs >= 0).astype(np.uint8))
            self.pad_bits = 64 * self.weights.shape[1] - self.shape[1]
        self.n = int(np.prod(self.shape[1:]))
        self._corrections: dict[tuple[int, int], torch.Tensor] = {}

    def _correction(self, h: int, w: int) -> torch.Tensor:
        """Per output position, the sum of the weights that met zero padding (counted as -1 by the bits)."""
        if (h, w) not in self._corrections:
            ph, pw = self.padding
            ring = F.pad(torch.zeros(1, self.shape[1], h, w), (pw, pw, ph, ph), value=1.0)
            correction = F.conv2d(ring, self.signs, stride=self.stride).round().to(torch.int32)
            self._corrections[(h, w)] = correction.contiguous(memory_format=torch.channels_last)
        return self._corrections[(h, w)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != (4 if self.conv else 2) or x.shape[1] != self.shape[1]:
            # inputs of another size can pack into as many 64-bit words, and the sums would come out without an error
            takes = f"(N, {self.shape[1]}, H, W)" if self.conv else f"(N, {self.shape[1]})"
            raise ValueError(f"{self.layer}: input of shape {tuple(x.shape)}, the exported layer takes {takes}")
        if self.conv:
            n, _, h, w = x.shape
            (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
            pixels = np.pad(pack_channels(x), ((0, 0), (ph, ph), (pw, pw), (0, 0)))  # (N, H, W, words)
            windows = np.lib.stride_tricks.sliding_window_view(pixels, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
            ho, wo = windows.shape[1], windows.shape[2]
            rows = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, self.weights.shape[1])
        else:
            rows = pack_channels(x)
        counts = popcount_gemm(rows, self.weights, self.use_and)
        if self.use_and:
            counts *= 2
            counts -= np.bitwise_count(rows).sum(axis=1, dtype=np.int32)[:, None]
        else:
            counts *= 2
            counts -= 2 * self.pad_bits + self.n
        out = torch.from_numpy(counts)
        if not self.conv:
            return out
        out = out.view(n, ho, wo, self.shape[0]).permute(0, 3, 1, 2)  # NCHW indexing over channels-last memory
        if not self.use_and and (ph or pw):
            out += self._correction(h, w)
        return out


class StepModel:
    """Runs an exported model: `model(x)` on normalised float inputs, `model.pixels(uint8 images)` on raw ones."""

    def __init__(self, manifest: dict, tensors: dict[str, np.ndarray]):
        self.manifest = manifest
        self.ops = manifest["ops"]
        self.input, self.output = manifest["input"], manifest["output"]
        self.tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        self.binary = {
            op["name"]: BinaryLayer(op["attrs"], tensors[op["tensors"]["weight_bits"]])
            for op in self.ops if op["kind"] in ("binary_conv", "binary_linear")
        }
        self.float_weights = {
            op["name"]: self._float_weight(op) for op in self.ops if op["kind"] in ("conv", "linear")
        }

    def _t(self, op: dict, key: str) -> torch.Tensor | None:
        name = op["tensors"].get(key)
        return self.tensors[name] if name is not None else None

    def _float_weight(self, op: dict) -> torch.Tensor:
        if "weight" in op["tensors"]:
            return self._t(op, "weight")
        # +-1 weights on real inputs; their scale and bias follow as an `affine` op, as the trained layer applies them
        return torch.from_numpy(unpack_weights(self.tensors[op["tensors"]["weight_bits"]].numpy(), op["attrs"]["weight_shape"]))

    def pixels(self, images: torch.Tensor, record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The logits of uint8 images, normalised as the manifest's `input_norm` says."""
        scale, shift = self._input_affine
        return self(images.float() * scale + shift, record)

    @cached_property
    def _input_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        # once per model: verify calls `pixels` per batch, and caffe_image's mean image is a C x H x W nested list
        from binexp.data.loader import InputNorm

        norm = self.manifest["input_norm"]
        return InputNorm.from_stats(norm["mode"], norm["mean"], norm["std"], norm.get("mean_image")).affine()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        channels = self.manifest.get("image_shape", [None])[0]
        if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
            raise ValueError(f"input of shape {tuple(x.shape)}: the model was exported for images of shape "
                             f"{tuple(self.manifest.get('image_shape', ()))}, given as (N, C, H, W)")
        values = {self.input: RuntimeValue(x.to(torch.float32).cpu(), "float")}
        for op in self.ops:
            ins = [values[name] for name in op["inputs"]]
            values[op["name"]] = out = self._run(op, ins)
            if record is not None and op["kind"] == "threshold":
                record[op["attrs"]["layer"]] = out.tensor
        return values[self.output].as_float()

    def _run(self, op: dict, ins: list[RuntimeValue]) -> RuntimeValue:
        kind, attrs = op["kind"], op["attrs"]
        x = ins[0]
        if kind in ("binary_conv", "binary_linear"):
            return RuntimeValue(self.binary[op["name"]](x.tensor), "ints")
        if kind == "conv":
            return RuntimeValue(F.conv2d(x.as_float(), self.float_weights[op["name"]], self._t(op, "bias"),
                                         attrs["stride"], attrs["padding"]), "float")
        if kind == "linear":
            return RuntimeValue(F.linear(x.as_float(), self.float_weights[op["name"]], self._t(op, "bias")), "float")
        if kind == "threshold":
            direction, bound = self._t(op, "direction"), self._t(op, "bound")
            if attrs["input"] == "int":
                fires = _per_channel(direction.to(torch.int32), x.tensor) * x.tensor >= _per_channel(bound, x.tensor)
            else:
                v = x.as_float()
                fires = _per_channel(direction.to(torch.float32), v) * v >= _per_channel(bound, v)
            return RuntimeValue(fires.to(torch.uint8), "bits", attrs["output"])
        if kind == "affine":
            v = x.as_float()
            scale, shift = self._t(op, "scale"), self._t(op, "shift")
            if scale is not None:
                v = v * _per_channel(scale, v)
            if shift is not None:
                v = v + _per_channel(shift, v)
            return RuntimeValue(v, "float")
        if kind == "batch_norm":
            out = F.batch_norm(x.as_float(), self._t(op, "mean"), self._t(op, "var"), self._t(op, "weight"),
                               self._t(op, "bias"), False, 0.0, attrs["eps"])
            return RuntimeValue(out, "float")
        if kind == "max_pool":
            if x.kind == "float":
                return RuntimeValue(F.max_pool2d(x.tensor, attrs["kernel"], attrs["stride"], attrs["padding"],
                                                 ceil_mode=attrs["ceil_mode"]), "float")
            return RuntimeValue(_max_pool_exact(x.tensor, attrs), x.kind, x.sem)
        if kind == "avg_pool":
            return RuntimeValue(F.avg_pool2d(x.as_float(), attrs["kernel"], attrs["stride"], attrs["padding"],
                                             ceil_mode=attrs["ceil_mode"], count_include_pad=attrs["count_include_pad"]), "float")
        if kind == "adaptive_avg_pool":
            return RuntimeValue(F.adaptive_avg_pool2d(x.as_float(), attrs["output_size"]), "float")
        if kind == "relu":
            return RuntimeValue(F.relu(x.as_float()), "float")
        if kind == "flatten":
            return RuntimeValue(x.tensor.flatten(1), x.kind, x.sem)
        if kind == "cat":
            return RuntimeValue(torch.cat([v.as_float() for v in ins], dim=1), "float")
        if kind == "add":
            return RuntimeValue(ins[0].as_float() + ins[1].as_float(), "float")
        raise ValueError(f"op {op['name']}: unknown kind {kind!r}")
