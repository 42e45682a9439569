"""ExecuTorch `.pte` delegated to Vulkan: it needs a GPU with a Vulkan driver and an ExecuTorch
runtime built with the Vulkan backend, neither of which this machine's Python runtime has. Loading
one refuses with RuntimeMissing, so a report row says "not run: needs a Vulkan device"; its
structure (delegated fraction, ops left on the CPU) is in the manifest and in `aspp-edge inspect`,
and `aspp-edge bench-device --adb` times it with an `executor_runner` built with Vulkan."""

from __future__ import annotations

from pathlib import Path

from ..formats.files import check_pte
from .base import Runner, RuntimeMissing

NOT_HERE = "needs a Vulkan device"


class VulkanRunner(Runner):
    runtime = "executorch-vulkan"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)  # the file and its manifest are checked first
        raise RuntimeMissing(f"{NOT_HERE} ({self.path.name} is delegated to ExecuTorch's Vulkan backend; time it on an "
                             "Android phone with `aspp-edge bench-device --adb --executorch-runner` built with Vulkan)")

    check_format = staticmethod(check_pte)
