"""Segmentation metrics from a confusion matrix (vectorised; the ignore index is skipped), and a
model's val mIoU (`evaluate_miou`, which training and quantization both report)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from .distributed import DistContext

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


def per_image_confusion(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(N, C, C) int64 confusion matrices, one per image, of label maps `pred` and `truth` (N, H, W)."""
    pred, truth = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(truth))
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match ground truth shape {tuple(truth.shape)}")
    return torch.stack([confusion_matrix(p, t, num_classes, ignore_index) for p, t in zip(pred, truth)]).numpy()


def paired_miou_difference(a: np.ndarray, b: np.ndarray, truth: np.ndarray, num_classes: int, *, resamples: int = 2000,
                           level: float = 0.95, seed: int = 0) -> dict:
    """mIoU(a) - mIoU(b) in points on the images of `truth` (label maps, N x H x W), and how far
    resampling the images moves it: the `level` percentile interval over `resamples` paired bootstrap
    resamples (the same images drawn for both, with replacement). Two int8 artifacts of one model differ
    on few pixels, so which scores higher on a small val split can be chance: an interval holding 0 says so."""
    ca, cb = per_image_confusion(a, truth, num_classes), per_image_confusion(b, truth, num_classes)
    n = len(truth)
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)  # (resamples, n): times each image is drawn

    def resampled(cms: np.ndarray) -> np.ndarray:
        return (draws @ cms.reshape(n, -1)).reshape(resamples, num_classes, num_classes)

    diffs = np.array([mean_iou(x) - mean_iou(y) for x, y in zip(resampled(ca), resampled(cb))])
    lo, hi = np.nanpercentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return {"difference_points": 100 * (mean_iou(ca.sum(0)) - mean_iou(cb.sum(0))), "interval_points": [100 * float(lo), 100 * float(hi)],
            "level": level, "images": n, "resamples": resamples}


# A reference whose most frequent predicted class covers at least this share of the val pixels (or
# that predicts fewer than 2 classes) makes agreement and mIoU drop uninformative: an artifact that
# outputs that class everywhere scores >= 0.98 agreement, within 0.01 of the 0.99 agreement target,
# with every other pixel wrong. A model that learned sits well below it (the default model predicts
# background, its most frequent class, on 77% of val pixels); the background-only references seen
# here (brought MobileNetV3 models trained a few steps, constant outputs) sit at 1.0.
UNINFORMATIVE_MAJORITY = 0.98


def reference_spread(class_pixels: np.ndarray, class_names: tuple[str, ...] = ()) -> dict:
    """`predicted_classes`, `majority_class` (its name where known), `majority_share` and `note`
    of a reference whose argmax covers `class_pixels[c]` pixels of class c."""
    total = max(1, int(class_pixels.sum()))
    major = int(class_pixels.argmax())
    share = float(class_pixels[major]) / total
    predicted = int((class_pixels > 0).sum())
    name = class_names[major] if major < len(class_names) else f"class {major}"
    note = None
    if predicted < 2 or share >= UNINFORMATIVE_MAJORITY:
        where = "every val pixel" if predicted < 2 else f"{100 * share:.1f}% of val pixels"
        note = (f"the float reference predicts one class ({name}) on {where}: agreement and mIoU drop say nothing here "
                f"(an artifact that outputs {name} everywhere would agree on {100 * share:.1f}% of pixels); read SQNR")
    return {"predicted_classes": predicted, "classes": len(class_pixels), "majority_class": name, "majority_share": share, "note": note}


@torch.no_grad()
def evaluate_miou(model: nn.Module, dataset, device: torch.device, batch_size: int, ctx: DistContext = DistContext()) -> float:
    """Val mIoU; each rank takes every world-th sample and the confusion matrices are summed."""
    model.eval()
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world))
    num_classes = dataset.num_classes
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for images, masks in DataLoader(shard, batch_size=batch_size):
        logits = model(images.to(device))
        cm += confusion_matrix(logits.argmax(1), masks.to(device), num_classes)
    if ctx.world > 1:
        dist.all_reduce(cm)
    return mean_iou(cm.cpu())
