"""Architectures built from a method's blocks: `build_model(cfg.architecture, method, ...)`."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from binexp.binarize.base import Method
from binexp.builder import build
from binexp.models.base import initialize


def build_model(arch: DictConfig, method: Method, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Instantiate `arch` with the method's blocks, then initialise it."""
    model = build(arch, drop=("init",), method=method, image_shape=tuple(image_shape), num_classes=num_classes)
    initialize(model, OmegaConf.select(arch, "init", default="xavier"))
    method.finalize(model)
    return model
