"""Image/mask pairs of a public dataset as it lies on disk, with its label convention.

`PairedSegmentation` reads RGB images and single-channel label PNGs and maps each stored label to a
train id through a 256-entry table (`lut`): Cityscapes' labelIds to its 19 train ids, ADE20K's 0
("other") to the ignore index and 1..150 to 0..149, VOC's 0..20 and 255 as they are. A stored value
the table does not map is an error naming the file, the values and the valid ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DatasetError
from .folder import check_same_size
from .transforms import Compose, to_tensor_pair

INVALID = -1  # a stored label the dataset's convention does not define


def label_table(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry lookup table: stored label -> train id (IGNORE_INDEX to skip), INVALID elsewhere."""
    lut = np.full(256, INVALID, dtype=np.int16)
    for stored, train_id in mapping.items():
        lut[stored] = train_id
    return lut


def missing_files(paths: Sequence[Path], what: str, root: Path) -> None:
    """One line naming the first files a split lists that are not on disk."""
    gone = [p for p in paths if not p.is_file()]
    if gone:
        more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
        raise DatasetError(f"{what} under {str(root)!r} lists files that are not there: {str(gone[0])!r}{more}")


class PairedSegmentation(Dataset):
    def __init__(self, pairs: Sequence[tuple[Path, Path]], *, classes: tuple[str, ...], colors: tuple[tuple[int, int, int], ...],
                 lut: np.ndarray, transform: Compose | None = None, name: str = "dataset") -> None:
        if not pairs:
            raise DatasetError(f"{name}: the split holds no images")
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.classes, self.colors, self.lut, self.transform, self.name = tuple(classes), tuple(colors), lut, transform, name
        stored = [i for i in range(256) if lut[i] != INVALID]
        self._valid = _ranges(stored)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 HWC RGB image and its mask in train ids (IGNORE_INDEX skipped)."""
        image_path, mask_path = self.pairs[index]
        image = np.array(Image.open(image_path).convert("RGB"))
        with Image.open(mask_path) as m:
            stored = np.array(m)
        if stored.ndim != 2:
            raise DatasetError(f"mask {str(mask_path)!r} has {stored.shape[-1]} channels; {self.name} masks hold one label per pixel")
        check_same_size(image, stored, image_path, mask_path)
        values = np.unique(stored)
        bad = [int(v) for v in values if not 0 <= v < 256 or self.lut[int(v)] == INVALID]
        if bad:
            raise DatasetError(f"mask {str(mask_path)!r} holds labels {bad[:8]} that {self.name} does not define; valid: {self._valid}")
        return image, self.lut[stored].astype(np.int64)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = to_tensor_pair(*self.raw(index))
        return self.transform(image, mask) if self.transform else (image, mask)


def _ranges(values: list[int]) -> str:
    """[0,1,2,3,255] -> '0..3, 255'."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}..{v}")
            start = None
    return ", ".join(parts)


def check_split(name: str, split: str, splits: dict[str, str]) -> str:
    """The dataset's own name for `split` (train/val), or one line with the valid ones."""
    if split not in splits:
        raise DatasetError(f"{name} has no split {split!r}; valid splits: {', '.join(splits)} "
                           "(calibration draws a seeded subset of train)")
    return splits[split]

