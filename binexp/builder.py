"""`instantiate` for config nodes that also carry descriptive keys (name, recipe, ...) the target does not take."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

DESCRIPTIVE_KEYS = ("name",)


def build(node: DictConfig, drop: tuple[str, ...] = (), **kwargs: Any) -> Any:
    spec = OmegaConf.to_container(node, resolve=True)
    for key in (*DESCRIPTIVE_KEYS, *drop):
        spec.pop(key, None)
    return instantiate(spec, _convert_="all", **kwargs)
