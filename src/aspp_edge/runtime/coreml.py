"""Core ML runner: `MLModel.predict` on macOS; on Linux, where Core ML cannot predict, the package's
ML Program runs in the numpy MIL reference interpreter (runtime/mil.py), named "mil-reference"."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import numpy as np

from ..formats.files import check_mlpackage
from .base import Runner, RuntimeMissing
from .mil import NAME as REFERENCE


def on_macos() -> bool:
    return platform.system() == "Darwin"


class CoreMLRunner(Runner):
    """`reference=None` picks Core ML on macOS and the MIL reference interpreter elsewhere;
    `reference=True` forces the interpreter (to compare the two on a Mac)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, reference: bool | None = None) -> None:
        super().__init__(path, threads=threads)
        self.reference = (not on_macos()) if reference is None else reference
        if self.reference:
            from .mil import MILProgram

            self.program = MILProgram(self.path)
            self.runtime = REFERENCE
            return
        if not on_macos():
            raise RuntimeMissing(f"Core ML predicts on macOS only: {self.path.name} cannot run in Core ML on {platform.system()}")
        try:
            import coremltools as ct
        except ImportError as exc:
            raise RuntimeMissing(f"running .mlpackage files needs coremltools: pip install coremltools==9.0 ({exc})") from exc
        self.runtime = "coreml-runtime"
        self.model = ct.models.MLModel(str(self.path))

    check_format = staticmethod(check_mlpackage)

    @property
    def version(self) -> str:
        return importlib.metadata.version("coremltools")

    @property
    def evaluated_by(self) -> str:
        """"coreml-runtime <coremltools version>" on macOS, "mil-reference" for the interpreter."""
        return REFERENCE if self.reference else f"{self.runtime} {self.version}"

    def _to_input(self, x: np.ndarray):
        pixels = self._pixels(x)  # the image input takes pixels: the model normalizes
        rgb = np.clip(np.round(pixels[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)
        if self.reference:
            return rgb
        from PIL import Image

        return Image.fromarray(rgb, "RGB")

    def _run(self, x) -> np.ndarray:
        name_in, name_out = self.input_spec["name"], self.output_spec["name"]
        if self.reference:
            return self.program.run({name_in: x})[name_out].astype(np.float32)
        return np.asarray(self.model.predict({name_in: x})[name_out], dtype=np.float32)
