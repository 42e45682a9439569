"""Artifacts on the aarch64 builds of their runtimes, under qemu-user with a chosen CPU model.

`run_artifact(env, path, inputs, cpu=...)` runs a `.pte` with the aarch64 ExecuTorch C++ runtime
(`et_run`, XNNPACK delegate) or a `.tflite` with the aarch64 ai-edge-litert 1.4.0 (`litert_worker.py`)
on inputs already in the artifact's own form (the x86 runner's `_to_input`), and returns the raw
outputs with what ran: the CPU features the guest saw and the kernels whose code qemu executed
(`kernels.read_kernels`). The environment comes from `env.ensure_env()` / `env.find_env()`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import AsppEdgeError, choices_error
from .env import Arm64Env, Arm64EnvMissing, ensure_env, find_env
from .kernels import Kernels, cpu_features, read_kernels

__all__ = ["Arm64Env", "Arm64EnvMissing", "Arm64Run", "ensure_env", "find_env", "run_artifact", "TFLITE_MODES", "PHONE_CPUS"]

# qemu CPU models used by default: a big core with dot product and fp16 arithmetic (Cortex-A76: phones
# from 2019, e.g. Snapdragon 855) and one with i8mm as well (Cortex-A710: phones from 2022).
PHONE_CPUS = ("cortex-a76", "cortex-a710")
TFLITE_MODES = ("default", "xnnpack-fp16", "builtin")
WORKER = Path(__file__).parent / "litert_worker.py"
# the libraries whose code is the runtime's kernels
ET_LIBRARIES = ["libexecutorch_backend_xnnpack.so", "libexecutorch_kernels_optimized.so", "libexecutorch.so"]
LITERT_LIBRARIES = ["libpywrap_litert_common.so", "libLiteRtRuntimeCApi.so"]
TIMEOUT_S = 1800


@dataclass
class Arm64Run:
    outputs: list[np.ndarray]
    cpu: str
    runtime: str
    features: list[str]
    kernels: list[Kernels]
    log: list[str] = field(default_factory=list)  # the runtime's own lines (delegate messages)
    details: dict = field(default_factory=dict)

    @property
    def evaluated_by(self) -> str:
        return f"qemu-aarch64 ({self.cpu})"


def _qemu(env: Arm64Env, cpu: str, trace: Path, argv: list[str], extra_env: dict[str, str], what: str) -> subprocess.CompletedProcess:
    cmd = [str(env.qemu), "-L", str(env.sysroot), "-cpu", cpu, "-d", "in_asm", "-D", str(trace)]
    for k, v in extra_env.items():
        cmd += ["-E", f"{k}={v}"]
    try:
        return subprocess.run(cmd + argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AsppEdgeError(f"{what} did not finish under qemu ({cpu}) in {TIMEOUT_S} s") from exc


def _check_cpu(env: Arm64Env, cpu: str) -> None:
    cpus = env.cpus()
    if cpu not in cpus:
        raise choices_error("--cpu", cpu, cpus)


def run_artifact(env: Arm64Env, path: str | Path, inputs: list[np.ndarray], *, cpu: str = PHONE_CPUS[0],
                 mode: str = "default", threads: int = 1) -> Arm64Run:
    """Run one artifact on the aarch64 runtime under qemu: `inputs` (batch-1 arrays in the artifact's own
    form) -> raw outputs. `mode` is for .tflite only (TFLITE_MODES)."""
    path = Path(path)
    _check_cpu(env, cpu)
    with tempfile.TemporaryDirectory(prefix="arm64-") as tmp:
        tmp = Path(tmp)
        trace = tmp / "in_asm.log"
        if path.suffix == ".pte":
            if mode != "default":
                raise choices_error(f"mode for {path.name} (a .pte runs its XNNPACK program as lowered)", mode, ["default"])
            for i, x in enumerate(inputs):
                np.ascontiguousarray(x).tofile(tmp / f"in{i}.bin")
            done = _qemu(env, cpu, trace, [str(env.et_run), str(path.resolve()), str(len(inputs)), str(tmp / "in"), str(tmp / "out")],
                         {"LD_LIBRARY_PATH": str(env.et_lib)}, path.name)
            if done.returncode != 0:
                raise AsppEdgeError(f"{path.name} failed on the aarch64 ExecuTorch runtime ({cpu}): "
                                    + " ".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-2:]))
            lines = done.stdout.splitlines()
            hwcap = next(line.split()[1:] for line in lines if line.startswith("hwcap "))
            maps = [tuple(line.split()[1:3]) for line in lines if line.startswith("map ")]
            raw = [np.fromfile(tmp / f"out{i}.bin", dtype=np.uint8) for i in range(len(inputs))]
            kernels = read_kernels(trace, maps, ET_LIBRARIES)
            return Arm64Run(raw, cpu, "executorch 1.5.1 (aarch64 C++ runtime, XNNPACK)",
                            cpu_features(int(hwcap[0], 16), int(hwcap[1], 16)), kernels,
                            [line for line in done.stderr.splitlines() if "cpuinfo" not in line][-5:],
                            {"io": [line for line in lines if line.startswith(("input ", "output "))]})
        if path.suffix == ".tflite":
            if mode not in TFLITE_MODES:
                raise choices_error("--tflite-mode", mode, TFLITE_MODES)
            for i, x in enumerate(inputs):
                np.save(tmp / f"in{i}.npy", x)
            done = _qemu(env, cpu, trace, [str(env.python), str(WORKER), str(path.resolve()), str(len(inputs)), str(tmp / "in"),
                                           str(tmp / "out"), mode, str(threads)], {"PYTHONPATH": str(env.site)}, path.name)
            if done.returncode != 0:
                raise AsppEdgeError(f"{path.name} failed on the aarch64 ai-edge-litert ({cpu}, {mode}): "
                                    + " ".join(done.stderr.strip().splitlines()[-2:]))
            info = json.loads(done.stdout.strip().splitlines()[-1])
            raw = [np.load(tmp / f"out{i}.npy") for i in range(len(inputs))]
            kernels = read_kernels(trace, [tuple(m) for m in info.pop("maps")], LITERT_LIBRARIES)
            hwcap = info.pop("hwcap")
            return Arm64Run(raw, cpu, f"ai-edge-litert 1.4.0 (aarch64, {mode})", cpu_features(*hwcap), kernels,
                            [line for line in done.stderr.splitlines() if line.startswith(("INFO", "WARNING", "ERROR"))][-5:], info)
    raise choices_error(f"artifact type for the aarch64 check ({path.name})", path.suffix, [".pte", ".tflite"])
