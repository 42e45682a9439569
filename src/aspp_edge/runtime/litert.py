"""TFLite runner: LiteRT's `ai_edge_litert.interpreter` (tflite-runtime's successor, same API)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from ..errors import AsppEdgeError
from ..formats.files import check_tflite
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


# Why an op stays outside LiteRT's XNNPACK delegate in an int8 graph (read from the delegate's
# operator visitors: these accept float tensors only), for `aspp-edge inspect`.
FLOAT_ONLY_IN_XNNPACK = {
    "HARD_SWISH": "LiteRT's XNNPACK delegate runs HARD_SWISH in float only; int8 runs in the single-threaded builtin kernel",
    "RELU_0_TO_1": "LiteRT's XNNPACK delegate runs RELU_0_TO_1 in float only",
}


def xnnpack_delegation(path: str | Path, *, threads: int = 1) -> dict:
    """How LiteRT's default XNNPACK delegate takes the model: its partitions and the ops it leaves out.

    Read from the interpreter after it applied the delegate: every DELEGATE node is one partition,
    and an op whose output feeds a partition without coming out of one runs outside XNNPACK."""
    cls, runtime = interpreter_class()
    try:
        interpreter = cls(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        ops = interpreter._get_ops_details()  # noqa: SLF001 - the Interpreter's only per-op view
    except Exception as exc:
        raise AsppEdgeError(f"{str(path)!r} could not be loaded by {runtime}: {exc}") from exc
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    into = {int(t) for op in delegates for t in op["inputs"]}
    out_of = {int(t) for op in delegates for t in op["outputs"]}
    outside: dict[str, int] = {}
    for op in ops:
        outputs = {int(t) for t in op["outputs"]}
        if op["op_name"] != "DELEGATE" and (not delegates or (outputs & into and not outputs & out_of)):
            outside[op["op_name"]] = outside.get(op["op_name"], 0) + 1
    return {
        "partitions": len(delegates),
        "ops_outside": dict(sorted(outside.items())),
        "why": {name: FLOAT_ONLY_IN_XNNPACK[name] for name in outside if name in FLOAT_ONLY_IN_XNNPACK},
    }
