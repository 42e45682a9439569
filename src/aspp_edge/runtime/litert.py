"""TFLite runner: LiteRT's `ai_edge_litert.interpreter` (tflite-runtime's successor, same API)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from ..errors import AsppEdgeError
from ..export.tflite import check_tflite
from .base import Runner, RuntimeMissing


def interpreter_class():
    """(Interpreter class, runtime name); ai-edge-litert first, tflite-runtime if that is what is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError as exc:
        raise RuntimeMissing(f"running .tflite files needs LiteRT: pip install ai-edge-litert==2.3.0 ({exc})") from exc


class LiteRTRunner(Runner):
    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)
        cls, self.runtime = interpreter_class()
        try:
            self.interpreter = cls(model_path=str(self.path), num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise AsppEdgeError(f"{str(self.path)!r} could not be loaded by {self.runtime}: {exc}") from exc
        (self._in,), (self._out,) = self.interpreter.get_input_details(), self.interpreter.get_output_details()

    check_format = staticmethod(check_tflite)

    @property
    def version(self) -> str:
        return importlib.metadata.version(self.runtime)

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"])
