"""`ImageData`: the LightningDataModule every source shares.

A source implements `load()` -> (train split, test split, class names). This class holds out a validation set,
cuts the `subset`, computes the input normalisation from the training images, and serves `DeviceBatches` on
the trainer's device (sharded by rank under DDP).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from binexp.data.loader import DeviceBatches, InputNorm, Normalize, channel_stats, image_mean
from binexp.data.split import Split, balanced_subset, stratified_holdout
from binexp.errors import ConfigError, parse_choice


@dataclass
class AugmentConfig:
    crop_padding: int = 0  # random crop of the image zero-padded by this many pixels (0: no crop)
    flip: bool = False  # random horizontal flip


@dataclass
class DataConfig:
    _target_: str = "???"
    name: str = "???"
    root: str = "${paths.data_dir}"
    download: bool = True
    subset: Optional[int] = None  # the first N training samples, class-balanced (smoke runs)
    val_size: int = 5000  # held out of the training set, class-balanced and seeded; 0 = no validation
    batch_size: int = 128
    eval_batch_size: int = 1000
    normalize: Normalize = Normalize.standard
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    hflip_keeps_class: bool = True  # a mirrored image keeps its label (not so digits); the CIFAR recipes' flip follows it
    seed: Optional[int] = "${seed}"  # hold-out and batch order (`binexp train` turns seed=null into a drawn seed)


def draw_seed() -> int:
    """A seed for `seed=null`; from `secrets`, not `random`, which a sweep's earlier job has seeded."""
    return secrets.randbelow(2**31)


def limit_to_count(batches: int, limit: int | float) -> int:
    """How many of `batches` Lightning's `limit_*_batches=limit` serves: an int is a count, a float a fraction."""
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise TypeError(f"a batch limit is an int or a float, not {limit!r}")
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


class ImageData(pl.LightningDataModule):
    name = "images"

    def __init__(
        self, root: str = "data", download: bool = True, subset: Optional[int] = None, val_size: int = 5000,
        batch_size: int = 128, eval_batch_size: int = 1000, normalize: str = "standard",
        augment: Optional[dict] = None, hflip_keeps_class: bool = True, seed: Optional[int] = 0,
        channels_last: bool = False,
    ):
        super().__init__()
        for key, value, least in (("subset", subset, 1), ("val_size", val_size, 0), ("batch_size", batch_size, 1),
                                  ("eval_batch_size", eval_batch_size, 1)):
            if value is not None and value < least:
                allowed = "null (every sample) or a count >= 1" if key == "subset" else f"a count >= {least}"
                raise ConfigError(f"dataset.{key}={value}: allowed is {allowed}")
        self.root, self.download = root, download
        self.subset, self.val_size = subset, val_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.normalize = parse_choice(Normalize, normalize, "dataset.normalize").value  # a subclass has no schema
        augment = augment or {}
        self.crop_padding, self.flip = int(augment.get("crop_padding", 0)), bool(augment.get("flip", False))
        if self.flip and not hflip_keeps_class:
            raise ConfigError(f"dataset.augment.flip=true: a mirrored {self.name} image is not of its class "
                              f"(dataset.hflip_keeps_class=false); allowed is flip=false")
        self.seed = seed if seed is not None else draw_seed()
        self.channels_last = channels_last
        self.splits: dict[str, Split] = {}
        self.classes: list[str] = []
        self.norm: InputNorm | None = None

    # ---- what a source provides ----------------------------------------------------------------------
    def load(self) -> tuple[Split, Split, list[str]]:
        raise NotImplementedError

    def declared_shape(self) -> tuple[tuple[int, int, int], int] | None:
        """(image shape, number of classes) as known before loading, or None where only the files tell."""
        return None

    # ---- shared ----------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.splits["train"].images.shape[1:])

    @property
    def has_validation(self) -> bool:
        return "val" in self.splits

    def validation_size(self) -> int:
        """With a subset, the hold-out shrinks with it (a quarter of the subset at most)."""
        return min(self.val_size, self.subset // 4) if self.subset else self.val_size

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        train, test, self.classes = self.load()
        n_val = self.validation_size()
        if n_val > 0:
            train, val = stratified_holdout(train, n_val, len(self.classes), self.seed)
            self.splits["val"] = val
        mean, std = channel_stats(train.images)
        mean_image = image_mean(train.images) if self.normalize == "caffe_image" else None
        self.norm = InputNorm.from_stats(self.normalize, mean, std, mean_image)
        if self.subset:
            if self.subset > len(train):  # it would train on every sample while its results said `subset`
                raise ConfigError(f"dataset.subset={self.subset}: more than the {len(train)} training samples "
                                  f"(dataset.val_size={n_val} held out); allowed is a count <= {len(train)}, or null "
                                  f"for all of them")
            if self.subset < len(self.classes):  # a class without a training sample, tested all the same
                raise ConfigError(f"dataset.subset={self.subset}: fewer samples than the {len(self.classes)} classes; "
                                  f"allowed is a count >= {len(self.classes)} (one of each class), or null for all")
            train = balanced_subset(train, self.subset, len(self.classes))
        self.splits.update(train=train, test=test)
        self.check_training_batches(world_size=1)

    def check_training_batches(self, world_size: int) -> None:
        """Training drops each process's last incomplete batch: a shard smaller than a batch would train nothing
        and the run would report its untrained weights."""
        n, shard = len(self.splits["train"]), len(self.splits["train"]) // world_size
        if shard < self.batch_size:
            each = f"; each of the {world_size} processes gets {shard}" if world_size > 1 else ""
            raise ConfigError(f"dataset.batch_size={self.batch_size}: more than the {n} training samples{each} "
                              f"(dataset.subset={'null' if self.subset is None else self.subset}, dataset.val_size="
                              f"{self.validation_size()}), so no "
                              f"training batch; allowed is a batch size <= {shard}")

    def check_batch_limits(self, world_size: int, limit: Any, interval: Any, validates: bool) -> None:
        """trainer.limit_train_batches and val_check_interval against an epoch's training batches, which Lightning
        checks only once fit has started, with a traceback."""
        batches = len(self.splits["train"]) // world_size // self.batch_size  # the last incomplete batch is dropped
        if isinstance(limit, float) and int(batches * limit) < 1:  # Lightning's count of a share
            raise ConfigError(f"trainer.limit_train_batches={limit}: under one of the {batches} training batches of an "
                              f"epoch; allowed is a share >= {1 / batches:.3g} or a count of batches >= 1")
        used = int(batches * limit) if isinstance(limit, float) else min(batches, limit)
        if validates and isinstance(interval, int) and not isinstance(interval, bool) and interval > used:
            raise ConfigError(f"trainer.val_check_interval={interval}: more than the {used} training batches of an "
                              f"epoch; allowed is a count in 1..{used} or a share of an epoch in (0.0, 1.0]")

    def check_eval_shards(self, world_size: int, limits: dict[str, Any]) -> None:
        """Under DDP a fractional trainer.limit_val/test_batches is taken of each process's own shard; where that
        gives the processes different numbers of batches, a process with none waits for the others forever (the
        curves and the protocol sum over the ranks), and a protocol job every rank repeats on the whole split would
        be scored on other images than test/acc."""
        if world_size < 2:
            return
        self.setup()
        for stage, limit in limits.items():
            if isinstance(limit, bool) or not isinstance(limit, float) or limit in (0.0, 1.0):
                continue
            if stage == "val" and not self.has_validation:
                continue
            shards = [DeviceBatches(self.splits[stage], self.eval_batch_size, self.norm, rank=r, world_size=world_size,
                                    device="cpu") for r in range(world_size)]
            counts = [limit_to_count(len(b), limit) for b in shards]
            if len(set(counts)) > 1:
                sizes = ", ".join(str(len(self.splits[stage]) // world_size + (r < len(self.splits[stage]) % world_size))
                                  for r in range(world_size))
                raise ConfigError(
                    f"trainer.limit_{stage}_batches={limit}: under DDP each of the {world_size} processes takes that "
                    f"share of its own part of the {stage} set ({sizes} images, batches of dataset.eval_batch_size="
                    f"{self.eval_batch_size}), which gives them {', '.join(map(str, counts))} batches; give a count "
                    f"per process instead (trainer.limit_{stage}_batches={max(counts) or 1})")

    def batches(
        self, stage: str, train: bool = False, device: torch.device | str | None = None, shard: bool = True,
    ) -> DeviceBatches:
        """Batches for work outside Lightning's own loops (the protocol, the binarization curves). Under DDP each
        rank gets its shard (`shard=False`: every rank the whole split, e.g. for a job that every rank repeats
        identically instead of sharing the work). "val" and "test" honour the trainer's `limit_val_batches` /
        `limit_test_batches` as Lightning does, so every number of a run comes from the batches its val/acc and
        test/acc came from (and a smoke run's protocol does not walk the whole test set)."""
        loader = self._loader(stage, train, device, shard)
        limit = getattr(self.trainer, f"limit_{stage}_batches", None) if stage in ("val", "test") else None
        if limit is not None:
            world = self.trainer.world_size
            if not shard and world > 1:
                # Lightning counts (or takes its share of) each rank's shard; the first k batches of every shard are
                # the whole split's first world x k
                rank_zero = DeviceBatches(self.splits[stage], self.eval_batch_size, self.norm, rank=0, world_size=world,
                                          device=self.splits[stage].images.device)
                limit = world * limit_to_count(len(rank_zero), limit)
            loader.max_batches = limit_to_count(len(loader), limit)
        return loader

    def _loader(
        self, stage: str, train: bool = False, device: torch.device | str | None = None, shard: bool = True,
    ) -> DeviceBatches:
        self.setup()
        trainer = self.trainer
        if device is None:
            device = trainer.strategy.root_device if trainer is not None else "cpu"
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None and shard else (0, 1)
        return DeviceBatches(
            self.splits[stage], self.batch_size if train else self.eval_batch_size, self.norm,
            shuffle=train, drop_last=train, crop_padding=self.crop_padding if train else 0,
            flip=self.flip and train, seed=self.seed, rank=rank, world_size=world, device=device,
            channels_last=self.channels_last,
        )

    # Lightning's loops get whole splits and apply trainer.limit_*_batches themselves (a fraction applied twice
    # would shrink the set twice)
    def train_dataloader(self) -> DeviceBatches:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DeviceBatches | list:
        return self._loader("val") if self.has_validation else []

    def test_dataloader(self) -> DeviceBatches:
        return self._loader("test")
