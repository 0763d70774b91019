"""What every architecture shares: its config schema and weight initialisation.

Each architecture's YAML also pulls in its reference training recipe from conf/recipe/."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn

from binexp.errors import ConfigError


class Init(str, Enum):
    xavier = "xavier"  # the ABR paper's choice
    kaiming = "kaiming"
    torch = "torch"  # PyTorch's own layer defaults
    caffe = "caffe"  # the Caffe model file's own fillers (architectures that define `caffe_init`)


@dataclass
class ArchitectureConfig:
    _target_: str = "???"
    name: str = "???"
    width: float = 1.0  # multiplies every hidden layer's channels (the papers' 2x and 4x models)
    init: Init = Init.xavier


def scaled(channels: int, width: float) -> int:
    kept = int(round(channels * width))
    if kept < 1:  # a 1-channel layer in its place trained a network of a few dozen parameters
        raise ConfigError(f"architecture.width={width:g}: a layer of {channels} channels would keep {channels * width:.3g}; "
                          f"allowed is a width that keeps every layer at least one channel (>= {0.5 / channels:g} here)")
    return kept


def initialize(model: nn.Module, scheme: str) -> None:
    """Init conv and linear weights (a method's latent weights included); biases to zero."""
    if scheme == Init.torch:
        return
    if scheme == Init.caffe:
        caffe_init = getattr(model, "caffe_init", None)
        if caffe_init is None:
            raise ConfigError(f"architecture.init=caffe: {type(model).__name__} has no Caffe fillers; use xavier, kaiming or torch")
        caffe_init()
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == Init.xavier:
                nn.init.xavier_uniform_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
