"""Datasets (the synthetic default and a VOC-style folder) and their transforms."""

from __future__ import annotations

from torch.utils.data import Dataset

from ..config import Recipe
from .folder import FolderSegmentation
from .synthetic import SyntheticSegmentation
from .transforms import IGNORE_INDEX, eval_transforms, train_transforms

__all__ = ["IGNORE_INDEX", "FolderSegmentation", "SyntheticSegmentation", "build_dataset"]


def build_dataset(recipe: Recipe, split: str, *, augment: bool | None = None) -> Dataset:
    """The recipe's dataset split with its transforms (augmented for 'train' unless `augment=False`)."""
    d = recipe.data
    augment = (split == "train") if augment is None else augment
    if augment:
        tf = train_transforms(d.resolution, d.mean, d.std, d.scale_range, d.hflip)
    else:
        tf = eval_transforms(d.resolution, d.mean, d.std)
    if d.dataset == "synthetic":
        length = d.val_size if split == "val" else d.train_size
        return SyntheticSegmentation(split, size=d.resolution, length=length, seed=d.seed, transform=tf)
    assert d.root is not None and d.classes is not None
    return FolderSegmentation(d.root, split, classes=d.classes, transform=tf)
