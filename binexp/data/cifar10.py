"""CIFAR-10: an ImageFolder copy at `<root>/cifar10-jpeg/` when present, else torchvision's pickled batches
at `<root>/cifar-10-batches-py` (downloaded when missing and allowed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from binexp.data.datamodule import DataConfig, ImageData
from binexp.data.errors import DatasetLayoutError, not_found
from binexp.data.imagefolder import has_image_folder, read_image_folder
from binexp.data.split import Split

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
JPEG_FOLDER = "cifar10-jpeg"


@dataclass
class CIFAR10Config(DataConfig):
    _target_: str = "binexp.data.cifar10.CIFAR10Data"
    name: str = "cifar10"
    cache_dir: Optional[str] = "${paths.cache_dir}"


class CIFAR10Data(ImageData):
    name = "cifar10"

    def __init__(self, cache_dir: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.cache_dir = cache_dir

    def declared_shape(self) -> tuple[tuple[int, int, int], int]:
        return (3, 32, 32), len(CLASSES)

    def load(self) -> tuple[Split, Split, list[str]]:
        folder = Path(self.root) / JPEG_FOLDER
        if has_image_folder(folder):
            train, test, classes = read_image_folder(folder, self.cache_dir)
            if classes != CLASSES:
                raise DatasetLayoutError(f"{folder}: class folders {classes} are not CIFAR-10's {CLASSES}")
            return train, test, classes
        from torchvision.datasets import CIFAR10

        splits = []
        for train in (True, False):
            try:
                ds = CIFAR10(self.root, train=train, download=self.download)
            except Exception as err:
                looked = [str(folder / "{train,test}/<class>/"), str(Path(self.root) / "cifar-10-batches-py")]
                raise not_found("CIFAR-10", looked, err) from None
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
            splits.append(Split(images, torch.as_tensor(ds.targets, dtype=torch.long)))
        return splits[0], splits[1], CLASSES
