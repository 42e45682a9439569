"""Cityscapes fine annotations as they lie on disk (torchvision's `Cityscapes` layout).

    ROOT/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    ROOT/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

The labelIds (0..33) map to the 19 train ids of the benchmark; every other id (void, and the classes
ignored in evaluation) becomes 255, ignored. Class names and colours are the official ones, taken
from torchvision's `Cityscapes.classes` table.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .pairs import PairedSegmentation, check_split, label_table, missing_files
from .transforms import IGNORE_INDEX, Compose

NAME = "cityscapes"
SPLITS = {"train": "train", "val": "val"}


def _table():
    from torchvision.datasets import Cityscapes

    trained = sorted((c for c in Cityscapes.classes if 0 <= c.train_id < IGNORE_INDEX), key=lambda c: c.train_id)
    assert [c.train_id for c in trained] == list(range(19))
    lut = label_table({c.id: (c.train_id if 0 <= c.train_id < IGNORE_INDEX else IGNORE_INDEX) for c in Cityscapes.classes if c.id >= 0})
    return tuple(c.name for c in trained), tuple(tuple(c.color) for c in trained), lut


CLASSES, COLORS, LUT = _table()


def dataset(root: str | Path, split: str, transform: Compose | None = None) -> PairedSegmentation:
    from torchvision.datasets import Cityscapes

    name = check_split(NAME, split, SPLITS)
    root = Path(root)
    for sub in ("leftImg8bit", "gtFine"):
        if not (root / sub / name).is_dir():
            raise DatasetError(f"Cityscapes folder {str(root / sub / name)!r} not found; data.root must hold "
                               "leftImg8bit/{train,val}/<city>/ and gtFine/{train,val}/<city>/")
    tv = Cityscapes(str(root), split=name, mode="fine", target_type="semantic")
    images, masks = [Path(p) for p in tv.images], [Path(t[0]) for t in tv.targets]
    missing_files(masks, f"Cityscapes {name} (gtFine labelIds for each leftImg8bit image)", root)
    return PairedSegmentation(list(zip(images, masks)), classes=CLASSES, colors=COLORS, lut=LUT, transform=transform,
                              name="Cityscapes")
