"""VOC-style folder dataset for users' own data.

Layout (the Pascal VOC one):

    ROOT/JPEGImages/<id>.jpg|.jpeg|.png           RGB images
    ROOT/SegmentationClass/<id>.png               palette ("P") or index ("L") PNG masks
    ROOT/ImageSets/Segmentation/<split>.txt       optional: one <id> per line

Mask pixels are class indices; 255 is ignored. Without a split file the sorted ids are split
deterministically, 90% train / 10% val. A `calib.txt` names the images calibration draws from;
without one, calibration draws a seeded subset of the train split (`data.calibration_dataset`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DatasetError
from .transforms import IGNORE_INDEX, Compose, to_tensor_pair

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VAL_FRACTION = 0.1


def has_split_file(root: str | Path, split: str) -> bool:
    return (Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt").is_file()


def _listing(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


class FolderSegmentation(Dataset):
    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        classes: tuple[str, ...],
        colors: tuple[tuple[int, int, int], ...] | None = None,
        transform: Compose | None = None,
    ) -> None:
        self.root = Path(root)
        image_dir, mask_dir = self.root / "JPEGImages", self.root / "SegmentationClass"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise DatasetError(f"dataset folder {str(folder)!r} not found (expected a VOC-style layout)")
        images, masks = _listing(image_dir, IMAGE_SUFFIXES), _listing(mask_dir, (".png",))
        lonely_images = [images[k] for k in sorted(set(images) - set(masks))]
        lonely_masks = [masks[k] for k in sorted(set(masks) - set(images))]
        if lonely_images or lonely_masks:
            parts = []
            if lonely_images:
                parts.append(f"images without masks: {_names(lonely_images)}")
            if lonely_masks:
                parts.append(f"masks without images: {_names(lonely_masks)}")
            raise DatasetError(f"dataset {str(self.root)!r} does not pair up; " + "; ".join(parts))
        ids = sorted(images)
        if not ids:
            raise DatasetError(f"dataset {str(self.root)!r} holds no images in {str(image_dir)!r}")
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if split_file.is_file():
            wanted = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
            missing = [w for w in wanted if w not in images]
            if missing:
                raise DatasetError(f"split file {str(split_file)!r} names ids with no image/mask pair: {', '.join(missing[:5])}")
            ids = wanted
        elif split in ("train", "val"):
            n_val = max(1, round(len(ids) * VAL_FRACTION)) if len(ids) > 1 else 0
            ids = ids[n_val:] if split == "train" else ids[:n_val]
        else:
            raise DatasetError(f"split {split!r} has no file {str(split_file)!r}; without one, valid splits: train, val")
        if not ids:
            raise DatasetError(f"split {split!r} of {str(self.root)!r} is empty")
        self.ids = ids
        self.pairs = [(images[i], masks[i]) for i in ids]
        self.classes = tuple(classes)
        self.colors = tuple(colors) if colors else default_colors(len(self.classes))
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image = np.array(Image.open(image_path).convert("RGB"))
        with Image.open(mask_path) as m:
            if m.mode not in ("P", "L"):
                raise DatasetError(f"mask {str(mask_path)!r} has mode {m.mode!r}; valid choices: P (palette), L (index)")
            mask = np.array(m)
        check_same_size(image, mask, image_path, mask_path)
        bad = np.setdiff1d(np.unique(mask), [*range(self.num_classes), IGNORE_INDEX])
        if bad.size:
            raise DatasetError(
                f"mask {str(mask_path)!r} holds values {bad.tolist()}; valid: 0..{self.num_classes - 1} and {IGNORE_INDEX}"
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = to_tensor_pair(*self.raw(index))
        return self.transform(image, mask) if self.transform else (image, mask)


def default_colors(n: int) -> tuple[tuple[int, int, int], ...]:
    """Pascal VOC's colour map (bit-interleaved), the usual palette for index masks."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    """One line when a mask's size is not its image's (every dataset of image/mask pairs reads it)."""
    if mask.shape != image.shape[:2]:
        raise DatasetError(f"mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but image {image_path.name} is "
                           f"{image.shape[1]}x{image.shape[0]}")
