"""A split is images (uint8, N x C x H x W) with their labels; subsets and hold-outs keep classes balanced."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from binexp.errors import ConfigError


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


def _per_class_counts(n: int, num_classes: int) -> list[int]:
    """n spread over the classes, the first n % num_classes classes getting one more."""
    base, extra = divmod(n, num_classes)
    return [base + (c < extra) for c in range(num_classes)]


def _capped_counts(n: int, caps: list[int]) -> list[int]:
    """n spread over the classes as `_per_class_counts` does, no class above its cap: a class short of its share
    gives the shortfall to the others, one sample each in turn (n <= sum(caps))."""
    counts = [min(want, cap) for want, cap in zip(_per_class_counts(n, len(caps)), caps)]
    short = n - sum(counts)
    while short > 0:
        for c, cap in enumerate(caps):
            if short > 0 and counts[c] < cap:
                counts[c] += 1
                short -= 1
    return counts


def balanced_subset(split: Split, n: int, num_classes: int) -> Split:
    """The first samples of each class, n in all, in their original order (`dataset.subset=n`). A class with fewer
    samples than its share gives its shortfall to the others, one sample each in turn, so there are still n."""
    if n >= len(split):
        return split
    members = [torch.nonzero(split.labels == c).flatten() for c in range(num_classes)]
    keep = [m[:count] for m, count in zip(members, _capped_counts(n, [len(m) for m in members]))]
    index, _ = torch.sort(torch.cat(keep))
    return split.take(index)


def stratified_holdout(split: Split, n: int, num_classes: int, seed: int) -> tuple[Split, Split]:
    """A seeded random validation set of n samples, balanced over classes (a class keeps at least one training
    sample: a small class's shortfall comes from the others), and the rest for training. The
    validation set is served with its classes interleaved: a training split stored by class (an image folder) would
    otherwise give a `trainer.limit_val_batches` prefix, and the best checkpoint chosen on it, one or two classes."""
    if n >= len(split):
        raise ConfigError(f"dataset.val_size={n} leaves nothing to train on ({len(split)} training samples); "
                          f"allowed is a count < {len(split)}")
    members = [torch.nonzero(split.labels == c).flatten() for c in range(num_classes)]
    caps = [max(len(m) - 1, 0) for m in members]  # every class keeps a training sample
    if n > sum(caps):
        raise ConfigError(f"dataset.val_size={n}: would hold out every training sample of a class (classes of "
                          f"{[len(m) for m in members]} samples); allowed is a count <= {sum(caps)}")
    g = torch.Generator().manual_seed(seed)
    held = []
    for m, count in zip(members, _capped_counts(n, caps)):
        held.append(m[torch.randperm(len(m), generator=g)[:count]])
    val_index, _ = torch.sort(torch.cat(held))
    mask = torch.ones(len(split), dtype=torch.bool)
    mask[val_index] = False
    return split.take(torch.nonzero(mask).flatten()), interleave_classes(split.take(val_index))


def interleave_classes(split: Split) -> Split:
    """The first image of every class, then the second of every class, and so on (order within a class kept),
    so that any prefix of the split holds every class in about equal shares."""
    labels = split.labels
    rank = torch.zeros_like(labels)
    for c in labels.unique():
        where = labels == c
        rank[where] = torch.arange(int(where.sum()), device=labels.device)
    order = torch.argsort(rank * (int(labels.max()) + 1 if len(labels) else 1) + labels, stable=True)
    return Split(split.images[order], labels[order])
