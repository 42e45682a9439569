"""VOC, Cityscapes and ADE20K by name, offline: tiny fake trees of each layout written here (as
torchvision's own dataset tests do), read back label for label, and trained end to end by `run`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from aspp_edge.cli import main
from aspp_edge.config import load_recipe
from aspp_edge.data import IGNORE_INDEX, build_dataset, calibration_dataset
from aspp_edge.data import ade20k, cityscapes, voc
from aspp_edge.errors import ConfigError, DatasetError
from aspp_edge.formats.manifest import read_manifest

TRAIN, VAL = 8, 3  # calibration needs at least 8 train images (config.MIN_CALIB_SIZE)


def _image(path, rng, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _mask(path, labels, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="L")
    if mode == "P":  # VOC's masks are palette PNGs carrying its colour map
        image = image.convert("P")
        image.putpalette([c for rgb in voc.COLORS for c in rgb] + [224, 224, 192] * (256 - len(voc.COLORS)))
    image.save(path)


def _labels(rng, size, values):
    """Left half one label, right half another, a border of the last value: learnable and checkable."""
    w, h = size
    a, b = rng.choice(values[:-1], 2, replace=False)
    labels = np.full((h, w), a)
    labels[:, w // 2:] = b
    labels[0, :] = values[-1]
    return labels


def voc_tree(root, seed=0, size=(72, 48)):
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    ids = {"train": [f"2007_{i:06d}" for i in range(TRAIN)], "val": [f"2008_{i:06d}" for i in range(VAL)]}
    for split, names in ids.items():
        (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        for n in names:
            _image(base / "JPEGImages" / f"{n}.jpg", rng, size)
            _mask(base / "SegmentationClass" / f"{n}.png", _labels(rng, size, [0, 1, 15, 20, 255]), mode="P")
    _image(base / "JPEGImages" / "2009_999999.jpg", rng, size)  # an image in no segmentation list, as in VOC
    return root


def cityscapes_tree(root, seed=0, size=(128, 64)):
    rng = np.random.default_rng(seed)
    for split, city, n in (("train", "aachen", TRAIN), ("val", "frankfurt", VAL)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rng, size)
            # labelIds: 7 road, 8 sidewalk, 26 car, 21 vegetation; 0 unlabeled (-> 255)
            _mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _labels(rng, size, [7, 8, 21, 26, 0]))
    return root


def ade20k_tree(root, seed=0, size=(64, 80)):
    rng = np.random.default_rng(seed)
    base = root / ade20k.FOLDER
    for split, tag, n in (("training", "train", TRAIN), ("validation", "val", VAL)):
        for i in range(n):
            stem = f"ADE_{tag}_{i + 1:08d}"
            _image(base / "images" / split / f"{stem}.jpg", rng, size)
            _mask(base / "annotations" / split / f"{stem}.png", _labels(rng, size, [1, 3, 13, 150, 0]))
    return root


TREES = {"voc": voc_tree, "cityscapes": cityscapes_tree, "ade20k": ade20k_tree}


def _recipe(root, dataset, **data):
    return load_recipe("quick").replace(data={"dataset": dataset, "root": str(root), "resolution": 32, **data},
                                        train={"epochs": 1, "batch_size": 4}, ptq={"calib_size": 8, "batch_size": 4})


# -- reading: labels mapped as each layout's convention says ----------------------------------------

def test_voc_reads_the_standard_lists_and_keeps_255_void(tmp_path):
    voc_tree(tmp_path)
    recipe = _recipe(tmp_path, "voc")
    train = build_dataset(recipe, "train", augment=False)
    assert len(train) == TRAIN and len(build_dataset(recipe, "val")) == VAL  # the image in no list is not read
    image, mask = train.raw(0)
    stored = np.array(Image.open(train.pairs[0][1]))
    assert np.array_equal(mask, stored) and set(np.unique(mask)) <= {0, 1, 15, 20, 255} and mask[0, 0] == IGNORE_INDEX
    assert recipe.num_classes == 21 and recipe.class_names[15] == "person" and recipe.class_colors[15] == (192, 128, 128)
    assert recipe.class_colors[1] == (128, 0, 0)  # VOC's colour map: aeroplane


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    cityscapes_tree(tmp_path)
    recipe = _recipe(tmp_path, "cityscapes")
    ds = build_dataset(recipe, "train", augment=False)
    _, mask = ds.raw(0)
    stored = np.array(Image.open(ds.pairs[0][1]))
    expected = {7: 0, 8: 1, 21: 8, 26: 13, 0: IGNORE_INDEX}
    for label, train_id in expected.items():
        assert np.all(mask[stored == label] == train_id)
    assert recipe.num_classes == 19 and recipe.class_names[13] == "car" and recipe.class_colors[0] == (128, 64, 128)
    image, target = ds[0]  # short side to 32 keeps the 2:1 aspect before the crop; here (no resize mode) the whole image
    assert image.shape == (3, 32, 32) and target.shape == (32, 32)


def test_ade20k_ignores_zero_and_shifts_the_150_classes(tmp_path):
    ade20k_tree(tmp_path)
    for root in (tmp_path, tmp_path / ade20k.FOLDER):  # the folder itself or the one holding it
        ds = build_dataset(_recipe(root, "ade20k"), "val", augment=False)
        _, mask = ds.raw(0)
        stored = np.array(Image.open(ds.pairs[0][1]))
        assert np.array_equal(mask[stored == 0], np.full((stored == 0).sum(), IGNORE_INDEX))
        assert np.array_equal(mask[stored > 0], stored[stored > 0].astype(np.int64) - 1)
    recipe = _recipe(tmp_path, "ade20k")
    assert recipe.num_classes == 150 and recipe.class_names[:3] == ("wall", "building", "sky") and recipe.class_names[-1] == "flag"
    assert len(set(recipe.class_colors)) == 150 and (0, 0, 0) not in recipe.class_colors


def test_short_side_resize_keeps_the_aspect_and_crops(tmp_path):
    cityscapes_tree(tmp_path)
    recipe = _recipe(tmp_path, "cityscapes", resize="short_side")
    ds = build_dataset(recipe, "val")
    image, mask = ds[0]
    _, full = ds.raw(0)
    assert image.shape == (3, 32, 32)
    # eval: the 128x64 image becomes 64x32 (short side 32), then the centre 32x32 (columns 16..47 of 64)
    assert np.array_equal(mask.numpy(), full[::2, ::2][:, 16:48])


def test_calibration_draws_from_train_never_val(tmp_path):
    for name, tree in TREES.items():
        tree(tmp_path / name)
        recipe = _recipe(tmp_path / name, name)
        calib, split = calibration_dataset(recipe)
        val = {p for p, _ in build_dataset(recipe, "val").pairs}
        assert split == "train" and len(calib) == TRAIN and not val & {p for p, _ in calib.pairs}
        with pytest.raises(DatasetError, match=r"has no split 'calib'; valid splits: train, val"):
            build_dataset(recipe, "calib")


def test_bad_trees_and_recipes_are_one_line(tmp_path):
    voc_tree(tmp_path / "v")
    (tmp_path / "v" / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000003.png").unlink()
    with pytest.raises(DatasetError, match=r"VOC train\.txt .* lists files that are not there: .*2007_000003\.png'"):
        build_dataset(_recipe(tmp_path / "v", "voc"), "train")
    with pytest.raises(DatasetError, match=r"VOC split list .* not found; data.root must hold VOCdevkit/VOC2012/"):
        build_dataset(_recipe(tmp_path / "nothing", "voc"), "train")
    with pytest.raises(DatasetError, match=r"Cityscapes folder .*leftImg8bit/train' not found"):
        build_dataset(_recipe(tmp_path / "nothing", "cityscapes"), "train")
    ade20k_tree(tmp_path / "a")
    bad = tmp_path / "a" / ade20k.FOLDER / "annotations" / "training" / "ADE_train_00000001.png"
    Image.fromarray(np.full((80, 64), 151, np.uint8), mode="L").save(bad)
    with pytest.raises(DatasetError, match=r"holds labels \[151\] that ADE20K does not define; valid: 0\.\.150"):
        build_dataset(_recipe(tmp_path / "a", "ade20k"), "train", augment=False).raw(0)
    with pytest.raises(ConfigError, match=r"data.classes is set by data.dataset 'voc'"):
        _recipe(tmp_path, "voc", classes=["a", "b"])
    with pytest.raises(ConfigError, match=r"unknown data.resize 'crop'; valid choices: short_side, square"):
        _recipe(tmp_path, "voc", resize="crop")


def test_the_dataset_recipes_start_from_imagenet_weights():
    for name, classes, weights in (("voc", 21, "MobileNet_V2_Weights.IMAGENET1K_V2"),
                                   ("cityscapes", 19, "MobileNet_V3_Large_Weights.IMAGENET1K_V2")):
        recipe = load_recipe(name)
        assert recipe.data.dataset == name and recipe.num_classes == classes and recipe.model.width_mult == 1.0
        w = recipe.model.published_weights()
        assert f"{type(w).__name__}.{w.name}" == weights and list(recipe.data.mean) == list(w.transforms().mean)
        assert recipe.data.resolution % recipe.model.output_stride == 0


# -- end to end: each layout trained and evaluated by the CLI; `run` (full tier) through PTQ, export and eval

def _recipe_file(tmp_path, name):
    TREES[name](tmp_path / "data")
    recipe = _recipe(tmp_path / "data", name, resize="short_side" if name == "cityscapes" else "square")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**recipe.to_dict(), "name": name}))
    return recipe, path


@pytest.mark.parametrize("name", list(TREES))
def test_train_trains_and_evaluates_each_layout(name, tmp_path, capsys):
    import torch

    recipe, path = _recipe_file(tmp_path, name)
    out = tmp_path / "train"
    assert main(["train", "--recipe", str(path), "--out", str(out)]) == 0
    ckpt = torch.load(out / "float.pt", map_location="cpu", weights_only=True)
    assert 0.0 <= ckpt["val_miou"] <= 1.0 and len(ckpt["history"]) == 1
    assert ckpt["recipe"]["data"]["dataset"] == name
    assert ckpt["state_dict"]["decoder.classifier.weight"].shape[0] == recipe.num_classes  # 21 / 19 / 150 outputs


# the full tier runs the VOC layout end to end (5 minutes on a slow 2-core machine: PTQ, two ExecuTorch
# exports, a timing process each); Cityscapes and ADE20K only with -m slow (make test reads, trains and
# evaluates all three layouts above)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.full if n == "voc" else pytest.mark.slow) for n in TREES])
def test_run_trains_and_evaluates_each_layout_and_names_its_classes(name, tmp_path):
    recipe, path = _recipe_file(tmp_path, name)
    out = tmp_path / "run"
    assert main(["run", "--recipe", str(path), "--backends", "executorch", "--methods", "ptq", "--runs", "1", "--no-peaks",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["artifacts"]
    assert {(r["backend"], r["precision"]) for r in rows} == {("executorch", "fp32"), ("executorch", "int8")}
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)
    for r in rows:
        m = read_manifest(out / r["path"])
        assert m["labels"] == list(recipe.class_names) and m["colors"] == [list(c) for c in recipe.class_colors]
        assert m["source"]["dataset"] == name and m["model"]["num_classes"] == recipe.num_classes
    md = (out / "report.md").read_text()
    assert f"Data: `{name}` at `{tmp_path / 'data'}`, {recipe.num_classes} classes ({recipe.class_names[0]}, " in md
    summary = next(out.rglob("*_int8.json"))
    assert json.loads(summary.read_text())["calibration_split"] == "train"
