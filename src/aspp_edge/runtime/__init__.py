"""Runners: every artifact behind one interface, numpy in, numpy out.

`load(path) -> Runner`; `runner.predict(images)` takes normalized NCHW float32 images (what the
float model takes) and returns NCHW float32 logits, doing whatever the artifact's manifest says
lies between: layout, int8 I/O (de)quantization, the Core ML image input. The runner class of each
artifact type comes from the backend registry (`formats.backends`).
"""

from __future__ import annotations

from pathlib import Path

from ..formats import SUFFIXES, check_artifact, existing_backend
from .base import Runner, RuntimeMissing

__all__ = ["SUFFIXES", "Runner", "RuntimeMissing", "check_artifact", "load"]


def load(path: str | Path, *, threads: int | None = None) -> Runner:
    """The runner for an artifact, chosen by its extension; checks the file's format first."""
    return existing_backend(path).runner_class()(Path(path), threads=threads)
