"""Measure one artifact against its float reference: accuracy on the val split in its runtime, then
latency in a fresh process (skipped where the runtime is a reference interpreter or missing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .. import runtime
from ..formats import artifact_size, read_manifest
from .accuracy import Reference, evaluate
from .latency import measure
from .results import ArtifactResult, EvaluatedBy


def measure_artifact(artifact: Path, *, root: Path, head: str, gmacs: float, reference: Reference, val: Dataset,
                     batch_size: int, threads: int | None, runs: int, warmup: int,
                     progress: bool = False) -> tuple[ArtifactResult, np.ndarray]:
    """The artifact's result (its path relative to `root`) and its predicted masks on `val`."""
    manifest = read_manifest(artifact)
    result = ArtifactResult(path=str(artifact.relative_to(root)), backend=manifest["backend"], precision=manifest["precision"],
                            method=manifest["method"], head=head, size_bytes=artifact_size(artifact), gmacs=gmacs,
                            evaluated_by=EvaluatedBy(""), backend_info=manifest.get("backend_info", {}))
    try:
        runner = runtime.load(artifact, threads=threads)
    except runtime.RuntimeMissing as exc:
        result.evaluated_by = EvaluatedBy.not_run(exc)
        return result, np.zeros((0, 0, 0), np.uint8)
    acc = evaluate(runner, val, reference, batch_size=batch_size, progress=progress)
    del runner
    result.evaluated_by, result.reference_device = EvaluatedBy(acc.evaluated_by), reference.device
    result.accuracy = {"miou": acc.miou, "miou_drop": acc.miou_drop, "agreement": acc.agreement,
                       "minority_agreement": acc.minority_agreement, "class_agreement": acc.class_agreement, "sqnr_db": acc.sqnr_db,
                       "pixel_accuracy": acc.pixel_accuracy, "accuracy_note": acc.accuracy_note}
    if not result.evaluated_by.interpreted:  # an interpreter's speed says nothing about the runtime's kernels
        # profile: per-operator times where the runtime has them
        result.latency = measure(artifact, threads=threads, runs=runs, warmup=warmup, profile=True)
    return result, acc.masks
