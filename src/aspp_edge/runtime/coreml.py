"""Core ML runner: `MLModel.predict` on macOS. Core ML does not predict on Linux."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import numpy as np

from ..export.coreml import check_mlpackage
from .base import Runner, RuntimeMissing


class CoreMLRunner(Runner):
    runtime = "coreml-runtime"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)
        if platform.system() != "Darwin":
            raise RuntimeMissing(
                f"Core ML runs on macOS: {self.path.name} converts and loads on {platform.system()} but cannot predict here"
            )
        try:
            import coremltools as ct
        except ImportError as exc:
            raise RuntimeMissing(f"running .mlpackage files needs coremltools: pip install coremltools==9.0 ({exc})") from exc
        self.model = ct.models.MLModel(str(self.path))

    check_format = staticmethod(check_mlpackage)

    @property
    def version(self) -> str:
        return importlib.metadata.version("coremltools")

    def _to_input(self, x: np.ndarray):
        from PIL import Image

        pixels = self._pixels(x)  # the image input takes pixels: the model normalizes
        return Image.fromarray(np.clip(np.round(pixels[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8), "RGB")

    def _run(self, x) -> np.ndarray:
        return np.asarray(self.model.predict({self.input_spec["name"]: x})[self.output_spec["name"]], dtype=np.float32)
