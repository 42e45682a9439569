"""Pascal VOC 2012 segmentation as it lies on disk (torchvision's `VOCSegmentation` layout).

    ROOT/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    ROOT/VOCdevkit/VOC2012/SegmentationClass/<id>.png       palette PNGs: 0..20, 255 = void (ignored)
    ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt    the standard lists (1464 / 1449 ids)

`data.root` is ROOT (torchvision's convention). 21 classes with VOC's own colour map. Nothing is
downloaded (torchvision's `download=False`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .folder import default_colors
from .pairs import PairedSegmentation, check_split, label_table, missing_files
from .transforms import IGNORE_INDEX, Compose

NAME = "voc"
CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
COLORS = default_colors(len(CLASSES))  # VOC's bit-interleaved colour map (the palette of its own mask PNGs)
SPLITS = {"train": "train", "val": "val"}
YEAR = "2012"
LUT = label_table({**{i: i for i in range(len(CLASSES))}, IGNORE_INDEX: IGNORE_INDEX})


def voc_dir(root: str | Path) -> Path:
    return Path(root) / "VOCdevkit" / f"VOC{YEAR}"


def dataset(root: str | Path, split: str, transform: Compose | None = None) -> PairedSegmentation:
    from torchvision.datasets import VOCSegmentation

    image_set = check_split(NAME, split, SPLITS)
    base = voc_dir(root)
    lists = base / "ImageSets" / "Segmentation" / f"{image_set}.txt"
    if not lists.is_file():
        raise DatasetError(f"VOC split list {str(lists)!r} not found; data.root must hold VOCdevkit/VOC{YEAR}/"
                           "{JPEGImages, SegmentationClass, ImageSets/Segmentation/train.txt, val.txt}")
    tv = VOCSegmentation(str(root), year=YEAR, image_set=image_set, download=False)
    images, masks = [Path(p) for p in tv.images], [Path(p) for p in tv.targets]
    missing_files(images + masks, f"VOC {image_set}.txt", base)
    return PairedSegmentation(list(zip(images, masks)), classes=CLASSES, colors=COLORS, lut=LUT, transform=transform, name="VOC")
