"""ADE20K scene parsing (MIT SceneParsing benchmark, 150 classes) as it lies on disk.

    ROOT/images/{training,validation}/ADE_{train,val}_<n>.jpg
    ROOT/annotations/{training,validation}/ADE_{train,val}_<n>.png     one label per pixel: 0 other, 1..150

ROOT is ADEChallengeData2016 (or the folder holding it). Label 0 ("other objects") is ignored and
1..150 become classes 0..149, the benchmark's convention. torchvision has no ADE20K class, so the
pairs are found here: each image needs the annotation of the same name. The names are the
benchmark's (objectInfo150, first name of each entry). ADE20K publishes no colour map with the
benchmark, so the palette is generated deterministically: VOC's bit-interleaved map at indices
1..150 (150 distinct colours, none black).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .folder import default_colors
from .pairs import PairedSegmentation, check_split, label_table
from .transforms import IGNORE_INDEX, Compose

NAME = "ade20k"
FOLDER = "ADEChallengeData2016"
SPLITS = {"train": "training", "val": "validation"}
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
COLORS = default_colors(len(CLASSES) + 1)[1:]  # generated (see above), not an official palette
LUT = label_table({0: IGNORE_INDEX, **{i + 1: i for i in range(len(CLASSES))}})
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def ade_dir(root: str | Path) -> Path:
    root = Path(root)
    return root / FOLDER if (root / FOLDER).is_dir() else root


def dataset(root: str | Path, split: str, transform: Compose | None = None) -> PairedSegmentation:
    name = check_split(NAME, split, SPLITS)
    base = ade_dir(root)
    image_dir, mask_dir = base / "images" / name, base / "annotations" / name
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(f"ADE20K folder {str(folder)!r} not found; data.root must be {FOLDER} (or hold it) with "
                               "images/{training,validation}/ and annotations/{training,validation}/")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(p, mask_dir / f"{p.stem}.png") for p in images]
    lonely = [str(m) for _, m in pairs if not m.is_file()]
    if lonely:
        raise DatasetError(f"ADE20K {name}: {len(lonely)} images have no annotation, e.g. {lonely[0]!r} is missing")
    return PairedSegmentation(pairs, classes=CLASSES, colors=COLORS, lut=LUT, transform=transform, name="ADE20K")
