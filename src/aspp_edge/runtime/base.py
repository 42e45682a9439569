"""The Runner interface and the manifest-driven I/O conversions every runtime shares."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AsppEdgeError
from ..formats.manifest import read_manifest


class RuntimeMissing(AsppEdgeError, ImportError):
    """The runtime an artifact needs is not installed."""


class Runner:
    """Runs one artifact. Subclasses implement `_run(x)` on one batch-1 input in the artifact's own form."""

    runtime = "?"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = threads or os.cpu_count() or 1
        self.check_format(self.path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        self.input_spec, self.output_spec = self.manifest["input"], self.manifest["output"]

    @staticmethod
    def check_format(path: Path) -> None:
        """Raise a clear error when `path` is not this runner's format (set per runtime)."""

    @property
    def version(self) -> str:
        return "?"

    @property
    def evaluated_by(self) -> str:
        return f"{self.runtime} {self.version}"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W) the artifact takes."""
        shape = self.input_spec["shape"]
        return tuple(shape) if self.input_spec["layout"] == "NCHW" else (shape[0], shape[3], shape[1], shape[2])

    def predict(self, images: Any) -> np.ndarray:
        """Normalized NCHW float32 images (N, 3, H, W) -> NCHW float32 logits (N, classes, H, W)."""
        x = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        want = self.input_shape
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(want[1:]):
            raise AsppEdgeError(f"{self.path.name} takes images of shape (N, {want[1]}, {want[2]}, {want[3]}); got {tuple(x.shape)}")
        return np.concatenate([self._from_output(self._run(self._to_input(x[i : i + 1]))) for i in range(x.shape[0])], axis=0)

    # conversions driven by the manifest
    def _pixels(self, x: np.ndarray) -> np.ndarray:
        """Reference-normalized images back to 0-255 pixels."""
        ref = self.manifest["reference_normalization"]
        mean, std = (np.asarray(ref[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
        return (x * std + mean) / ref["pixel_scale"]

    def _renormalize(self, x: np.ndarray) -> np.ndarray:
        """Reference-normalized images -> the normalization the artifact's input takes (if different)."""
        ref, own = self.manifest["reference_normalization"], self.input_spec["normalization"]
        if own["applied_by"] == "model" or all(np.allclose(ref[k], own[k]) for k in ("pixel_scale", "mean", "std")):
            return x
        mean, std = (np.asarray(own[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
        return ((self._pixels(x) * own["pixel_scale"] - mean) / std).astype(np.float32)

    def _to_input(self, x: np.ndarray) -> np.ndarray:
        spec = self.input_spec
        x = self._renormalize(x)
        if spec["layout"] == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        q = spec["quantization"]
        if q is not None:
            info = np.iinfo(np.dtype(q["dtype"]))
            x = np.clip(np.round(x / q["scale"]) + q["zero_point"], info.min, info.max).astype(q["dtype"])
        return np.ascontiguousarray(x)

    def _from_output(self, y: np.ndarray) -> np.ndarray:
        spec = self.output_spec
        q = spec["quantization"]
        if q is not None:
            y = (y.astype(np.float32) - q["zero_point"]) * q["scale"]
        y = y.astype(np.float32, copy=False)
        return y.transpose(0, 3, 1, 2) if spec["layout"] == "NHWC" else y

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.evaluated_by})"
