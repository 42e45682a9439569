"""On-device latency over adb: `bench_device(artifacts, ...)` pushes each artifact and the runtime's
own benchmark binary to an attached Android device, runs it there and parses its output into the
rows of the host report (`report.ROW_FIELDS`; accuracy fields None, latency from the device).

`.tflite` runs in TFLite/LiteRT's `benchmark_model`; `.pte` in ExecuTorch's `executor_runner`
built for Android with the XNNPACK backend. We do not ship either binary: the user passes the
path of the one built or downloaded for their device (mobile_demo/README.md says how). Core ML
artifacts need an iPhone and Xcode (Instruments / XCTest metrics), not adb.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AsppEdgeError
from .report import ROW_FIELDS

REMOTE_DIR = "/data/local/tmp/aspp_edge"
# the benchmark binaries a backend names (`Backend.device_binary`) -> the bench-device flag that gives its path
BINARY_FLAGS = {"benchmark_model": "--tflite-benchmark", "executor_runner": "--executorch-runner"}


class DeviceError(AsppEdgeError):
    """adb, a device or a benchmark binary is missing, or the binary failed."""


@dataclass
class DeviceTiming:
    """What a benchmark binary reported, in milliseconds (None where it does not report it)."""

    runs: int
    mean_ms: float
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    p90_ms: float | None = None
    std_ms: float | None = None
    init_ms: float | None = None
    first_ms: float | None = None
    peak_memory_mb: float | None = None


_STAT = re.compile(r"^(?:INFO: )?count=(\d+)(?P<rest>[^\n]*)", re.M)  # per-run stats; not the profiler's "Timings (microseconds): ..."
_PAIR = re.compile(r"(\w+)=(-?[0-9.eE+]+)")


def parse_benchmark_model(text: str) -> DeviceTiming:
    """Parse TFLite `benchmark_model` output; its per-run statistics are in microseconds.

    The tool prints a `count=N first=.. curr=.. min=.. max=.. avg=.. std=..` line for the warm-up
    and one for the timed runs (the last one; newer builds add p5/median/p95), then
    `Inference timings in us: Init: .., First inference: .., Warmup (avg): .., Inference (avg): ..`.
    """
    stats = [m for m in _STAT.finditer(text) if "avg=" in m.group("rest") or "all same" in m.group("rest")]
    if not stats:
        raise DeviceError("benchmark_model printed no timing statistics (no 'count=... avg=...' line); its output:\n" + _tail(text))
    last = stats[-1]
    pairs = {k: float(v) for k, v in _PAIR.findall(last.group("rest"))}
    runs = int(last.group(1))
    if "all same" in last.group("rest"):  # "count=N curr=X(all same)"
        pairs.setdefault("avg", pairs["curr"])
        pairs.setdefault("min", pairs["curr"])
        pairs.setdefault("max", pairs["curr"])
        pairs.setdefault("std", 0.0)
    def ms(key: str) -> float | None:  # microseconds -> milliseconds
        return pairs[key] * 1e-3 if key in pairs else None

    timing = DeviceTiming(runs=runs, mean_ms=pairs["avg"] * 1e-3, median_ms=ms("median"), min_ms=ms("min"), max_ms=ms("max"),
                          p90_ms=ms("p90"), std_ms=ms("std"))
    summary = re.search(r"Inference timings in us: (.*)", text)
    if summary:
        fields = dict(re.findall(r"([A-Za-z ()]+): ([0-9.eE+]+)", summary.group(1)))
        fields = {k.strip(): float(v) for k, v in fields.items()}
        timing.init_ms = fields["Init"] * 1e-3 if "Init" in fields else None
        timing.first_ms = fields["First inference"] * 1e-3 if "First inference" in fields else None
    peak = re.search(r"[Pp]eak memory footprint \(MB\)[^:]*: ([0-9.]+)", text)
    overall = re.search(r"Memory footprint delta from the start of the tool \(MB\): init=([0-9.]+) overall=([0-9.]+)", text)
    if peak:
        timing.peak_memory_mb = float(peak.group(1))
    elif overall:
        timing.peak_memory_mb = float(overall.group(2))
    return timing


_ET_DONE = re.compile(r"Model executed successfully\s+(\d+)\s+time\(s\) in\s+([0-9.eE+]+)\s*ms")


def parse_executor_runner(text: str) -> DeviceTiming:
    """Parse ExecuTorch `executor_runner` output: 'Model executed successfully N time(s) in T ms.'
    It times the N executions together, so only their mean is known."""
    done = _ET_DONE.search(text)
    if not done:
        raise DeviceError("executor_runner did not report a successful execution ('Model executed successfully ... ms'); its output:\n"
                          + _tail(text))
    runs, total = int(done.group(1)), float(done.group(2))
    if runs < 1:
        raise DeviceError(f"executor_runner reported {runs} executions")
    return DeviceTiming(runs=runs, mean_ms=total / runs)


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Adb:
    """The adb client, pointed at one device."""

    def __init__(self, adb: str | None = None, serial: str | None = None) -> None:
        found = adb or shutil.which("adb") or _sdk_adb()
        if not found or not Path(found).is_file():
            raise DeviceError("adb not found: install Android platform-tools and put adb on PATH (or pass --adb-path)"
                              + (f"; {adb!r} is not a file" if adb else ""))
        self.adb = str(found)
        devices = self.devices()
        ready = [s for s, state in devices.items() if state == "device"]
        if serial is None:
            if not devices:
                raise DeviceError("no Android device attached: `adb devices` lists none (connect one with USB debugging on)")
            if not ready:
                raise DeviceError("no usable Android device: " + ", ".join(f"{s} is {st}" for s, st in devices.items())
                                  + " (unlock the phone and accept the USB debugging prompt)")
            if len(ready) > 1:
                raise DeviceError(f"several Android devices attached; choose one with --serial: {', '.join(sorted(ready))}")
            serial = ready[0]
        elif serial not in devices:
            raise DeviceError(f"no device {serial!r} attached; valid choices: {', '.join(sorted(devices)) or '(none)'}")
        elif devices[serial] != "device":
            raise DeviceError(f"device {serial!r} is {devices[serial]}; unlock it and accept the USB debugging prompt")
        self.serial = serial

    def _call(self, *args: str, serial: bool = True, check: bool = True) -> str:
        cmd = [self.adb, *(["-s", self.serial] if serial else []), *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"`{shlex.join(cmd)}` ran past {exc.timeout:.0f} s") from exc
        out = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise DeviceError(f"`{shlex.join(cmd)}` failed (exit {done.returncode}):\n{_tail(out)}")
        return out

    def devices(self) -> dict[str, str]:
        out = self._call("devices", serial=False)
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
                found[parts[0]] = parts[1]
        return found

    def shell(self, command: str, check: bool = True) -> str:
        return self._call("shell", command, check=check)

    def push(self, local: Path, remote: str) -> None:
        self._call("push", str(local), remote)

    def describe(self) -> dict[str, str]:
        props = {"model": "ro.product.model", "android": "ro.build.version.release", "abi": "ro.product.cpu.abi", "soc": "ro.soc.model"}
        return {k: self.shell(f"getprop {p}").strip() for k, p in props.items()} | {"serial": self.serial}


def _sdk_adb() -> str | None:
    for var in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
        if os.environ.get(var):
            path = Path(os.environ[var]) / "platform-tools" / "adb"
            if path.is_file():
                return str(path)
    return None


def remote_command(argv: list[str]) -> str:
    """One command line for the device's shell (`adb shell` hands it to `sh -c`): each argument
    quoted, so a file name with spaces, quotes or `;` stays one argument and runs nothing."""
    return shlex.join(argv)


def check_binaries(artifacts: list[Path], binaries: dict[str, str | None]) -> dict[str, Path]:
    """The benchmark binary each artifact's backend names (`Backend.device_binary`: benchmark_model,
    executor_runner), given in `binaries` by name and present; else one error naming what is missing."""
    from ..formats import BACKENDS, backend_for

    need: dict[str, Path] = {}
    for a in artifacts:
        if a.suffix == ".mlpackage":
            raise DeviceError(f"{a.name}: Core ML runs on iPhones, not over adb; see mobile_demo/README.md (Xcode Instruments / XCTest)")
        try:
            binary = backend_for(a).device_binary
        except AsppEdgeError:
            binary = None
        if binary not in BINARY_FLAGS:
            valid = sorted({b.suffix for b in BACKENDS.values() if b.device_binary in BINARY_FLAGS})
            raise DeviceError(f"{a.name} is not an artifact bench-device runs; valid types: {', '.join(valid)}")
        flag, given = BINARY_FLAGS[binary], binaries.get(binary)
        if not given:
            raise DeviceError(f"{a.name} needs {binary} built for the device: pass its path with {flag}")
        if not Path(given).is_file():
            raise DeviceError(f"{flag} {given!r} is not a file")
        need[binary] = Path(given)
    return need


def bench_device(artifacts: list[str | Path], *, tflite_benchmark: str | None = None, executorch_runner: str | None = None,
                 adb: str | None = None, serial: str | None = None, threads: int = 4, runs: int = 50, warmup: int = 5,
                 progress: bool = True) -> dict[str, Any]:
    """Benchmark artifacts on an attached Android device; returns {"device": ..., "artifacts": rows}."""
    from ..formats import artifact_size, backend_for
    from ..formats.manifest import model_name, read_manifest
    from ..runtime import check_artifact

    paths = [Path(a) for a in artifacts]
    binaries = check_binaries(paths, {"benchmark_model": tflite_benchmark, "executor_runner": executorch_runner})
    paths = [check_artifact(p) for p in paths]
    if threads < 1 or runs < 1 or warmup < 0:
        raise DeviceError(f"--threads {threads} and --runs {runs} must be at least 1, --warmup {warmup} at least 0")
    device = Adb(adb, serial)
    info = device.describe()
    device.shell(f"mkdir -p {shlex.quote(REMOTE_DIR)}")
    for name, local in binaries.items():
        device.push(local, f"{REMOTE_DIR}/{name}")
        device.shell(f"chmod +x {shlex.quote(f'{REMOTE_DIR}/{name}')}")
    rows = []
    from ..console import progress_bar

    for path in progress_bar(paths, desc="bench-device", disable=not progress):
        remote = f"{REMOTE_DIR}/{path.name}"
        if path.is_dir():
            raise DeviceError(f"{path.name} is a directory; bench-device pushes .pte and .tflite files")
        device.push(path, remote)
        name = backend_for(path).device_binary
        binary = f"{REMOTE_DIR}/{name}"
        if name == "benchmark_model":
            argv = [binary, f"--graph={remote}", f"--num_threads={threads}", f"--num_runs={runs}", f"--warmup_runs={warmup}",
                    "--use_xnnpack=true", "--report_peak_memory_footprint=true"]
        else:
            argv = [binary, f"--model_path={remote}", f"--num_executions={runs}", f"--cpu_threads={threads}"]
        cmd = remote_command(argv)
        if name == "benchmark_model":
            timing = parse_benchmark_model(device.shell(cmd))
            tool = "tflite benchmark_model"
        else:
            timing = parse_executor_runner(device.shell(cmd))
            tool = "executorch executor_runner"
        device.shell(remote_command(["rm", "-f", remote]), check=False)
        manifest = read_manifest(path)
        row = dict.fromkeys(ROW_FIELDS)
        row.update(
            path=str(path), backend=manifest["backend"], precision=manifest["precision"], method=manifest["method"],
            head=model_name(manifest["model"]), size_bytes=artifact_size(path),
            latency_ms={"median": timing.median_ms, "p90": timing.p90_ms, "min": timing.min_ms, "mean": timing.mean_ms},
            load_ms=timing.init_ms, peak_rss_mb=timing.peak_memory_mb, threads=threads, runs=timing.runs,
            evaluated_by=f"{tool} on {info['model'] or info['serial']} (Android {info['android']}, {info['abi']})",
            command=cmd, accuracy_note="not measured on the device: bench-device times the artifact only",
        )
        rows.append(row)
    return {"device": info, "artifacts": rows}
