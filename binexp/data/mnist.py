"""MNIST through torchvision: `<root>/MNIST/raw/*-ubyte`, downloaded when missing and allowed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from binexp.data.datamodule import DataConfig, ImageData
from binexp.data.errors import not_found
from binexp.data.split import Split


@dataclass
class MNISTConfig(DataConfig):
    _target_: str = "binexp.data.mnist.MNISTData"
    name: str = "mnist"
    batch_size: int = 64
    hflip_keeps_class: bool = False  # a mirrored digit is another digit or none: no flips, whatever the recipe


class MNISTData(ImageData):
    name = "mnist"

    def declared_shape(self) -> tuple[tuple[int, int, int], int]:
        return (1, 28, 28), 10

    def load(self) -> tuple[Split, Split, list[str]]:
        from torchvision.datasets import MNIST

        splits = []
        for train in (True, False):
            try:
                ds = MNIST(self.root, train=train, download=self.download)
            except Exception as err:  # offline download or missing files: both end here
                raise not_found("MNIST", [str(Path(self.root) / "MNIST" / "raw")], err) from None
            splits.append(Split(ds.data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)))
        return splits[0], splits[1], [str(i) for i in range(10)]
