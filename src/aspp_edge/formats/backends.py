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
from dataclasses import dataclass, field
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
    checked_here: str = "runtime"  # how its artifacts are checked on this (Linux) machine: runtime | mil-reference | structure only
    default: bool = True  # in `run`/`sweep`'s default set ('all'); opt-in backends are named with --backends
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)  # writer options (export --option KEY=VALUE) and their choices

    @property
    def suffix(self) -> str:
        return "." + self.extension

    def io_dtypes(self, precision: str) -> tuple[str, ...]:
        return self.int8_io_dtypes if precision == "int8" else ("float32",)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise choices_error(f"precision for {self.name}", precision, self.precisions)

    def check_options(self, options: dict[str, str]) -> None:
        for key, value in options.items():
            if key not in self.options:
                raise choices_error(f"option for {self.name}", key, self.options or ("(none)",))
            if value not in self.options[key]:
                raise choices_error(f"{key} for {self.name}", value, self.options[key])

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
    Backend("tflite", "tflite", ("fp32", "fp16", "int8"), "fp32", check_tflite,
            "aspp_edge.export.tflite:write", "aspp_edge.runtime.litert:LiteRTRunner",
            layouts=("NHWC", "NCHW"), int8_io_dtypes=("float32", "int8"), device_binary="benchmark_model"),
    # The phone's accelerators through ExecuTorch (opt-in: each adds minutes of lowering to a run).
    # Core ML: the delegate's ML Program is checked here in the MIL reference interpreter.
    Backend("executorch-coreml", "pte", ("fp16", "int8"), "fp16", check_pte,
            "aspp_edge.export.executorch_coreml:write", "aspp_edge.runtime.executorch_coreml:CoreMLDelegateRunner",
            checked_here="mil-reference", default=False,
            options={"compute_units": ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only"),
                     "minimum_deployment_target": ("iOS16", "iOS17", "iOS18")}),
    # Vulkan: needs a GPU with Vulkan; here only its structure (delegated fraction, ops left on the CPU).
    Backend("executorch-vulkan", "pte", ("fp32", "fp16", "int8"), "fp32", check_pte,
            "aspp_edge.export.executorch_vulkan:write", "aspp_edge.runtime.executorch_vulkan:VulkanRunner",
            checked_here="structure only", default=False, device_binary="executor_runner"),
)}
SUFFIXES = tuple(dict.fromkeys(b.suffix for b in BACKENDS.values()))
DEFAULT_BACKENDS = tuple(b.name for b in BACKENDS.values() if b.default)  # what 'all' means for run and sweep


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise choices_error("backend", name, BACKENDS)
    return BACKENDS[name]


def backend_for(path: str | Path) -> Backend:
    """The backend an artifact belongs to: by its extension, and where several backends share it
    (.pte: executorch, executorch-coreml, executorch-vulkan) by the manifest beside it."""
    path = Path(path)
    candidates = [b for b in BACKENDS.values() if path.suffix == b.suffix]
    if not candidates:
        raise choices_error("artifact type", path.suffix or path.name, SUFFIXES, cls=AsppEdgeError)
    if len(candidates) == 1:
        return candidates[0]
    from .manifest import manifest_path, read_manifest

    names = ", ".join(b.name for b in candidates)
    if not path.exists():
        raise AsppEdgeError(f"artifact {str(path)!r} not found")
    for check in dict.fromkeys(b.check for b in candidates):  # the file's own format first: a foreign file says so
        check(path)
    if manifest_path(path).is_file():
        backend = read_manifest(path)["backend"]  # a broken manifest: its own one-line ManifestError
    else:
        raise AsppEdgeError(f"{str(path)!r}: a {path.suffix} file is written by one of {names}; its manifest says which, "
                            f"and there is none beside it ({manifest_path(path).name}, written by `aspp-edge export`)")
    if backend not in {b.name for b in candidates}:
        raise choices_error(f"backend of a {path.suffix} manifest", backend, [b.name for b in candidates], cls=AsppEdgeError)
    return BACKENDS[backend]


def artifact_name(name: str, backend: str, precision: str) -> str:
    return f"{name}_{backend}_{precision}{get_backend(backend).suffix}"
