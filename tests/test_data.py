"""Data: subsets, hold-outs, device batches (order, augmentation, resume), normalisation, real sources."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from binexp.data.cifar10 import CIFAR10Data
from binexp.data.datamodule import limit_to_count
from binexp.data.errors import DatasetLayoutError, DatasetNotFoundError
from binexp.data.imagefolder import ImageFolderData
from binexp.data.loader import (
    DeviceBatches,
    InputNorm,
    channel_stats,
    host_to,
    image_mean,
    random_crop,
    random_flip,
)
from binexp.data.mnist import MNISTData
from binexp.data.split import Split, balanced_subset, interleave_classes, stratified_holdout
from binexp.data.synthetic import SyntheticData
from binexp.errors import ConfigError


def toy_split(n: int = 100, classes: int = 10) -> Split:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return Split(images, torch.arange(n) % classes)


def test_balanced_subset_takes_the_first_samples_of_each_class():
    split = toy_split(100)
    sub = balanced_subset(split, 23, 10)
    assert len(sub) == 23
    assert torch.bincount(sub.labels, minlength=10).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert sub.images[:, 0, 0, 0].tolist() == sorted(sub.images[:, 0, 0, 0].tolist())
    assert sub.images[0, 0, 0, 0] == 0 and 90 not in sub.images[:, 0, 0, 0].tolist()


def test_a_short_class_gives_its_share_of_a_subset_to_the_others():
    labels = torch.tensor([0] * 2 + [1] * 10 + [2] * 10)
    split = Split(torch.arange(22, dtype=torch.uint8).view(22, 1, 1, 1), labels)
    sub = balanced_subset(split, 15, 3)  # shares 5/5/5; class 0 has 2, its 3 missing go to classes 1 and 2
    assert len(sub) == 15 and torch.bincount(sub.labels).tolist() == [2, 7, 6]
    assert sub.images.flatten().tolist() == [0, 1, *range(2, 9), *range(12, 18)]  # the first of each class


def test_holdout_is_disjoint_balanced_and_seeded():
    split = toy_split(100)
    train, val = stratified_holdout(split, 20, 10, seed=3)
    ids_train, ids_val = set(train.images[:, 0, 0, 0].tolist()), set(val.images[:, 0, 0, 0].tolist())
    assert len(train) == 80 and len(val) == 20 and not ids_train & ids_val
    assert torch.bincount(val.labels, minlength=10).tolist() == [2] * 10
    assert val.labels.tolist() == list(range(10)) * 2  # served with its classes interleaved
    again = stratified_holdout(split, 20, 10, seed=3)[1]
    assert torch.equal(again.images, val.images)
    assert not torch.equal(stratified_holdout(split, 20, 10, seed=4)[1].images, val.images)


def test_holdout_larger_than_the_data_is_refused():
    with pytest.raises(ValueError, match="dataset.val_size=100"):
        stratified_holdout(toy_split(100), 100, 10, seed=0)


NORM = InputNorm.from_stats("standard", [0.0], [1.0])


def ids(batch) -> list[int]:
    return batch[1].tolist()


def test_batches_cover_each_sample_once_per_epoch_in_a_seeded_order():
    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    loader = DeviceBatches(split, 3, NORM, shuffle=True, drop_last=True, seed=1)
    assert len(loader) == 3
    epoch0 = [i for b in loader for i in ids(b)]
    assert len(epoch0) == 9 and len(set(epoch0)) == 9
    loader.set_epoch(1)
    epoch1 = [i for b in loader for i in ids(b)]
    loader.set_epoch(0)
    assert [i for b in loader for i in ids(b)] == epoch0
    assert epoch1 != epoch0


def test_eval_batches_keep_order_and_the_remainder():
    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    loader = DeviceBatches(split, 4, NORM, shuffle=False, drop_last=False)
    assert len(loader) == 3
    assert [ids(b) for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_ranks_split_the_epoch_without_overlap():
    split = Split(torch.zeros(12, 1, 2, 2, dtype=torch.uint8), torch.arange(12))
    seen = []
    for rank in range(2):
        loader = DeviceBatches(split, 2, NORM, shuffle=True, drop_last=True, seed=5, rank=rank, world_size=2)
        assert len(loader) == 3
        seen += [i for b in loader for i in ids(b)]
    assert sorted(seen) == list(range(12))


def test_a_small_class_keeps_a_training_sample_and_the_others_make_up_the_hold_out():
    labels = torch.tensor([0] * 300 + [1] * 300 + [2] * 3)
    split = Split(torch.zeros(len(labels), 1, 1, 1, dtype=torch.uint8), labels)
    train, val = stratified_holdout(split, 30, 3, seed=0)
    assert torch.bincount(val.labels).tolist() == [14, 14, 2] and torch.bincount(train.labels).tolist() == [286, 286, 1]
    with pytest.raises(ConfigError, match=r"^dataset\.val_size=601: would hold out every training sample of a class "
                                          r"\(classes of \[300, 300, 3\] samples\); allowed is a count <= 600$"):
        stratified_holdout(split, 601, 3, seed=0)


def test_ranks_augment_their_shards_as_one_process_augments_the_global_batch():
    images = torch.randint(0, 255, (48, 3, 8, 8), dtype=torch.uint8)
    split = Split(images, torch.arange(48))
    kwargs = dict(shuffle=True, drop_last=True, crop_padding=2, flip=True, seed=3)
    whole = list(DeviceBatches(split, 8, NORM, **kwargs))  # one process, global batch 8
    ranks = [list(DeviceBatches(split, 4, NORM, rank=r, world_size=2, **kwargs)) for r in range(2)]
    for b, (x, y) in enumerate(whole):
        # rank r holds the global batch's samples r, r + 2, ...: the same samples, cropped and flipped the same way
        for r in range(2):
            assert torch.equal(ranks[r][b][1], y[r::2]) and torch.equal(ranks[r][b][0], x[r::2])
    assert not torch.equal(ranks[0][0][0], ranks[1][0][0])


def test_a_loader_saved_after_its_epochs_last_batch_resumes_with_the_next_epoch():
    split = Split(torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40))
    kwargs = dict(shuffle=True, drop_last=True, crop_padding=2, flip=True, seed=9)
    saved = DeviceBatches(split, 8, NORM, **kwargs)
    saved.set_epoch(2)
    assert len(list(saved)) == 5 and saved.state_dict() == {"epoch": 2, "batches_served": 5}
    resumed = DeviceBatches(split, 8, NORM, **kwargs)
    resumed.load_state_dict(saved.state_dict())  # Lightning restarts in epoch 3 without calling set_epoch
    following = DeviceBatches(split, 8, NORM, **kwargs)
    following.set_epoch(3)
    rest, expected = list(resumed), list(following)
    assert len(rest) == 5 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, expected))


def test_resumed_loader_continues_with_the_same_batches_and_augmentation():
    images = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    split = Split(images, torch.arange(40))
    kwargs = dict(shuffle=True, drop_last=True, crop_padding=2, flip=True, seed=9)
    reference = DeviceBatches(split, 8, NORM, **kwargs)
    reference.set_epoch(2)
    full = list(reference)

    first = DeviceBatches(split, 8, NORM, **kwargs)
    first.set_epoch(2)
    it = iter(first)
    next(it), next(it)  # trained on two batches
    state = first.state_dict()
    assert state == {"epoch": 2, "batches_served": 2}

    resumed = DeviceBatches(split, 8, NORM, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    rest = list(resumed)
    assert len(rest) == 3
    for (xa, ya), (xb, yb) in zip(full[2:], rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_random_crop_cuts_windows_of_the_zero_padded_image():
    x = torch.randint(1, 255, (16, 2, 5, 6), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 5, (16,), generator=g), torch.randint(0, 5, (16,), generator=g)
    for i in range(16):
        assert torch.equal(out[i], padded[i, :, oy[i] : oy[i] + 5, ox[i] : ox[i] + 6])
    assert torch.equal(random_crop(x, 0, g), x)



def test_random_flip_mirrors_each_image_left_to_right_or_leaves_it():
    x = torch.randint(0, 255, (256, 2, 3, 4), dtype=torch.uint8)
    out = random_flip(x, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out[i], x[i, :, :, [3, 2, 1, 0]]) for i in range(256)]
    kept = [torch.equal(out[i], x[i]) for i in range(256)]
    assert all(m != k for m, k in zip(mirrored, kept))  # each image one or the other (random pixels: never both)
    assert 100 < sum(mirrored) < 156  # about half, from a fair coin per image


def test_channel_stats_are_the_mean_and_population_std_per_channel_in_units_of_one_over_255():
    x = torch.zeros(3, 2, 2, 2, dtype=torch.uint8)
    x[:, 0] = 255  # channel 0: all 1.0
    x[0, 1], x[1, 1], x[2, 1] = 0, 51, 102  # channel 1: 0.0, 0.2, 0.4 in equal shares
    mean, std = channel_stats(x, chunk=2)  # chunks split the images: the sums carry over
    assert mean == pytest.approx([1.0, 0.2])
    assert std == pytest.approx([0.0, (0.08 / 3) ** 0.5], abs=1e-5)  # population std: divides by n

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_augmentation_batches_are_the_same_on_the_gpu_and_queue_no_blocking_copy():
    split = toy_split(64)
    kwargs = dict(shuffle=True, crop_padding=1, flip=True, seed=3)
    cpu = list(DeviceBatches(split, 16, NORM, device="cpu", **kwargs))
    on_gpu = DeviceBatches(split, 16, NORM, device="cuda", **kwargs)  # the one upload of the dataset may block
    torch.cuda.set_sync_debug_mode("error")  # a blocking host-to-GPU copy while serving batches raises
    try:
        gpu = list(on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(gpu) == len(cpu) == 4
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)  # the same windows and flips


def test_host_to_keeps_values_and_dtype_on_the_cpu():
    values = torch.tensor([3, 0, 7])
    moved = host_to(values, torch.device("cpu"))
    assert moved.device.type == "cpu" and moved.dtype == torch.int64 and torch.equal(moved, values)


@pytest.mark.parametrize(
    "mode, expected",
    [("standard", [(0 / 255 - 0.5) / 0.25, (255 / 255 - 0.5) / 0.25]), ("mean_only", [-0.5, 0.5]), ("caffe", [-127.5, 127.5])],
)
def test_input_normalisation_modes(mode, expected):
    norm = InputNorm.from_stats(mode, [0.5], [0.25])
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert norm.apply(x).flatten().tolist() == pytest.approx(expected)


def test_unknown_normalisation_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: standard, mean_only, caffe, caffe_image"):
        InputNorm.from_stats("zscore", [0.5], [0.2])


def test_caffe_image_subtracts_the_per_pixel_mean_of_the_training_images():
    images = torch.tensor([[[[0, 10], [20, 30]]], [[[2, 30], [40, 50]]]], dtype=torch.uint8)  # 2 x 1 x 2 x 2
    mean_image = image_mean(images, chunk=1)
    torch.testing.assert_close(torch.tensor(mean_image, dtype=torch.float64) * 255,
                               torch.tensor([[[1.0, 20.0], [30.0, 40.0]]], dtype=torch.float64))
    norm = InputNorm.from_stats("caffe_image", [0.0], [1.0], mean_image)
    torch.testing.assert_close(norm.apply(images), torch.tensor([[[[-1.0, -10.0], [-10.0, -10.0]]], [[[1.0, 10.0], [10.0, 10.0]]]]))
    with pytest.raises(ValueError, match="dataset.normalize=caffe_image: a mean image is needed"):
        InputNorm.from_stats("caffe_image", [0.0], [1.0])
    with pytest.raises(ValueError, match="dataset.normalize=caffe: a mean image is only used with caffe_image"):
        InputNorm.from_stats("caffe", [0.0], [1.0], mean_image)


def test_datamodule_computes_the_mean_image_from_its_training_split_only():
    dm = SyntheticData(num_train=64, num_test=16, val_size=16, normalize="caffe_image", seed=0, batch_size=16)
    dm.setup()
    expected = dm.splits["train"].images.double().mean(0) / 255
    assert torch.allclose(torch.tensor(dm.norm.mean_image, dtype=torch.float64), expected)
    x, _ = next(iter(dm.batches("test")))
    test = dm.splits["test"].images[: len(x)].float()
    torch.testing.assert_close(x, test - 255 * expected.float(), rtol=0, atol=1e-4)  # float32 rounding of the shift


def test_limit_to_count_reads_lightnings_limits():
    assert [limit_to_count(6, limit) for limit in (2, 6, 60, 0, 0.5, 0.25, 1.0, 0.0)] == [2, 6, 6, 0, 3, 1, 6, 0]
    with pytest.raises(TypeError, match="a batch limit is an int or a float, not True"):
        limit_to_count(6, True)


def test_batches_outside_lightnings_loops_honour_the_trainers_test_and_val_limits():
    dm = SyntheticData(num_train=448, num_test=512, val_size=256, batch_size=64, eval_batch_size=100, seed=0)
    whole_test = [y for _, y in dm.batches("test")]  # no trainer attached: the whole split
    assert [len(y) for y in whole_test] == [100] * 5 + [12]
    dm.trainer = pl.Trainer(limit_test_batches=2, limit_val_batches=0.5, limit_train_batches=1, accelerator="cpu",
                            logger=False, enable_checkpointing=False, enable_progress_bar=False)
    test = dm.batches("test")
    assert len(test) == 2
    served = [y for _, y in test]
    assert len(served) == 2 and all(torch.equal(a, b) for a, b in zip(served, whole_test))
    assert len(dm.batches("val")) == 1  # int(3 batches * 0.5), as Lightning counts
    assert len(dm.batches("train", train=True)) == 3  # the training split is the trainer's own business
    # Lightning's loops get whole splits and cut them themselves: a fraction applied twice would shrink twice
    assert (len(dm.test_dataloader()), len(dm.val_dataloader()), len(dm.train_dataloader())) == (6, 3, 3)
    # under DDP an int limit counts each rank's batches: the whole split (shard=False) serves world x that many
    dm.trainer = SimpleNamespace(limit_test_batches=2, limit_val_batches=1.0, world_size=2, global_rank=0)
    assert len(dm.batches("test", device="cpu", shard=False)) == 4


def test_mnist_is_read_from_the_torchvision_layout(shared_data):
    dm = MNISTData(root=str(shared_data), download=False, val_size=5000)
    dm.setup()
    train, val, test = (dm.splits[s] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert tuple(train.images.shape[1:]) == (1, 28, 28) and dm.num_classes == 10
    assert dm.declared_shape() == (dm.image_shape, dm.num_classes)  # what a sweep's check builds its networks for
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the first ten MNIST test digits


def test_mnist_subset_is_small_and_balanced(shared_data):
    dm = MNISTData(root=str(shared_data), download=False, subset=200, val_size=5000)
    dm.setup()
    assert len(dm.splits["train"]) == 200 and len(dm.splits["val"]) == 50
    assert torch.bincount(dm.splits["train"].labels).tolist() == [20] * 10


def test_cifar10_is_read_from_the_image_folder_copy(shared_data, tmp_path):
    dm = CIFAR10Data(root=str(shared_data), download=False, cache_dir=str(tmp_path), val_size=5000)
    dm.setup()
    assert (len(dm.splits["train"]), len(dm.splits["test"])) == (45000, 10000)
    assert tuple(dm.image_shape) == (3, 32, 32) and dm.num_classes == 10
    assert dm.declared_shape() == (dm.image_shape, dm.num_classes)
    assert torch.bincount(dm.splits["test"].labels).tolist() == [1000] * 10
    assert dm.splits["test"].labels[:20].tolist() == list(range(10)) * 2  # classes interleaved, not sorted
    assert dm.splits["val"].labels[:20].tolist() == list(range(10)) * 2  # held out of a split stored by class
    assert list(tmp_path.glob("imagefolder-*.pt")), "decoded images are cached"


def test_image_folder_source(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for c, name in enumerate(("cat", "dog")):
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 40 * c + i, np.uint8)).save(tmp_path / "imgs" / split / name / f"{i}.png")
    dm = ImageFolderData(folder=str(tmp_path / "imgs"), root=str(tmp_path), cache_dir=None, val_size=2, batch_size=4)
    dm.setup()
    assert dm.num_classes == 2 and len(dm.splits["train"]) == 10 and len(dm.splits["test"]) == 4
    assert dm.splits["test"].images[:, 0, 0, 0].tolist() == [0, 40, 1, 41]  # cat 0, dog 0, cat 1, dog 1
    assert dm.splits["test"].labels.tolist() == [0, 1, 0, 1]


def _image_tree(root, layout: dict[str, dict[str, list[int]]]) -> None:
    """root/<split>/<class>/<i>.png, one square image of each listed side length."""
    for split, classes in layout.items():
        for name, sides in classes.items():
            (root / split / name).mkdir(parents=True)
            for i, side in enumerate(sides):
                Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(root / split / name / f"{i}.png")


@pytest.mark.parametrize("layout,message", [
    ({"train": {"cat": [8, 8], "dog": [8, 9]}, "test": {"cat": [8], "dog": [8]}}, r"images differ in size \(\[\(3, 8, 8\), "
     r"\(3, 9, 9\)\]\), e\.g\. .*1\.png; resize them to one size first"),
    ({"train": {"cat": [8], "dog": [8]}, "test": {"cat": [8], "cow": [8]}},
     r"imgs: train/ and test/ have different class folders \(\['cat', 'dog'\] and \['cat', 'cow'\]\)"),
    ({"train": {"cat": [8], "dog": [8]}, "test": {"cat": [], "dog": []}}, r"imgs/test: no images \(.*\.png.*\) in class folders under it"),
])
def test_an_image_folder_binexp_cannot_read_says_what_to_change(tmp_path, layout, message):
    _image_tree(tmp_path / "imgs", layout)
    dm = ImageFolderData(folder=str(tmp_path / "imgs"), root=str(tmp_path), cache_dir=None, val_size=0, batch_size=1)
    with pytest.raises(DatasetLayoutError, match=message):
        dm.setup()


def test_the_decoded_image_cache_follows_edits_and_moves(tmp_path):
    import os

    from binexp.data.imagefolder import read_image_folder

    def save(path, value):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)

    root = tmp_path / "imgs"
    for name, value in (("train/a/0.png", 10), ("train/a/1.png", 20), ("train/b/2.png", 30), ("test/a/3.png", 0),
                        ("test/b/4.png", 0)):
        save(root / name, value)
    read = lambda: read_image_folder(root, str(tmp_path / "cache"))[0]  # noqa: E731
    assert read().images[:, 0, 0, 0].tolist() == [10, 20, 30]
    edited = root / "train" / "b" / "2.png"
    size = edited.stat().st_size
    save(edited, 31)  # other pixels in as many bytes
    assert edited.stat().st_size == size
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    assert read().images[:, 0, 0, 0].tolist() == [10, 20, 31]
    (root / "train" / "a" / "1.png").rename(root / "train" / "b" / "1.png")  # relabelled; the names keep their order
    assert read().labels.tolist() == [0, 1, 1]


def test_a_batch_larger_than_each_processs_shard_is_refused():
    dm = SyntheticData(num_train=640, val_size=129, batch_size=300)  # 511 to train on: one batch for one process
    dm.setup()
    with pytest.raises(ConfigError, match=r"^dataset\.batch_size=300: more than the 511 training samples; each of the 2 "
                                          r"processes gets 255 \(dataset\.subset=null, dataset\.val_size=129\), so no "
                                          r"training batch; allowed is a batch size <= 255$"):
        dm.check_training_batches(world_size=2)


def test_batch_limits_that_leave_no_batch_or_never_validate_are_refused_before_fit():
    """Lightning refused these after the model was built, with a traceback."""
    dm = SyntheticData(num_train=640, val_size=128, batch_size=64)  # 512: 8 batches, 4 for each of 2 processes
    dm.setup()
    with pytest.raises(ConfigError, match=r"^trainer.limit_train_batches=0.1: under one of the 4 training batches of an "
                                          r"epoch; allowed is a share >= 0.25 or a count of batches >= 1$"):
        dm.check_batch_limits(2, 0.1, 1.0, validates=True)
    with pytest.raises(ConfigError, match=r"^trainer.val_check_interval=5: more than the 4 training batches of an epoch; "
                                          r"allowed is a count in 1..4 or a share of an epoch in \(0.0, 1.0\]$"):
        dm.check_batch_limits(2, 1.0, 5, validates=True)
    with pytest.raises(ConfigError, match=r"^trainer.val_check_interval=3: more than the 2 training batches "):
        dm.check_batch_limits(1, 0.25, 3, validates=True)
    with pytest.raises(ConfigError, match=r"^trainer.val_check_interval=3: more than the 2 training batches "):
        dm.check_batch_limits(1, 2, 3, validates=True)
    dm.check_batch_limits(2, 0.25, 1, validates=True)
    dm.check_batch_limits(1, 1.0, 8, validates=True)
    dm.check_batch_limits(1, 1.0, 100, validates=False)  # check_val_every_n_epoch=null: validation by steps


def test_a_subset_smaller_than_the_number_of_classes_is_refused():
    """num_classes=1000 on a 256-image subset trained to a test/acc of 0.0 without a word."""
    dm = SyntheticData(num_classes=300, subset=256, val_size=0, batch_size=8)
    with pytest.raises(ConfigError, match=r"^dataset\.subset=256: fewer samples than the 300 classes; allowed is a count "
                                          r">= 300 \(one of each class\), or null for all$"):
        dm.setup()
    SyntheticData(num_classes=256, subset=256, val_size=0, batch_size=8).setup()


def test_a_subset_larger_than_the_training_split_is_refused_not_taken_as_all():
    dm = SyntheticData(num_train=100, subset=96, val_size=10, batch_size=8)  # the hold-out leaves 90
    with pytest.raises(ConfigError, match=r"^dataset\.subset=96: more than the 90 training samples \(dataset\.val_size=10 "
                                          r"held out\); allowed is a count <= 90, or null for all of them$"):
        dm.setup()
    SyntheticData(num_train=100, subset=90, val_size=10, batch_size=8).setup()


@pytest.mark.parametrize("limit", [0.5, 0.3, 2])
def test_a_split_read_whole_under_ddp_is_cut_to_the_images_the_ranks_shards_are(limit):
    from types import SimpleNamespace

    dm = SyntheticData(num_train=256, num_test=1000, val_size=0, batch_size=32, eval_batch_size=100, seed=0)
    shards = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(limit_test_batches=limit, world_size=2, global_rank=rank,
                                     strategy=SimpleNamespace(root_device=torch.device("cpu")))
        shards += [x for x, _ in dm.batches("test")]  # what test/acc and the sharded protocol numbers see
    whole = [x for x, _ in dm.batches("test", shard=False)]  # a job every rank repeats (Section 4.4)
    by_rank, at_once = torch.cat(shards).flatten(1), torch.cat(whole).flatten(1)
    assert len(at_once) == len(by_rank) == {0.5: 400, 0.3: 200, 2: 400}[limit]
    assert sorted(map(tuple, by_rank.tolist())) == sorted(map(tuple, at_once.tolist()))  # the same images


def test_interleaved_classes_keep_each_class_in_order_and_mix_every_prefix():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    out = interleave_classes(Split(torch.arange(9, dtype=torch.uint8).view(9, 1, 1, 1), labels))
    assert out.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 2, 2]
    assert out.images.flatten().tolist() == [0, 3, 5, 1, 4, 6, 2, 7, 8]


def test_missing_dataset_offline_says_where_it_looked_and_what_to_set(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import MNIST

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(MNIST, "download", offline)  # offline even on a machine that has a network
    dm = MNISTData(root=str(tmp_path / "nothing"), download=True)
    with pytest.raises(DatasetNotFoundError, match="no network") as err:
        dm.setup()
    text = str(err.value)
    assert str(tmp_path / "nothing" / "MNIST" / "raw") in text
    assert "dataset.root" in text and "BINEXP_DATA" in text


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("subset", -5, "null (every sample) or a count >= 1"), ("subset", 0, "null (every sample) or a count >= 1"),
    ("val_size", -1, "a count >= 0"), ("batch_size", 0, "a count >= 1"), ("eval_batch_size", -2, "a count >= 1"),
])
def test_bad_sizes_name_the_key_and_the_allowed_values(key, value, allowed):
    with pytest.raises(ConfigError, match=rf"^dataset\.{key}={value}: allowed is {re.escape(allowed)}$"):
        SyntheticData(**{key: value})

def test_a_missing_image_folder_says_where_to_point_and_not_to_download(tmp_path):
    dm = ImageFolderData(folder=str(tmp_path / "nope"), root=str(tmp_path), cache_dir=None)
    with pytest.raises(DatasetNotFoundError, match="image folder .*nope not found") as err:
        dm.setup()
    text = str(err.value)
    assert str(tmp_path / "nope" / "train") in text and "Point dataset.folder at a folder with train/<class>/" in text
    assert "download" not in text.replace("never downloaded", "")


def test_missing_cifar_lists_both_layouts(tmp_path):
    dm = CIFAR10Data(root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError, match="cifar10-jpeg") as err:
        dm.setup()
    assert "cifar-10-batches-py" in str(err.value)


def test_the_cifar_recipes_do_not_mirror_mnist_digits():
    from binexp.builder import build
    from binexp.errors import user_error
    from tests.conftest import compose_train

    for arch in ("resnet18", "vgg_small", "densenet21"):
        augment = compose_train(["dataset=mnist", f"architecture={arch}"]).dataset.augment
        assert (augment.crop_padding, augment.flip) == (4, False), arch
        assert compose_train(["dataset=cifar10", f"architecture={arch}"]).dataset.augment.flip is True, arch
    refused = compose_train(["dataset=mnist", "dataset.augment.flip=true"])
    with pytest.raises(Exception) as raised:  # Hydra's instantiate wraps it; the CLI shows the ConfigError
        build(refused.dataset)
    assert str(user_error(raised.value)) == ("dataset.augment.flip=true: a mirrored mnist image is not of its class "
                                             "(dataset.hflip_keeps_class=false); allowed is flip=false")
    meant = compose_train(["dataset=mnist", "dataset.augment.flip=true", "dataset.hflip_keeps_class=true"])
    assert build(meant.dataset).flip is True


def test_cached_image_folder_test_split_is_still_interleaved(tmp_path):
    """A run after the first reads the cache: its test split came back sorted by class (mutation M53)."""
    from binexp.data.imagefolder import read_image_folder
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            for i in range(2):
                p = root / split / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(p)
    first = read_image_folder(root, str(tmp_path / "cache"))[1]
    second = read_image_folder(root, str(tmp_path / "cache"))[1]  # from the cache
    assert first.labels.tolist() == [0, 1, 0, 1]
    assert second.labels.tolist() == [0, 1, 0, 1]


def test_eval_batches_are_not_augmented():
    """Crop and flip are training augmentation: validation and test batches are the images as they are."""
    from binexp.data.synthetic import SyntheticData
    dm = SyntheticData(num_train=64, num_test=16, val_size=16, seed=0, batch_size=16,
                       augment={"crop_padding": 4, "flip": True})
    dm.setup()
    x, _ = next(iter(dm.batches("test")))
    scale, shift = dm.norm.affine("cpu")
    torch.testing.assert_close(x, dm.splits["test"].images[: len(x)].float() * scale + shift)


def test_standard_normalisation_comes_from_the_training_rest_not_test_nor_subset():
    """The statistics of the training images left after the hold-out, not the test set's or the subset's."""
    from binexp.data.loader import channel_stats
    from binexp.data.split import stratified_holdout
    from binexp.data.synthetic import SyntheticData
    dm = SyntheticData(num_train=256, num_test=64, val_size=32, subset=64, seed=0, batch_size=16)
    dm.setup()
    train, test, classes = dm.load()
    rest, _ = stratified_holdout(train, dm.validation_size(), len(classes), dm.seed)
    mean, std = channel_stats(rest.images)
    assert np.allclose(dm.norm.mean, mean) and np.allclose(dm.norm.std, std)


def test_synthetic_data_declares_the_shape_it_loads():
    dm = SyntheticData(image_shape=[3, 8, 6], num_classes=4, num_train=16, num_test=8, val_size=0, batch_size=8)
    declared = dm.declared_shape()
    dm.setup()
    assert declared == ((3, 8, 6), 4) == (dm.image_shape, dm.num_classes)
