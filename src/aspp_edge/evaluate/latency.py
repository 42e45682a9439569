"""Latency and cost of artifacts in their own runtimes, each measured in a fresh process.

`measure(path)` starts `python -m aspp_edge.evaluate.latency PATH` and reads back one JSON
line: load time, warm-up, N timed invocations (median, p90, min), the threads used, and the
process's peak RSS. A fresh process per artifact gives each its own peak RSS and keeps torch's
OpenMP workers, which spin after every parallel region, off the cores the runtime's own
threadpool needs (timed in-process, ExecuTorch's 2-thread XNNPACK pool was seen running no
faster than one thread on a 2-core machine; those timings were not recorded).

`runtime_peaks(cache_dir)` times large 1x1 convolutions (fp32 and int8) in ExecuTorch and
LiteRT, so a model's GMAC/s can be read as a fraction of what that runtime reaches here. The
reference stacks four of them: with one, ExecuTorch's NCHW->NHWC transposes of the input and
output at the delegate boundary cost as much as the convolution and hid its throughput.
For .pte files `profile=True` adds ExecuTorch's per-operator XNNPACK times (ETDump), summed by
operator kind: what dominates the latency. The fresh process runs and writes the ETDump; this one
parses it (ExecuTorch's devtools import all of exir: about 7 s, paid once here, not per artifact).

Latency is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AsppEdgeError
from ..formats import backend_for

MARKER = "ASPP_EDGE_LATENCY "
# The child runs the runtime only: aspp_edge skips its model and training imports there (a LiteRT child
# never loads torch), and torch's OpenMP pool, where a runtime loads it, must not spin on the runtime's cores.
CHILD_ENV = {"ASPP_EDGE_RUNTIME_ONLY": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TF_CPP_MIN_LOG_LEVEL": "2"}
PEAK_CHANNELS, PEAK_SIZE, PEAK_LAYERS = 256, 64, 4  # throughput reference: four 256->256 1x1 convolutions at 64x64
PEAK_RUNTIMES = {"executorch": ".pte", "tflite": ".tflite"}
# The timed runs go in BLOCKS blocks with a pause between them, and `median_ms` is the fastest block's
# median. On the 2-core VMs here a 2-thread run has two speeds that last for seconds at a time (the
# default model's 512x512 fp32 .tflite: 13.4 or 23.2 ms per run, in one process and between
# processes; 1 thread: 26.8 ms on either core, always), so one block of runs would time whichever
# state the machine was in, and an int8/fp32 ratio of two artifacts could compare the two states.
BLOCKS, BLOCK_PAUSE_S = 5, 0.2


@dataclass
class Latency:
    path: str
    threads: int
    runs: int
    warmup: int
    load_ms: float
    median_ms: float  # the fastest block's median (see BLOCKS)
    p90_ms: float  # over every timed run
    min_ms: float
    peak_rss_mb: float  # the whole measuring process (interpreter, runtime, model), high-water mark
    rss_before_load_mb: float  # the same process before the artifact was loaded
    evaluated_by: str
    profile: dict[str, float] = field(default_factory=dict)  # ms per operator kind (ExecuTorch only)
    block_medians_ms: list[float] = field(default_factory=list)
    process_medians_ms: list[float] = field(default_factory=list)  # measure(processes > 1): each process's latency

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_threads() -> int:
    return os.cpu_count() or 1


def measure(path: str | Path, *, threads: int | None = None, runs: int = 50, warmup: int = 5,
            profile: bool = False, raw: bool = False, timeout: float = 600, processes: int = 1) -> Latency:
    """Time one artifact in a fresh process. `raw`: a file without manifest (the peak convolution).
    `processes` > 1: that many fresh processes one after another, and the fastest one's figures (the
    machine's slow state can last a whole process: see BLOCKS); each one's latency goes to
    `process_medians_ms`, and the per-operator profile comes from the first."""
    path = Path(path)
    if runs < 1 or warmup < 0 or processes < 1:
        raise AsppEdgeError(f"runs and processes must be >= 1 and warmup >= 0; got runs={runs}, processes={processes}, warmup={warmup}")
    results = [_measure_once(path, threads, runs, warmup, profile and i == 0, raw, timeout) for i in range(processes)]
    best = min(results, key=lambda r: r.median_ms)
    best.profile = results[0].profile
    best.process_medians_ms = [r.median_ms for r in results] if processes > 1 else []
    return best


def _measure_once(path: Path, threads: int | None, runs: int, warmup: int, profile: bool, raw: bool, timeout: float) -> Latency:
    backend = None if raw else backend_for(path)
    if backend is not None and not backend.timed_here():
        raise AsppEdgeError(f"{path.name}: {backend.not_timed_why}; its latency is not measured on {platform.system()} (where it is "
                            "checked, an interpreter or the graph's structure says nothing about the runtime's speed)")
    profile = profile and backend is not None and backend.per_op_profile
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "run.etdump"
        cmd = [sys.executable, "-m", "aspp_edge.evaluate.latency", str(path), "--threads", str(threads or default_threads()),
               "--runs", str(runs), "--warmup", str(warmup)] + (["--profile", str(dump)] if profile else []) + (["--raw"] if raw else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **CHILD_ENV})
        for line in proc.stdout.splitlines():
            if line.startswith(MARKER):
                payload = json.loads(line[len(MARKER):])
                if "error" in payload:
                    raise AsppEdgeError(payload["error"])
                # the child wrote the ETDump; it is read here, where ExecuTorch's devtools are imported once per process
                return Latency(**payload, **({"profile": etdump_kinds_of_file(dump)} if profile else {}))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise AsppEdgeError(f"timing {str(path)!r} failed (exit {proc.returncode}): {' | '.join(tail)}")


def _status_mb(field_name: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """This process's RSS high-water mark. Linux: VmHWM, which starts afresh at exec; getrusage's
    ru_maxrss does not (it would report the parent's peak)."""
    if sys.platform == "darwin":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024)
    return _status_mb("VmHWM")


def _raw_invoke(path: Path, threads: int):
    """(invoke, evaluated_by) for a file without manifest: random input of its own shape and dtype."""
    rng = np.random.default_rng(0)
    if path.suffix == ".pte":
        import importlib.metadata

        import torch

        from ..runtime.executorch import load_method, set_threads

        set_threads(threads)
        program, method = load_method(path)
        meta = method.method_meta().input_tensor_meta(0)
        dtype = {6: np.float32, 1: np.int8}[int(meta.dtype())]  # ExecuTorch ScalarType codes: Float, Char
        x = torch.from_numpy(rng.standard_normal(tuple(meta.sizes())).astype(dtype))
        # the default argument keeps the program alive as long as its method
        return (lambda program=program: method([x])), f"executorch {importlib.metadata.version('executorch')}"
    from ..runtime.litert import interpreter_class

    cls, name = interpreter_class()
    interp = cls(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    x = rng.standard_normal(inp["shape"]) * (50 if inp["dtype"] == np.int8 else 1)
    interp.set_tensor(inp["index"], np.clip(x, -128, 127).astype(inp["dtype"]) if inp["dtype"] == np.int8 else x.astype(inp["dtype"]))
    import importlib.metadata

    return interp.invoke, f"{name} {importlib.metadata.version(name)}"


def write_etdump(module, x, dump: Path, runs: int = 3) -> None:
    """`runs` profiled runs of `module` (an ExecuTorch program loaded with `enable_etdump=True`) on `x`,
    their ETDump written to `dump`. Needs only the runtime: parsing it (`etdump_kinds_of_file`) imports
    ExecuTorch's devtools, which bring all of exir and cost a fresh process about 7 s."""
    for _ in range(runs):
        module.forward([x])
    module.write_etdump_result_to_file(str(dump))


def etdump_kinds_of_file(dump: Path) -> dict[str, float]:
    """Median ms per XNNPACK operator kind in an ETDump: its event names without their "#n", largest first."""
    from executorch.devtools import Inspector

    frame = Inspector(etdump_path=str(dump)).to_dataframe()
    kinds: dict[str, float] = {}
    for block, name, raw in zip(frame["event_block_name"], frame["event_name"], frame["raw"]):
        if block != "Execute" or not raw or name in ("Method::execute", "DELEGATE_CALL"):
            continue
        kind = re.sub(r"\s*#\d+$", "", str(name))
        kinds[kind] = kinds.get(kind, 0.0) + float(np.median(raw))
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def etdump_kinds(module, x, runs: int = 3) -> dict[str, float]:
    """Median ms per XNNPACK operator kind over `runs` profiled runs of `module` on `x` (`write_etdump`), largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "run.etdump"
        write_etdump(module, x, dump, runs)
        return etdump_kinds_of_file(dump)


def write_executorch_etdump(path: str | Path, dump: Path, runs: int = 3) -> None:
    """The ETDump of `runs` profiled runs of an artifact (`write_etdump`) on zeros of its input shape."""
    import torch

    from ..runtime import load
    from ..runtime.executorch import extension

    runner = load(path)  # for the input shape and conversion only
    x = torch.from_numpy(runner._to_input(np.zeros(runner.input_shape, np.float32)))
    write_etdump(extension()._load_for_executorch(str(path), enable_etdump=True), x, dump, runs)


def _import_runtime(path: Path) -> None:
    """Import the artifact's runtime first, so load_ms times the load, not Python's imports."""
    if path.suffix == ".pte":
        from ..runtime.executorch import extension

        extension()
    elif path.suffix == ".tflite":
        from ..runtime.litert import interpreter_class

        interpreter_class()


def timed_blocks(invoke: Callable[[], Any], runs: int, *, blocks: int = BLOCKS, pause_s: float = BLOCK_PAUSE_S) -> list[list[float]]:
    """`runs` timed calls (ms) in up to `blocks` blocks of near-equal size, pausing `pause_s` between blocks."""
    sizes = [len(part) for part in np.array_split(np.arange(runs), min(blocks, runs))]
    out = []
    for i, size in enumerate(sizes):
        if i:
            time.sleep(pause_s)
        block = []
        for _ in range(size):
            t = time.perf_counter()
            invoke()
            block.append(1e3 * (time.perf_counter() - t))
        out.append(block)
    return out


def _child(path: Path, threads: int, runs: int, warmup: int, profile: Path | None, raw: bool) -> dict[str, Any]:
    """Time one artifact in this (fresh) process; `profile`: also write its ETDump there."""
    _import_runtime(path)
    from ..runtime import load

    rss_before = _rss_mb()
    started = time.perf_counter()
    if raw:
        invoke, evaluated_by = _raw_invoke(path, threads)
    else:
        runner = load(path, threads=threads)
        x = runner._to_input(np.random.default_rng(0).standard_normal(runner.input_shape).astype(np.float32))
        invoke, evaluated_by = (lambda: runner._run(x)), runner.evaluated_by
    load_ms = 1e3 * (time.perf_counter() - started)
    for _ in range(warmup):
        invoke()
    blocks = timed_blocks(invoke, runs)
    times = [t for block in blocks for t in block]
    medians = [float(np.median(block)) for block in blocks]
    result = {
        "path": str(path), "threads": threads, "runs": runs, "warmup": warmup, "load_ms": load_ms,
        "median_ms": min(medians), "p90_ms": float(np.percentile(times, 90)), "min_ms": float(min(times)),
        "peak_rss_mb": _peak_rss_mb(), "rss_before_load_mb": rss_before, "evaluated_by": evaluated_by,
        "block_medians_ms": medians,
    }
    if profile is not None:  # measure() asks only for a backend with per-operator times (ExecuTorch's ETDump), parsed there
        write_executorch_etdump(path, profile)
    return result


# -- the runtime's own throughput on one large 1x1 convolution --------------------------------------

def peak_artifacts(cache_dir: str | Path) -> dict[tuple[str, str], Path]:
    """(runtime, dtype) -> a one-layer 1x1-convolution artifact, built once into `cache_dir`."""
    import torch
    from torch import nn

    from ..config import PTQConfig
    from ..export import executorch as et
    from ..export import tflite as tfl
    from ..export.common import folded
    from ..fileio import atomic_path
    from ..quantize import quantize

    cache = Path(cache_dir)
    paths = {(rt, dt): cache / f"conv1x1_{PEAK_LAYERS}x{PEAK_CHANNELS}_{PEAK_SIZE}_{rt}_{dt}{ext}"
             for rt, ext in PEAK_RUNTIMES.items() for dt in ("fp32", "int8")}
    if all(p.exists() for p in paths.values()):
        return paths
    torch.manual_seed(0)
    conv = nn.Sequential(*(nn.Conv2d(PEAK_CHANNELS, PEAK_CHANNELS, 1) for _ in range(PEAK_LAYERS))).eval()
    example = torch.randn(1, PEAK_CHANNELS, PEAK_SIZE, PEAK_SIZE)
    calibration = [torch.randn(2, PEAK_CHANNELS, PEAK_SIZE, PEAK_SIZE)]
    program = quantize(conv, PTQConfig(observer="minmax"), calibration=calibration).convert(fold_quantize=False)
    with torch.no_grad():
        build = {
            ("executorch", "fp32"): lambda: et.to_pte(conv, example)[0],
            ("executorch", "int8"): lambda: et.to_pte(folded(program), example)[0],
            ("tflite", "fp32"): lambda: tfl.convert(conv, example, None, int8=False, scalar_input=False),
            ("tflite", "int8"): lambda: tfl.convert(program, example, None, int8=True, scalar_input=False),
        }
        for key, path in paths.items():
            if not path.exists():
                with atomic_path(path) as tmp:
                    tmp.write_bytes(build[key]())
    return paths


def peak_macs() -> int:
    return PEAK_LAYERS * PEAK_CHANNELS * PEAK_CHANNELS * PEAK_SIZE * PEAK_SIZE


def runtime_peaks(cache_dir: str | Path, *, threads: int | None = None, runs: int = 20) -> dict[str, dict[str, Any]]:
    """{"executorch int8": {"gmacs_per_s", "median_ms", "threads", "evaluated_by"}, ...} on this machine."""
    peaks = {}
    for (rt, dt), path in peak_artifacts(cache_dir).items():
        lat = measure(path, threads=threads, runs=runs, warmup=3, raw=True)
        peaks[f"{rt} {dt}"] = {"gmacs_per_s": peak_macs() / 1e9 / (lat.median_ms / 1e3), "median_ms": lat.median_ms,
                               "threads": lat.threads, "evaluated_by": lat.evaluated_by}
    return peaks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="time one artifact (the child process of `measure`)")
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile", type=Path, default=None, help="also write the artifact's ETDump to this file")
    ap.add_argument("--raw", action="store_true")
    args = ap.parse_args(argv)
    try:
        from ..formats.backends import load_plugins

        load_plugins()  # a backend registered from the user's package ($ASPP_EDGE_BACKENDS) reaches this process
        result = _child(Path(args.artifact), args.threads, args.runs, args.warmup, args.profile, args.raw)
    except AsppEdgeError as exc:
        result = {"error": str(exc)}
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
