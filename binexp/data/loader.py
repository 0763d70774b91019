"""Batches cut from uint8 tensors that live on the training device, with crop, flip and normalisation there.

A `DeviceBatches` is a plain iterable with a length, so Lightning uses it as a dataloader. Its randomness is a
function of (seed, epoch, batch index): an epoch can be replayed exactly, and a run resumed mid-epoch skips
the batches it already trained on (`state_dict` / `load_state_dict`, saved by Lightning in the checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import torch

from binexp.data.split import Split


class Normalize(str, Enum):
    """`dataset.normalize`: how pixels become inputs (InputNorm says each)."""

    standard = "standard"
    mean_only = "mean_only"
    caffe = "caffe"
    caffe_image = "caffe_image"


NORMALIZE_MODES = tuple(mode.value for mode in Normalize)


@dataclass
class InputNorm:
    """How uint8 pixels become network inputs; mean and std are per channel, in units of 1/255.

    standard: (x/255 - mean) / std.  mean_only: x/255 - mean (the ABR paper's inputs).
    caffe: x - 255*mean (Caffe's mean subtraction on raw pixel values, no scaling).
    caffe_image: x - 255*mean_image, the per-pixel mean image (C x H x W) that Caffe's CIFAR-10 example subtracts
    (its `mean.binaryproto`, from compute_image_mean); after a random crop it is subtracted at the crop's output
    positions.
    """

    mode: str
    mean: list[float]
    std: list[float]
    mean_image: list | None = None  # C x H x W nested lists, in units of 1/255; only for caffe_image

    @classmethod
    def from_stats(cls, mode: str, mean: list[float], std: list[float], mean_image: list | None = None) -> InputNorm:
        mode = str(getattr(mode, "value", mode))
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"dataset.normalize={mode!r} is not a normalisation (allowed: {', '.join(NORMALIZE_MODES)})")
        if (mode == "caffe_image") != (mean_image is not None):
            raise ValueError(f"dataset.normalize={mode}: a mean image is {'needed' if mean_image is None else 'only used'} "
                             f"with caffe_image")
        return cls(mode, [float(m) for m in mean], [float(s) for s in std], mean_image)

    def affine(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) such that input = pixels * scale + shift; each C x 1 x 1, the shift C x H x W for
        caffe_image."""
        mean = torch.tensor(self.mean, dtype=torch.float64).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(-1, 1, 1)
        if self.mode == "standard":
            scale, shift = 1 / (255 * std), -mean / std
        elif self.mode == "mean_only":
            scale, shift = torch.full_like(mean, 1 / 255), -mean
        elif self.mode == "caffe":
            scale, shift = torch.ones_like(mean), -255 * mean
        else:
            scale, shift = torch.ones_like(mean), -255 * torch.tensor(self.mean_image, dtype=torch.float64)
        return scale.float().to(device), shift.float().to(device)

    def apply(self, pixels: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine(pixels.device)
        return pixels.float() * scale + shift


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images, in units of 1/255 (chunked: no float copy)."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).transpose(0, 1).reshape(c, -1) / 255
        total += x.sum(1)
        squares += (x * x).sum(1)
    count = images.numel() / c
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def image_mean(images: torch.Tensor, chunk: int = 4096) -> list:
    """The per-pixel mean of uint8 images (C x H x W nested lists, in units of 1/255), chunked: no float copy."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        total += images[start : start + chunk].to(torch.float64).sum(0)
    return (total / (255 * images.shape[0])).tolist()


def host_to(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`values` (made on the CPU, so the augmentation is the same on every device) on `device`, without waiting.

    A copy from ordinary host memory to a GPU first waits for all the work queued on the GPU, which stopped the
    CPU from preparing the next training step (found by `scripts/bench_train.py --find-syncs`); a copy from
    pinned memory is queued like a kernel.
    """
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, shards: int = 1, shard: int = 0) -> torch.Tensor:
    """Each image's random H x W window of itself zero-padded by `padding` pixels on every side.

    `x` may be shard `shard` of `shards` (a DDP rank's part of a global batch, its samples at positions shard,
    shard + shards, ...): the offsets are drawn for the whole global batch and this shard's taken, so the ranks crop
    differently and together exactly as one process does the global batch."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    oy = host_to(torch.randint(0, 2 * padding + 1, (n * shards,), generator=generator)[shard::shards], x.device)
    ox = host_to(torch.randint(0, 2 * padding + 1, (n * shards,), generator=generator)[shard::shards], x.device)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator, shards: int = 1, shard: int = 0) -> torch.Tensor:
    """Half of the images mirrored left-right; a shard of a global batch as in `random_crop`."""
    flip = host_to(torch.rand(x.shape[0] * shards, generator=generator)[shard::shards] < 0.5, x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _generator(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(keys) & 0x7FFF_FFFF_FFFF_FFFF)


class DeviceBatches:
    def __init__(
        self, split: Split, batch_size: int, norm: InputNorm, shuffle: bool = False, drop_last: bool = False,
        crop_padding: int = 0, flip: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
        device: torch.device | str | None = None, channels_last: bool = False, max_batches: int | None = None,
    ):
        device = torch.device(device) if device is not None else split.images.device
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.flip, self.seed = crop_padding, flip, seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.max_batches = max_batches  # serve only the first this many batches (None: all)
        self.scale, self.shift = norm.affine(device)
        self.epoch = 0
        self.batches_served = 0  # in the current epoch, the skipped ones of a resumed epoch included
        self._skip = 0

    def _shard_size(self) -> int:
        n = len(self.labels)
        return n // self.world_size if self.drop_last else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._shard_size()
        batches = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_served": self.batches_served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self._skip = int(state["batches_served"])
        if self._skip >= len(self):
            # saved at an epoch's last batch: Lightning restarts in the next epoch without calling set_epoch, which
            # would otherwise find this epoch's batches all served and train none
            self.epoch, self._skip = self.epoch + 1, 0

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        order = torch.randperm(n, generator=_generator(self.seed, self.epoch)) if self.shuffle else torch.arange(n)
        order = order[self.rank :: self.world_size]
        return order[: self._shard_size()]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = host_to(self._order(), self.images.device)
        skip, self._skip = self._skip, 0
        self.batches_served = skip
        for b in range(skip, len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[index]
            if self.crop_padding or self.flip:
                g = _generator(self.seed, self.epoch, b)
                x = random_crop(x, self.crop_padding, g, self.world_size, self.rank)
                if self.flip:
                    x = random_flip(x, g, self.world_size, self.rank)
            x = x.float() * self.scale + self.shift
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.batches_served = b + 1
            yield x, self.labels[index]
