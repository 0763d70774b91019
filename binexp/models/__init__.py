"""Architectures built from a method's blocks: `build_model(cfg.architecture, method, ...)`."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from binexp.binarize.base import Method
from binexp.builder import build
from binexp.errors import ConfigError
from binexp.models.base import initialize


def build_model(arch: DictConfig, method: Method, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Instantiate `arch` with the method's blocks, then initialise it."""
    model = build(arch, drop=("init",), expect=nn.Module, method=method, image_shape=tuple(image_shape),
                  num_classes=num_classes)
    initialize(model, OmegaConf.select(arch, "init", default="xavier"))
    method.finalize(model)
    return model


def check_input_fits(arch: DictConfig, new_method: Callable[[], Method], image_shape: tuple[int, int, int],
                     num_classes: int) -> None:
    """The network built and run on the meta device (no memory, no arithmetic): an image too small for the
    architecture's kernels and poolings is refused naming the key, not met as a traceback in the first training
    step. A network whose forward the meta device cannot run (one that reads values: `.item()`, a branch on a
    tensor) is run again on two real images before it is refused. `new_method` builds a method for each try
    (building a network registers its layers with its method)."""
    try:
        _forward(arch, new_method(), image_shape, num_classes, "meta")
        return
    except RuntimeError:
        pass
    try:
        _forward(arch, new_method(), image_shape, num_classes, "cpu")
    except RuntimeError as err:
        raise ConfigError(f"dataset.image_shape={list(image_shape)}: the network of architecture={arch.name} does not "
                          f"take it (its forward pass: {str(err).splitlines()[0]}); give larger images or another "
                          f"architecture") from None


def _forward(arch: DictConfig, method: Method, image_shape: tuple[int, int, int], num_classes: int, device: str) -> None:
    with torch.device(device), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the initialisation of a layer the image shrank to nothing: refused after
        build_model(arch, method, image_shape, num_classes).train()(torch.zeros(2, *image_shape))
