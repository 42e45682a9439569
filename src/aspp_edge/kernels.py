"""One kernel ISA for torch's CPU arithmetic on every x86-64 machine with AVX2, so a seeded
training gives the same weights on each of them.

torch picks its CPU kernels by what the CPU has: ATen's vectorized kernels (`ATEN_CPU_CAPABILITY`:
default, avx2, avx512) and oneDNN's convolutions (`ONEDNN_MAX_CPU_ISA`). Different kernels sum in a
different order, and training turns those last-bit differences into a different model (measured
on one AVX2 machine: a conv + BN + GELU backward gives a different gradient for each of the four
combinations of the two settings). Both are read once, at torch's first CPU op (not at `import
torch`), so `pin()` runs when `aspp_edge` is imported and caps both at AVX2, the widest ISA every
x86-64 machine here has. A value the user set wins (oneDNN's under either name); `ASPP_EDGE_NATIVE_KERNELS=1`
leaves torch's own choice. Not pinned: CPUs without AVX2 (torch would run AVX2 code on them) and
other architectures (aarch64's NEON/SVE kernels are their own arithmetic); there the weights
follow the CPU, as the checkpoint's `determinism` record says.
"""

from __future__ import annotations

import os
import platform

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NATIVE = "ASPP_EDGE_NATIVE_KERNELS"
# oneDNN also reads its older name, and ONEDNN_ wins over it: a user's DNNL_ value must not be overridden
ALIASES = {"ONEDNN_MAX_CPU_ISA": ("DNNL_MAX_CPU_ISA",)}


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "avx2" in flags and "fma" in flags
    except OSError:
        pass
    return False


def pin() -> dict[str, str]:
    """Set the pinned kernel ISA where no value (under either name) is set yet; returns what it set."""
    if os.environ.get(NATIVE) == "1" or platform.machine().lower() not in ("x86_64", "amd64") or not _has_avx2():
        return {}
    unset = {k: v for k, v in PINNED.items() if not any(n in os.environ for n in (k, *ALIASES.get(k, ())))}
    os.environ.update(unset)
    return unset
