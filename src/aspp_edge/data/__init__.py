"""Datasets (the synthetic default, a VOC-style folder, and VOC, Cityscapes and ADE20K by name) and their transforms."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from ..errors import ConfigError, choices_error
from . import ade20k, cityscapes, voc
from .folder import FolderSegmentation, has_split_file
from .pairs import PairedSegmentation
from .synthetic import CLASSES as SYNTHETIC_CLASSES
from .synthetic import SyntheticSegmentation
from .transforms import IGNORE_INDEX, eval_transforms, train_transforms

if TYPE_CHECKING:  # the recipe is built above data (config validates against it)
    from ..config import Recipe

__all__ = ["CALIB_SPLIT", "IGNORE_INDEX", "FolderSegmentation", "PairedSegmentation", "SyntheticSegmentation", "build_dataset",
           "calibration_dataset", "named_dataset"]

CALIB_SPLIT = "calib"
# Public datasets by name: each module has NAME, CLASSES, COLORS and dataset(root, split, transform).
NAMED = {m.NAME: m for m in (voc, cityscapes, ade20k)}


def named_dataset(name: str) -> ModuleType:
    """The module of a dataset by name (`voc`, `cityscapes`, `ade20k`): its classes, colours and reader."""
    if name not in NAMED:
        raise choices_error("named dataset", name, NAMED)
    return NAMED[name]


def build_dataset(recipe: Recipe, split: str, *, augment: bool | None = None) -> Dataset:
    """The recipe's dataset split with its transforms (augmented for 'train' unless `augment=False`).

    Splits: 'train', 'val' and 'calib' (synthetic: its own seeds, as many scenes as the train split;
    folder: `ImageSets/Segmentation/calib.txt`, see `calibration_dataset`; voc, cityscapes, ade20k:
    train and val only).
    """
    d = recipe.data
    augment = (split == "train") if augment is None else augment
    if augment:
        tf = train_transforms(d.resolution, d.mean, d.std, d.scale_range, d.hflip, resize=d.resize)
    else:
        tf = eval_transforms(d.resolution, d.mean, d.std, resize=d.resize)
    if d.dataset in NAMED:
        assert d.root is not None
        return NAMED[d.dataset].dataset(d.root, split, transform=tf)
    if d.dataset == "synthetic":
        if d.classes is not None and len(d.classes) != len(SYNTHETIC_CLASSES) and split != CALIB_SPLIT:
            raise ConfigError(
                f"data.classes names {len(d.classes)} classes but the synthetic scenes are labelled with {len(SYNTHETIC_CLASSES)} "
                f"({', '.join(SYNTHETIC_CLASSES)}): its {split!r} split cannot be built; only the unlabelled {CALIB_SPLIT!r} "
                "images (calibration, latency) can. Unset data.classes to train on synthetic data"
            )
        length = d.val_size if split == "val" else d.train_size  # calib: a pool the calibration set is drawn from
        return SyntheticSegmentation(split, size=d.resolution, length=length, seed=d.seed, transform=tf)
    assert d.root is not None and d.classes is not None
    return FolderSegmentation(d.root, split, classes=d.classes, transform=tf)


def calibration_dataset(recipe: Recipe) -> tuple[Dataset, str]:
    """The images calibration draws from (never augmented) and the split they are: 'calib' or 'train'.

    - synthetic: the `calib` split, whose scenes come from seeds disjoint from train's and val's.
    - folder: the `calib` split when `ImageSets/Segmentation/calib.txt` exists; otherwise the train
      split, from which `calibration_batches` draws a seeded subset (the images the model was
      trained on, never val's).
    - voc, cityscapes, ade20k: the train split, drawn from the same seeded way; never val.
    """
    d = recipe.data
    if d.dataset in NAMED or (d.dataset == "folder" and not has_split_file(d.root, CALIB_SPLIT)):
        return build_dataset(recipe, "train", augment=False), "train"
    return build_dataset(recipe, CALIB_SPLIT, augment=False), CALIB_SPLIT


def to_pixels(image, mean, std):
    """A normalized (3, H, W) image tensor back to H x W x 3 uint8 RGB pixels (rounded), for figures
    and the apps' sample scene."""
    import numpy as np

    mean, std = (np.asarray(v, np.float64).reshape(3, 1, 1) for v in (mean, std))
    pixels = (image.numpy().astype(np.float64) * std + mean) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(1, 2, 0)
