"""Accuracy of an artifact against ground truth and against the float reference.

`float_reference(model, dataset)` runs the float model once over the val split (on CUDA when
torch sees a GPU, else on the CPU) and keeps its logits; `evaluate(runner, dataset, reference)`
runs any runner from `runtime/` over the same images and returns mIoU, its drop in points,
pixel accuracy, pixel agreement of the argmax with the reference and the SQNR of the logits.

Agreement is only as informative as the reference is varied: against a float model that predicts
one class on (nearly) every pixel, an artifact that outputs that class everywhere agrees on
(nearly) every pixel whatever else it does. So the reference also says how many classes it
predicts and the share of its most frequent one, each result adds agreement on the pixels where
the reference predicts another class (and per reference class), and the spread's note is the
sentence every report, manifest and CLI shows beside agreement and drop when they say nothing
(`Reference.spread["note"]`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..console import progress_bar
from ..metrics import confusion_matrix, mean_iou, pixel_accuracy, reference_spread

SAMPLE_IMAGES = 4  # leading val images whose predicted masks are kept for the samples figure


def reference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Reference:
    """The float model's logits on the val split, and its own scores."""

    logits: np.ndarray  # (N, C, H, W) float32
    miou: float
    pixel_accuracy: float
    device: str
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.argmax = self.logits.argmax(1)
        self.class_pixels = np.bincount(self.argmax.ravel(), minlength=self.logits.shape[1])

    @property
    def masks(self) -> np.ndarray:
        return self.argmax[:SAMPLE_IMAGES]

    @property
    def spread(self) -> dict:
        """How varied the reference's own predictions are: classes predicted, the most frequent one
        and its share of the val pixels, and `note` (None when agreement is informative)."""
        return reference_spread(self.class_pixels, self.class_names)


@dataclass
class Accuracy:
    miou: float
    miou_drop: float  # points: 100 x (reference mIoU - mIoU)
    pixel_accuracy: float
    agreement: float  # fraction of pixels whose argmax equals the reference's
    minority_agreement: float | None  # the same over the pixels where the reference predicts a non-majority class
    class_agreement: dict[str, float]  # per class the reference predicts: the share of its pixels the artifact agrees on
    sqnr_db: float  # 10 log10(sum ref^2 / sum (ref - out)^2) over every logit
    images: int
    seconds: float
    evaluated_by: str
    masks: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0, 0), np.uint8))  # every val image's argmax
    accuracy_note: str | None = None  # the reference's note: agreement and drop say nothing

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "masks"}


def _loader(dataset: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def float_reference(model: nn.Module, dataset: Dataset, *, device: torch.device | str | None = None,
                    batch_size: int = 16, progress: bool = False) -> Reference:
    device = torch.device(device) if device is not None else reference_device()
    model = model.eval().to(device)
    num_classes = dataset.num_classes
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    logits = []
    for images, masks in progress_bar(_loader(dataset, batch_size), desc="float reference", disable=not progress, leave=False):
        out = model(images.to(device)).float().cpu()
        cm += confusion_matrix(out.argmax(1), masks, num_classes)
        logits.append(out.numpy())
    model.cpu()
    return Reference(np.concatenate(logits), mean_iou(cm), pixel_accuracy(cm), device.type,
                     tuple(getattr(dataset, "classes", ()) or ()))


def evaluate(runner, dataset: Dataset, reference: Reference, *, batch_size: int = 16, progress: bool = False) -> Accuracy:
    """Run `runner` over `dataset` (the split `reference` was computed on) and score it."""
    if len(dataset) != len(reference.logits):
        raise ValueError(f"dataset has {len(dataset)} images but the reference was computed on {len(reference.logits)}")
    started = time.perf_counter()
    num_classes = dataset.num_classes
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    agree = total = 0
    signal = noise = 0.0
    ref_classes = reference.logits.shape[1]
    hits = np.zeros(ref_classes, np.int64)  # per reference class: pixels where the artifact agrees
    predicted = []
    mask_dtype = np.uint8 if num_classes <= 256 else np.int32
    start = 0
    bar = progress_bar(_loader(dataset, batch_size), desc=f"eval {runner.path.name}", disable=not progress, leave=False)
    for images, masks in bar:
        out = runner.predict(images)
        ref = reference.logits[start : start + len(images)]
        start += len(images)
        pred = out.argmax(1)
        cm += confusion_matrix(torch.from_numpy(pred), masks, num_classes)
        ref_pred = reference.argmax[start - len(images) : start]
        same = pred == ref_pred
        agree += int(same.sum())
        hits += np.bincount(ref_pred[same].ravel(), minlength=ref_classes)
        total += pred.size
        ref64 = ref.astype(np.float64)
        signal += float((ref64**2).sum())
        noise += float(((ref64 - out) ** 2).sum())
        predicted.append(pred.astype(mask_dtype))
    miou = mean_iou(cm)
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise)
    minority, by_class = agreement_by_class(hits, reference.class_pixels)
    return Accuracy(
        miou=miou, miou_drop=100 * (reference.miou - miou), pixel_accuracy=pixel_accuracy(cm), agreement=agree / total,
        minority_agreement=minority, class_agreement=by_class, sqnr_db=float(sqnr), images=len(dataset),
        seconds=time.perf_counter() - started, evaluated_by=runner.evaluated_by, masks=np.concatenate(predicted),
        accuracy_note=reference.spread["note"],
    )


def agreement_by_class(hits: np.ndarray, class_pixels: np.ndarray) -> tuple[float | None, dict[str, float]]:
    """(agreement over the reference's non-majority pixels, None when it has none; per class the
    reference predicts, the share of its pixels agreed on), from per-class agreeing pixels `hits`
    and the reference's per-class pixel counts."""
    major = int(class_pixels.argmax())
    rest = int(class_pixels.sum() - class_pixels[major])
    minority = float((hits.sum() - hits[major]) / rest) if rest else None
    return minority, {str(c): float(hits[c] / n) for c, n in enumerate(class_pixels) if n}
