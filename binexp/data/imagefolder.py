"""Any `<folder>/{train,test}/<class>/<image>` tree (torchvision's ImageFolder layout), decoded once.

Class names are the sorted folder names, images within a class are read in file-name order. The decoded
uint8 tensors are cached under `cache_dir` (keyed by the folder and its file list), so only the first run
pays for decoding JPEGs. The test split is served with its classes interleaved (the first image of each class,
then the second, ...): in file order it would be sorted by class, and a prefix of it (`trainer.limit_test_batches`
in a smoke run, `binexp verify limit=N`) would hold one class only. The whole set's accuracy does not depend on
the order; the training split is shuffled anyway, and its subsets and hold-outs are drawn per class.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from binexp import atomic_files
from binexp.data.datamodule import DataConfig, ImageData
from binexp.data.errors import DatasetLayoutError, not_found
from binexp.data.split import Split, interleave_classes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}  # what torchvision.io.decode_image reads


@dataclass
class ImageFolderConfig(DataConfig):
    _target_: str = "binexp.data.imagefolder.ImageFolderData"
    name: str = "imagefolder"
    folder: str = "images"  # absolute, or relative to dataset.root
    cache_dir: Optional[str] = "${paths.cache_dir}"
    val_size: int = 0


def _list_images(split_dir: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    files = [
        (path, label)
        for label, name in enumerate(classes)
        for path in sorted((split_dir / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    return classes, files


def _decode_all(files: list[tuple[Path, int]]) -> Split:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

    data = [read_file(str(path)) for path, _ in files]
    if all(path.suffix.lower() in (".jpg", ".jpeg") for path, _ in files):
        arrays = decode_jpeg(data, mode=ImageReadMode.RGB)  # one batched call, several times faster than PIL
    else:
        arrays = [decode_image(d, mode=ImageReadMode.RGB) for d in data]
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        odd = next(p for (p, _), a in zip(files, arrays) if a.shape != arrays[0].shape)
        raise DatasetLayoutError(f"images differ in size ({sorted(shapes)}), e.g. {odd}; resize them to one size first")
    images = torch.stack(arrays) if arrays else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    return Split(images, torch.tensor([label for _, label in files], dtype=torch.long))


def read_image_folder(folder: Path, cache_dir: Optional[str]) -> tuple[Split, Split, list[str]]:
    """(train, test, class names) of an ImageFolder tree with train/ and test/ subfolders."""
    listing = {split: _list_images(folder / split) for split in ("train", "test")}
    classes = listing["train"][0]
    if listing["test"][0] != classes:
        raise DatasetLayoutError(f"{folder}: train/ and test/ have different class folders ({classes} and "
                                 f"{listing['test'][0]})")
    for split, (_, files) in listing.items():
        if not files:
            raise DatasetLayoutError(f"{folder / split}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class "
                                     f"folders under it")
    key = hashlib.sha1(str(folder.resolve()).encode())
    for split in ("train", "test"):
        for path, _ in listing[split][1]:
            # where it is (its split and class), and a rewrite or a touch of the same size, make a new cache
            stat = path.stat()
            key.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache = Path(cache_dir) / f"imagefolder-{key.hexdigest()[:16]}.pt" if cache_dir else None
    if cache is not None and cache.exists():
        saved = torch.load(cache, weights_only=True)
        return Split(*saved["train"]), interleave_classes(Split(*saved["test"])), classes
    log.info("decoding %s (once; cached in %s)", folder, cache)
    train, test = _decode_all(listing["train"][1]), _decode_all(listing["test"][1])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_files.torch_save({"train": (train.images, train.labels), "test": (test.images, test.labels)}, cache)
    return train, interleave_classes(test), classes


def has_image_folder(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


class ImageFolderData(ImageData):
    name = "imagefolder"

    def __init__(self, folder: str = "images", cache_dir: Optional[str] = None, val_size: int = 0, **kwargs):
        super().__init__(val_size=val_size, **kwargs)
        self.folder = Path(self.root) / folder  # an absolute folder stays itself
        self.cache_dir = cache_dir

    def load(self) -> tuple[Split, Split, list[str]]:
        if not has_image_folder(self.folder):
            raise not_found(f"image folder {self.folder}", [str(self.folder / "train"), str(self.folder / "test")],
                            fix="Point dataset.folder at a folder with train/<class>/ and test/<class>/ image folders "
                                "(an image folder is never downloaded).")
        return read_image_folder(self.folder, self.cache_dir)
