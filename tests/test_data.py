"""Synthetic dataset determinism, transforms, and the VOC-style folder loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aspp_edge.data import IGNORE_INDEX, FolderSegmentation, SyntheticSegmentation, build_dataset, calibration_dataset
from aspp_edge.data.synthetic import CLASSES
from aspp_edge.data.transforms import RandomScaleCrop
from aspp_edge.errors import DatasetError


def test_synthetic_is_deterministic_and_order_free():
    a = SyntheticSegmentation("train", size=64, length=8, seed=3)
    b = SyntheticSegmentation("train", size=64, length=8, seed=3)
    for i in (5, 0, 7):  # any order: each sample has its own generator
        ia, ma = a.raw(i)
        ib, mb = b.raw(i)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    other_seed = SyntheticSegmentation("train", size=64, length=8, seed=4).raw(0)[0]
    other_split = SyntheticSegmentation("val", size=64, length=8, seed=3).raw(0)[0]
    assert not np.array_equal(a.raw(0)[0], other_seed)
    assert not np.array_equal(a.raw(0)[0], other_split)


def test_synthetic_scenes_have_every_class_at_many_scales():
    ds = SyntheticSegmentation("train", size=128, length=64)
    masks = np.stack([ds.raw(i)[1] for i in range(64)])
    counts = np.bincount(masks.ravel(), minlength=len(CLASSES))
    assert masks.max() < len(CLASSES)
    assert (counts[1:] > 0.01 * masks.size).all(), counts  # every object class is well represented
    assert 0.5 < counts[0] / masks.size < 0.9  # background dominates but does not swamp
    # Object scale varies strongly: per-image largest-object areas span > 10x.
    areas = [np.bincount(m.ravel(), minlength=len(CLASSES))[1:].max() for m in masks]
    assert max(areas) / max(1, min(areas)) > 10


def test_build_dataset_transforms(quick_recipe):
    image, mask = build_dataset(quick_recipe, "val")[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    assert -3 < float(image.mean()) < 3  # normalised, not [0, 255]


def test_random_scale_crop_pads_with_ignore():
    torch.manual_seed(0)
    crop = RandomScaleCrop(32, (0.5, 0.5))
    image, mask = crop(torch.rand(3, 32, 32), torch.zeros(32, 32, dtype=torch.long))
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert (mask == IGNORE_INDEX).sum() == 32 * 32 - 16 * 16


def _write_voc(root, ids, *, mask_ids=None, mode="P"):
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
    for i in mask_ids if mask_ids is not None else ids:
        m = np.zeros((20, 24), dtype=np.uint8)
        m[5:10, 5:10] = 2
        m[0, 0] = 255
        img = Image.fromarray(m, mode="L")
        if mode == "P":
            img = img.convert("P")
            img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))
        img.save(root / "SegmentationClass" / f"{i}.png")


def test_folder_dataset_reads_palette_masks(tmp_path):
    _write_voc(tmp_path, ["a", "b", "c"])
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("b\n")
    ds = FolderSegmentation(tmp_path, "val", classes=("bg", "x", "y"))
    assert ds.ids == ["b"]
    image, mask = ds[0]
    assert image.shape == (3, 20, 24)
    assert set(mask.unique().tolist()) == {0, 2, IGNORE_INDEX}


def test_folder_dataset_default_split(tmp_path):
    _write_voc(tmp_path, [f"{i:02d}" for i in range(10)], mode="L")
    train = FolderSegmentation(tmp_path, "train", classes=("bg", "x", "y"))
    val = FolderSegmentation(tmp_path, "val", classes=("bg", "x", "y"))
    assert len(train) == 9 and len(val) == 1 and set(train.ids).isdisjoint(val.ids)


def test_folder_dataset_names_unpaired_files(tmp_path):
    _write_voc(tmp_path, ["a", "b", "c"], mask_ids=["a", "d"])
    with pytest.raises(DatasetError, match=r"images without masks: b.jpg, c.jpg; masks without images: d.png"):
        FolderSegmentation(tmp_path, "train", classes=("bg", "x", "y"))


def test_folder_dataset_rejects_out_of_range_labels(tmp_path):
    _write_voc(tmp_path, ["a"], mode="L")
    ds = FolderSegmentation(tmp_path, "train", classes=("bg", "x"))  # label 2 is out of range
    with pytest.raises(DatasetError, match=r"holds values \[2\]; valid: 0..1 and 255"):
        ds[0]


def test_folder_dataset_missing_layout(tmp_path):
    with pytest.raises(DatasetError, match="JPEGImages' not found"):
        FolderSegmentation(tmp_path, "train", classes=("bg", "x"))


def test_calibration_images_are_neither_train_nor_val(quick_recipe):
    """The synthetic recipe calibrates on its own `calib` split (seeds disjoint from train's and
    val's): no image of the calibration set is an image of the train or val split."""
    from aspp_edge.calibration.calibrate import calibration_batches

    dataset, split = calibration_dataset(quick_recipe)
    assert split == "calib" and dataset.split == "calib" and len(dataset) == quick_recipe.data.train_size
    batches = calibration_batches(dataset, quick_recipe.ptq.calib_size, quick_recipe.ptq.batch_size, split=split)
    calib = {image.numpy().tobytes() for batch in batches for image in batch}
    assert len(calib) == quick_recipe.ptq.calib_size
    for name in ("train", "val"):
        other = build_dataset(quick_recipe, name, augment=False)
        assert not any(other[i][0].numpy().tobytes() in calib for i in range(len(other))), name


def _folder_recipe(root):
    from aspp_edge.config import DataConfig, Recipe

    return Recipe("folder", data=DataConfig(dataset="folder", root=str(root), classes=("bg", "x", "y"), resolution=32))


def test_folder_calibration_uses_calib_txt_else_train(tmp_path):
    ids = [f"{i:02d}" for i in range(10)]
    _write_voc(tmp_path, ids, mode="L")
    dataset, split = calibration_dataset(_folder_recipe(tmp_path))  # no calib.txt: the train split (9 of 10, not val's)
    assert split == "train" and dataset.ids == ids[1:]
    assert dataset[0][0].shape == (3, 32, 32)  # eval transforms: no augmentation
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "calib.txt").write_text("03\n07\n")
    dataset, split = calibration_dataset(_folder_recipe(tmp_path))
    assert split == "calib" and dataset.ids == ["03", "07"]
