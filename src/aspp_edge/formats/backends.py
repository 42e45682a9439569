"""The backends, registered once: what each writes, in which precisions and layouts, how its file is
recognized, which function writes it and which runner runs it, how its file and its graph are
summarised, where its latency is measured, and where the demo apps take it.

Writers (`aspp_edge.export.<backend>:write`), runners (`aspp_edge.runtime.<backend>:...Runner`) and
summary readers are named as import paths and imported on first use: each pulls in its runtime or
converter (executorch, coremltools, litert-torch, ai-edge-litert), heavy or optional, and this
registry sits below both export and runtime. A callable may stand in for an import path. Adding a
backend is one `Backend(...)` passed to `register_backend` (or an entry here) plus its writer and
runner: export, evaluation, timing, reports, sweeps, inspection and the JSON schemas' backend names
all read this registry.
"""

from __future__ import annotations

import importlib
import os
import platform
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
    writer: str | Callable[..., Any]  # "module:function": write(module, source, precision, tmp, *, layout, io_dtype) -> Written
    runner: str | type  # "module:Class": a runtime.base.Runner
    layouts: tuple[str, ...] = ("NCHW",)  # I/O layouts it can write; the first is the default
    int8_io_dtypes: tuple[str, ...] = ("float32",)  # I/O dtypes of an int8 artifact; float ones are float32
    device_binary: str | None = None  # the runtime's benchmark binary on an Android phone (bench-device)
    checked_here: str = "runtime"  # how its artifacts are checked on this (Linux) machine: runtime | mil-reference | structure only
    default: bool = True  # in `run`/`sweep`'s default set ('all'); opt-in backends are named with --backends
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)  # writer options (export --option KEY=VALUE) and their choices
    reader: str | Callable[..., Any] | None = None  # "module:function": path -> the file's own summary (`aspp-edge inspect`)
    graph: str | Callable[..., Any] | None = None  # "module:function": (path, backend_info) -> graph facts of a latency row
    graph_text: str | Callable[..., Any] | None = None  # "module:function": graph facts -> one line for the tables
    timed_on: tuple[str, ...] | None = None  # platform.system() names where its latency is measured (None: any; (): none here)
    not_timed_why: str = ""  # why it is not timed elsewhere, for the rows that say so
    per_op_profile: bool = False  # `evaluate.latency.measure(profile=True)` adds per-operator times (ExecuTorch's ETDump)
    no_profile_why: str = ""  # without per-operator times: why, for the verdicts
    marker: str = "o"  # its points in the latency plots
    app_file: str | None = None  # the file name the demo apps load (`--for-apps`)
    app_platforms: tuple[str, ...] = ()  # the demo apps that take it: android, ios

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

    def summary(self, path: str | Path) -> dict[str, Any]:
        """The file's own view of itself (ops, delegates, I/O), read from disk."""
        return _resolve(self.reader)(path) if self.reader else {}

    def graph_facts(self, path: str | Path, backend_info: dict[str, Any]) -> dict[str, Any]:
        """What its runtime does with the graph (delegated share, float islands, op counts), for latency rows."""
        return _resolve(self.graph)(path, backend_info) if self.graph else {}

    def graph_line(self, facts: dict[str, Any]) -> str:
        return _resolve(self.graph_text)(facts) if self.graph_text else (", ".join(f"{k} {v}" for k, v in facts.items()) or "-")

    def timed_here(self) -> bool:
        return self.timed_on is None or platform.system() in self.timed_on

    def not_timed_note(self) -> str:
        """Why an artifact of this backend has no latency on this machine."""
        return f"{self.not_timed_why}; not timed on {platform.system()} (size and graph facts only)"


def _resolve(ref: str | Any) -> Any:
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


_ET = "aspp_edge.export.executorch"
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("executorch", "pte", ("fp32", "int8"), "fp32", check_pte,
            f"{_ET}:write", "aspp_edge.runtime.executorch:ExecuTorchRunner", device_binary="executor_runner",
            reader=f"{_ET}:pte_summary", graph=f"{_ET}:graph_facts", graph_text=f"{_ET}:graph_line", per_op_profile=True,
            marker="o", app_file="segmenter.pte", app_platforms=("android", "ios")),
    Backend("coreml", "mlpackage", ("fp16", "fp32", "int8"), "fp16", check_mlpackage,
            "aspp_edge.export.coreml:write", "aspp_edge.runtime.coreml:CoreMLRunner",
            reader="aspp_edge.export.coreml:mlpackage_summary", graph="aspp_edge.export.coreml:graph_facts",
            graph_text="aspp_edge.export.coreml:graph_line", timed_on=("Darwin",), not_timed_why="Core ML predicts on macOS only",
            marker="^", app_file="Segmenter.mlpackage", app_platforms=("ios",)),
    Backend("tflite", "tflite", ("fp32", "fp16", "int8"), "fp32", check_tflite,
            "aspp_edge.export.tflite:write", "aspp_edge.runtime.litert:LiteRTRunner",
            layouts=("NHWC", "NCHW"), int8_io_dtypes=("float32", "int8"), device_binary="benchmark_model",
            reader="aspp_edge.export.tflite:file_summary", graph="aspp_edge.export.tflite:graph_facts",
            graph_text="aspp_edge.export.tflite:graph_line", marker="s",
            no_profile_why="LiteRT's Python interpreter exposes no per-operator times",
            app_file="segmenter.tflite", app_platforms=("android",)),
    # The phone's accelerators through ExecuTorch (opt-in: each adds minutes of lowering to a run).
    # Core ML: the delegate's ML Program is checked here in the MIL reference interpreter.
    Backend("executorch-coreml", "pte", ("fp16", "int8"), "fp16", check_pte,
            "aspp_edge.export.executorch_coreml:write", "aspp_edge.runtime.executorch_coreml:CoreMLDelegateRunner",
            checked_here="mil-reference", default=False,
            options={"compute_units": ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only"),
                     "minimum_deployment_target": ("iOS16", "iOS17", "iOS18")},
            reader=f"{_ET}:pte_summary", graph=f"{_ET}:graph_facts", graph_text=f"{_ET}:graph_line",
            timed_on=("Darwin",), not_timed_why="ExecuTorch's Core ML delegate runs on Apple devices only", marker="v"),
    # Vulkan: needs a GPU with Vulkan; here only its structure (delegated fraction, ops left on the CPU).
    Backend("executorch-vulkan", "pte", ("fp32", "fp16", "int8"), "fp32", check_pte,
            "aspp_edge.export.executorch_vulkan:write", "aspp_edge.runtime.executorch_vulkan:VulkanRunner",
            checked_here="structure only", default=False, device_binary="executor_runner",
            reader=f"{_ET}:pte_summary", graph=f"{_ET}:graph_facts", graph_text=f"{_ET}:graph_line",
            timed_on=(), not_timed_why="ExecuTorch's Vulkan delegate needs a Vulkan GPU (on the phone: bench-device)", marker="D"),
)}
SUFFIXES = tuple(dict.fromkeys(b.suffix for b in BACKENDS.values()))
DEFAULT_BACKENDS = tuple(b.name for b in BACKENDS.values() if b.default)  # what 'all' means for run and sweep


def register_backend(backend: Backend) -> Backend:
    """Add a backend to the registry (its name must be new): from then on it is exported, evaluated,
    timed, reported, swept and inspected like the built-in ones, named with --backends ('all' stays
    the built-in default set)."""
    if backend.name in BACKENDS:
        raise AsppEdgeError(f"backend {backend.name!r} is registered already")
    BACKENDS[backend.name] = backend
    return backend


PLUGINS_ENV = "ASPP_EDGE_BACKENDS"  # comma-separated "module:attribute" refs, each a Backend or a list of them


def load_plugins() -> list[str]:
    """Register the backends $ASPP_EDGE_BACKENDS names (those not registered yet); returns their
    names. The command line and every timing process call it, so a backend registered from the
    user's own package reaches the fresh process each artifact is timed in."""
    added = []
    for ref in filter(None, (r.strip() for r in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            found = _resolve(ref)
        except (ImportError, AttributeError, ValueError) as exc:
            raise AsppEdgeError(f"{PLUGINS_ENV}: cannot import backend {ref!r} ({type(exc).__name__}: {exc}); "
                                "give module:attribute of a Backend or a list of them") from exc
        for backend in found if isinstance(found, (list, tuple)) else [found]:
            if not isinstance(backend, Backend):
                raise AsppEdgeError(f"{PLUGINS_ENV}: {ref!r} is a {type(backend).__name__}, not a Backend")
            if backend.name not in BACKENDS:
                added.append(register_backend(backend).name)
    return added


def suffixes() -> tuple[str, ...]:
    """Every registered artifact suffix (the registry as it is now, registered backends included)."""
    return tuple(dict.fromkeys(b.suffix for b in BACKENDS.values()))


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise choices_error("backend", name, BACKENDS)
    return BACKENDS[name]


def artifact_name(name: str, backend: str, precision: str) -> str:
    return f"{name}_{backend}_{precision}{get_backend(backend).suffix}"
