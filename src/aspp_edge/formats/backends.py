"""The backends, registered once: what each writes, in which precisions and layouts, how its file is
recognized, and which function writes it and which runner runs it.

Writers (`aspp_edge.export.<backend>:write`) and runners (`aspp_edge.runtime.<backend>:...Runner`)
are named as import paths and imported on first use: each pulls in its runtime or converter
(executorch, coremltools, litert-torch, ai-edge-litert), heavy or optional, and this registry sits
below both export and runtime. Adding a backend is one `Backend(...)` entry here plus its writer
and runner modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AsppEdgeError, choices_error
from .files import check_mlpackage, check_pte, check_tflite


@dataclass(frozen=True)
class Backend:
    name: str
    extension: str  # without the dot
    precisions: tuple[str, ...]
    float_precision: str  # what a float export of this backend is by default
    check: Callable[[str | Path], None]  # the file's format, without the runtime
    writer: str  # "module:function": write(module, source, precision, tmp, *, layout, io_dtype) -> Written
    runner: str  # "module:Class": a runtime.base.Runner
    layouts: tuple[str, ...] = ("NCHW",)  # I/O layouts it can write; the first is the default
    int8_io_dtypes: tuple[str, ...] = ("float32",)  # I/O dtypes of an int8 artifact; float ones are float32
    device_binary: str | None = None  # the runtime's benchmark binary on an Android phone (bench-device)

    @property
    def suffix(self) -> str:
        return "." + self.extension

    def io_dtypes(self, precision: str) -> tuple[str, ...]:
        return self.int8_io_dtypes if precision == "int8" else ("float32",)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise choices_error(f"precision for {self.name}", precision, self.precisions)

    def write(self, *args: Any, **kwargs: Any):
        return _resolve(self.writer)(*args, **kwargs)

    def runner_class(self) -> type:
        return _resolve(self.runner)


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("executorch", "pte", ("fp32", "int8"), "fp32", check_pte,
            "aspp_edge.export.executorch:write", "aspp_edge.runtime.executorch:ExecuTorchRunner", device_binary="executor_runner"),
    Backend("coreml", "mlpackage", ("fp16", "fp32", "int8"), "fp16", check_mlpackage,
            "aspp_edge.export.coreml:write", "aspp_edge.runtime.coreml:CoreMLRunner"),
    Backend("tflite", "tflite", ("fp32", "int8"), "fp32", check_tflite,
            "aspp_edge.export.tflite:write", "aspp_edge.runtime.litert:LiteRTRunner",
            layouts=("NHWC", "NCHW"), int8_io_dtypes=("float32", "int8"), device_binary="benchmark_model"),
)}
SUFFIXES = tuple(b.suffix for b in BACKENDS.values())


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise choices_error("backend", name, BACKENDS)
    return BACKENDS[name]


def backend_for(path: str | Path) -> Backend:
    """The backend an artifact belongs to, by its extension."""
    path = Path(path)
    for backend in BACKENDS.values():
        if path.suffix == backend.suffix:
            return backend
    raise choices_error("artifact type", path.suffix or path.name, SUFFIXES, cls=AsppEdgeError)


def artifact_name(name: str, backend: str, precision: str) -> str:
    return f"{name}_{backend}_{precision}{get_backend(backend).suffix}"
