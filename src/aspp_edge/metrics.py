"""Segmentation metrics from a confusion matrix (vectorised; the ignore index is skipped)."""

from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = 255  # mask value that the loss and the metrics skip (VOC's "void")


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


def _labels(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Class maps from logits (N, C, H, W) or labels (N, H, W)."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.argmax(1) if x.ndim == 4 else x


def pixel_agreement(candidate: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """Fraction of pixels whose argmax class equals the reference's (logits or label maps)."""
    a, b = _labels(candidate), _labels(reference)
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} does not match reference shape {b.shape}")
    return float((a == b).mean())


def sqnr_db(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """20 log10(|ref| / |ref - actual|) in dB (inf when equal)."""
    noise = torch.linalg.vector_norm((reference - actual).float())
    if noise == 0:
        return math.inf
    return float(20 * torch.log10(torch.linalg.vector_norm(reference.float()) / noise))


def logits_sqnr_db(candidate: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of candidate logits vs reference: 20 log10(|ref| / |ref - cand|)."""
    as_tensor = lambda x: x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))  # noqa: E731
    ref, cand = as_tensor(reference), as_tensor(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"logits shape {tuple(cand.shape)} does not match reference shape {tuple(ref.shape)}")
    return sqnr_db(ref, cand)
