"""Runners: every artifact behind one interface, numpy in, numpy out.

`load(path) -> Runner`; `runner.predict(images)` takes normalized NCHW float32 images (what the
float model takes) and returns NCHW float32 logits, doing whatever the artifact's manifest says
lies between: layout, int8 I/O (de)quantization, the Core ML image input.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AsppEdgeError, choices_error
from .base import Runner, RuntimeMissing

SUFFIXES = (".pte", ".tflite", ".mlpackage")

__all__ = ["Runner", "RuntimeMissing", "check_artifact", "load"]


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise choices_error("artifact type", path.suffix or path.name, SUFFIXES, cls=AsppEdgeError)
    if not path.exists():
        raise AsppEdgeError(f"artifact {str(path)!r} not found")
    return path


def check_artifact(path: str | Path) -> Path:
    """Raise one clear error unless `path` is an artifact we can run: known type, present, its manifest beside it."""
    from ..export.coreml import check_mlpackage
    from ..export.executorch import check_pte
    from ..export.manifest import read_manifest
    from ..export.tflite import check_tflite

    path = _existing(path)
    {".pte": check_pte, ".tflite": check_tflite, ".mlpackage": check_mlpackage}[path.suffix](path)
    read_manifest(path)
    return path


def load(path: str | Path, *, threads: int | None = None) -> Runner:
    """The runner for an artifact, chosen by its extension; checks the file's format first."""
    path = _existing(path)
    if path.suffix == ".pte":
        from .executorch import ExecuTorchRunner as cls
    elif path.suffix == ".tflite":
        from .litert import LiteRTRunner as cls
    else:
        from .coreml import CoreMLRunner as cls
    return cls(path, threads=threads)
