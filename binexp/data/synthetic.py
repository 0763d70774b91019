"""Class templates plus noise, generated in memory from a fixed seed: unit tests and smoke runs, no files."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from binexp.data.datamodule import DataConfig, ImageData
from binexp.data.split import Split
from binexp.errors import ConfigError


@dataclass
class SyntheticConfig(DataConfig):
    _target_: str = "binexp.data.synthetic.SyntheticData"
    name: str = "synthetic"
    image_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    num_classes: int = 10
    num_train: int = 2048
    num_test: int = 512
    noise: float = 64.0  # pixel noise std around each class's template (0-255 scale)
    val_size: int = 256
    batch_size: int = 64
    eval_batch_size: int = 256


class SyntheticData(ImageData):
    name = "synthetic"
    GENERATOR_SEED = 1234  # the data is the same for every run seed

    def __init__(
        self, image_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, num_train: int = 2048,
        num_test: int = 512, noise: float = 64.0, **kwargs,
    ):
        kwargs.pop("root", None), kwargs.pop("download", None)
        if not (len(image_shape) == 3 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in image_shape)):
            raise ConfigError(f"dataset.image_shape={list(image_shape)}: allowed is [channels, height, width], whole "
                              f"numbers >= 1")
        super().__init__(**kwargs)
        self.shape, self.n_classes = tuple(image_shape), num_classes
        self.num_train, self.num_test, self.noise = num_train, num_test, noise

    def declared_shape(self) -> tuple[tuple[int, int, int], int]:
        return self.shape, self.n_classes

    def _sample(self, n: int, templates: torch.Tensor, g: torch.Generator) -> Split:
        labels = torch.arange(n) % self.n_classes
        labels = labels[torch.randperm(n, generator=g)]
        pixels = templates[labels] + self.noise * torch.randn(n, *self.shape, generator=g)
        return Split(pixels.round().clamp(0, 255).to(torch.uint8), labels)

    def load(self) -> tuple[Split, Split, list[str]]:
        g = torch.Generator().manual_seed(self.GENERATOR_SEED)
        templates = torch.rand(self.n_classes, *self.shape, generator=g) * 255
        train = self._sample(self.num_train, templates, g)
        test = self._sample(self.num_test, templates, g)
        return train, test, [f"class{i}" for i in range(self.n_classes)]
