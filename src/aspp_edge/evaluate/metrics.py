"""Segmentation metrics from a confusion matrix (vectorised; the ignore index is skipped)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.transforms import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; rows are ground truth, columns predictions."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from both ground truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: torch.Tensor | np.ndarray) -> float:
    """Mean IoU over the classes present in ground truth or prediction."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(cm: torch.Tensor | np.ndarray) -> float:
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")
