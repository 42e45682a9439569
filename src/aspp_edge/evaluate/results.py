"""Typed results of measuring one artifact, rendered to the report's row (a JSON object) in one place.

`EvaluatedBy` says what produced the figures: the artifact's own runtime (accuracy and latency),
an interpreter that checks the program but whose speed means nothing (Core ML's ML Program in the
MIL reference interpreter off macOS), or nothing (the runtime cannot run here, with the reason).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..runtime.mil import NAME as MIL_REFERENCE


class Evaluation(enum.Enum):
    RUNTIME = "runtime"  # the artifact's own runtime: accuracy and latency
    INTERPRETER = "interpreter"  # the program, run by a reference interpreter: accuracy only
    NOT_RUN = "not run"  # its runtime cannot run here: no figures


NOT_RUN_PREFIX = "not run"


@dataclass(frozen=True)
class EvaluatedBy:
    text: str  # as the report shows it: "executorch 1.5.1", "mil-reference", "not run: <reason>"

    @classmethod
    def not_run(cls, reason: object) -> EvaluatedBy:
        return cls(f"{NOT_RUN_PREFIX}: {reason}")

    @property
    def kind(self) -> Evaluation:
        if self.text.startswith(NOT_RUN_PREFIX):
            return Evaluation.NOT_RUN
        return Evaluation.INTERPRETER if self.text == MIL_REFERENCE else Evaluation.RUNTIME

    @property
    def ran(self) -> bool:
        return self.kind is not Evaluation.NOT_RUN

    @property
    def interpreted(self) -> bool:
        return self.kind is Evaluation.INTERPRETER

    def __str__(self) -> str:
        return self.text


def evaluated_by(row: dict[str, Any]) -> EvaluatedBy:
    """The typed `evaluated_by` of a row read back from JSON."""
    return EvaluatedBy(str(row.get("evaluated_by", "")))


ACCURACY_FIELDS = ("miou", "miou_drop", "agreement", "minority_agreement", "class_agreement", "sqnr_db", "pixel_accuracy",
                   "accuracy_note")
LATENCY_FIELDS = ("latency_ms", "load_ms", "peak_rss_mb", "gmacs_per_s", "threads")


@dataclass
class ArtifactResult:
    """One artifact measured against its float reference."""

    path: str  # relative to the run's folder
    backend: str
    precision: str
    method: str  # none | ptq | qat
    head: str  # the model's key in the run: a built-in head or a brought model's slug
    size_bytes: int
    gmacs: float
    evaluated_by: EvaluatedBy
    accuracy: dict[str, float] | None = None  # ACCURACY_FIELDS
    reference_device: str | None = None
    latency: Any = None  # evaluate.latency.Latency
    backend_info: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"path": self.path, "backend": self.backend, "precision": self.precision, "method": self.method,
                               "head": self.head, "size_bytes": self.size_bytes, "gmacs": self.gmacs}
        if not self.evaluated_by.ran:
            row.update(dict.fromkeys(ACCURACY_FIELDS), **dict.fromkeys(LATENCY_FIELDS), evaluated_by=str(self.evaluated_by))
        else:
            row.update(self.accuracy or {}, evaluated_by=str(self.evaluated_by), reference_device=self.reference_device)
            if self.latency is None:
                row.update(dict.fromkeys(LATENCY_FIELDS),
                           latency_note=f"not measured: {self.evaluated_by} checks the program, not Core ML's kernels")
            else:
                lat = self.latency
                row.update(latency_ms={"median": lat.median_ms, "p90": lat.p90_ms, "min": lat.min_ms, "blocks": lat.block_medians_ms},
                           load_ms=lat.load_ms, peak_rss_mb=lat.peak_rss_mb, rss_before_load_mb=lat.rss_before_load_mb,
                           threads=lat.threads, runs=lat.runs,
                           gmacs_per_s=self.gmacs / (lat.median_ms / 1e3), profile=lat.profile)
        row["backend_info"] = self.backend_info
        return row
