"""Model size as deployed (BMXNet's Table 2): 1 bit per binary weight, 32 bits for every other float tensor.

Binary weights are the `weight` of layers marked `BinaryWeights`; everything else that a deployed model needs
(float weights, biases, batch-norm parameters and running statistics, slopes, thresholds) counts as float32, and
so do the scales a binary layer multiplies its output by (BWN/XNOR's alpha per output channel, BMXNet FB's mean |W|):
training derives them from the float weights; a deployed model has only the signs, so it stores them. They are not
parameters, so `size/params` and the all-float `size/bytes_float` leave them out.
Training bookkeeping is not counted: integer buffers (BN's num_batches_tracked) and the buffers a schedule writes
(ABR's slope_lambda and phase, SBN's nu) and the ones only a layer's training reads (STE B's frozen
input-gradient scale).
"""

from __future__ import annotations

import torch
from torch import nn

from binexp.binarize.base import BinaryWeights
from binexp.schedules import Schedule


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def _output_scales(net: nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        scales = [m.output_scale() for m in net.modules() if isinstance(m, BinaryWeights)]
    return [scale for scale in scales if scale is not None]


def model_size(net: nn.Module, scheduled: tuple[str, ...] = ()) -> dict[str, float]:
    """`scheduled`: the buffers the run's schedule writes (its method's `schedule_keys`), besides those of the
    schedules imported so far, which a schedule kept in a module of its own may not be at export time."""
    binary_ids = {id(m.weight) for m in net.modules() if isinstance(m, BinaryWeights)}
    scheduled = {*scheduled, *(value for schedule in _subclasses(Schedule) for value in schedule.provides)}
    scales = _output_scales(net)
    # a scale kept as a buffer (Section 4.4's frozen mean |W|) is counted once, with the other scales
    kept_scales = {id(scale) for scale in scales}
    buffers = [b for m in net.modules() for name, b in m._buffers.items()
               if b is not None and name not in scheduled and id(b) not in kept_scales
               and name not in getattr(m, "training_buffers", ())]
    tensors = {id(t): t for t in [*net.parameters(), *buffers] if t.is_floating_point()}
    binary = sum(t.numel() for i, t in tensors.items() if i in binary_ids)
    total = sum(t.numel() for t in tensors.values())
    return {
        "size/params": float(total),
        "size/binary_params": float(binary),
        "size/bytes_float": 4.0 * total,
        "size/bytes_binary": (binary + 7) // 8 + 4.0 * (total - binary + sum(scale.numel() for scale in scales)),
    }

