"""The calibration set and the calibration pass."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import Dataset

from ..config import MIN_CALIB_SIZE
from ..console import progress_bar
from ..errors import ConfigError


def calibration_batches(dataset: Dataset, size: int, batch_size: int, *, seed: int = 0, split: str = "calib") -> list[torch.Tensor]:
    """A deterministic calibration set: `size` images drawn without replacement (seeded) from `dataset`.

    `dataset` is what `data.calibration_dataset(recipe)` returns (the `calib` split, or the train
    split of a folder dataset without one), built without augmentation; `split` names it in errors.
    """
    n = len(dataset)
    if size < MIN_CALIB_SIZE:
        raise ConfigError(f"calibration set size {size} is too small; it must be >= {MIN_CALIB_SIZE}")
    if n < size:
        raise ConfigError(f"calibration set size {size} exceeds the {n} images of the {split} split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].tolist()
    images = torch.stack([dataset[i][0] for i in order])
    return list(images.split(batch_size))


@torch.no_grad()
def calibrate(prepared: torch.nn.Module, batches: Iterable[torch.Tensor], *, progress: bool = False) -> int:
    """Run `batches` through a prepared (observed) model; returns the number of images seen."""
    seen = 0
    for batch in progress_bar(list(batches), desc="calibrate", disable=not progress, leave=False):
        prepared(batch)
        seen += batch.shape[0]
    if seen == 0:
        raise ConfigError("calibration set is empty")
    return seen
