"""Metrics against hand-computed confusion matrices, absent classes, ignore pixels, agreement, SQNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aspp_edge.metrics import (
    confusion_matrix, iou_per_class, logits_sqnr_db, mean_iou, pixel_accuracy, pixel_agreement,
)


def test_confusion_matrix_by_hand_with_ignore_and_absent_class():
    target = torch.tensor([[0, 0, 1, 1], [1, 255, 0, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 3]])  # predictions on ignored pixels do not count
    cm = confusion_matrix(pred, target, num_classes=4)
    expected = torch.tensor([[2, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)
    iou = iou_per_class(cm)
    # class 0: tp 2, union 2+1+1 = 4; class 1: tp 2, union 3+3-2 = 4; classes 2, 3 absent everywhere
    np.testing.assert_allclose(iou[:2], [0.5, 0.5])
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx(0.5)  # absent classes are not averaged in
    assert pixel_accuracy(cm) == pytest.approx(4 / 6)


def test_class_predicted_but_absent_from_ground_truth_counts_as_zero():
    cm = confusion_matrix(torch.tensor([0, 2, 2]), torch.tensor([0, 0, 0]), num_classes=3)
    assert mean_iou(cm) == pytest.approx((1 / 3 + 0.0) / 2)  # class 0: 1/3, class 2: 0, class 1 absent


def test_agreement_and_sqnr():
    ref = torch.zeros(1, 3, 2, 2)
    ref[0, 1] = 1.0  # class 1 everywhere
    cand = ref.clone()
    cand[0, 2, 0, 0] = 2.0  # one of four pixels flips to class 2
    assert pixel_agreement(cand, ref) == pytest.approx(0.75)
    assert pixel_agreement(cand.argmax(1), ref.argmax(1).numpy()) == pytest.approx(0.75)
    # |ref|^2 = 4, |noise|^2 = 4 -> 0 dB; equal logits -> inf; 10x smaller noise -> +20 dB
    assert logits_sqnr_db(cand, ref) == pytest.approx(0.0, abs=1e-6)
    assert math.isinf(logits_sqnr_db(ref.numpy(), ref.numpy()))
    small = ref.clone()
    small[0, 2, 0, 0] = 0.2
    assert logits_sqnr_db(small, ref) == pytest.approx(20.0, abs=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        pixel_agreement(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 4, 4))


def test_paired_miou_difference_says_when_a_gap_is_within_chance():
    """QAT against PTQ on a small val split (issue 37): the difference of two label maps' mIoU, in
    points, with a paired bootstrap interval over the images. A gap made on every image is clear of 0;
    one made by a single image each way is not; per-image confusion matrices add up to the split's."""
    from aspp_edge.metrics import confusion_matrix, mean_iou, paired_miou_difference, per_image_confusion

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (40, 8, 8))
    truth[0, 0, 0] = 255
    same = paired_miou_difference(truth, truth, truth, 3)
    assert same["difference_points"] == 0 and same["interval_points"] == [0.0, 0.0] and same["images"] == 40
    worse = truth.copy()
    flip = (rng.random(truth.shape) < 0.1) & (truth != 255)
    worse[flip] = (worse[flip] + 1) % 3  # wrong on about 10% of every image's pixels
    whole = confusion_matrix(torch.from_numpy(worse), torch.from_numpy(truth), 3).numpy()
    assert np.array_equal(per_image_confusion(worse, truth, 3).sum(0), whole)
    clear = paired_miou_difference(truth, worse, truth, 3)
    assert clear["difference_points"] == pytest.approx(100 * (1 - mean_iou(whole)))
    assert 0 < clear["interval_points"][0] <= clear["difference_points"] <= clear["interval_points"][1]
    a, b = truth.copy(), truth.copy()
    a[0, :4], b[1, :5] = (a[0, :4] + 1) % 3, (b[1, :5] + 1) % 3  # a loses half of image 0, b a bit more of image 1
    chance = paired_miou_difference(a, b, truth, 3)
    assert chance["difference_points"] > 0 and chance["interval_points"][0] < 0 < chance["interval_points"][1]
    with pytest.raises(ValueError, match="does not match ground truth shape"):
        per_image_confusion(truth[:, :4], truth, 3)
