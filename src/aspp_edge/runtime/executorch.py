"""ExecuTorch runner: `executorch.runtime` (the portable runtime with the XNNPACK delegate)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from ..errors import AsppEdgeError
from ..formats.files import check_pte
from .base import Runner, RuntimeMissing


_pool_generation = 0  # bumped whenever the process-wide threadpool is replaced


def set_threads(threads: int) -> int:
    """Size ExecuTorch's CPU threadpool (XNNPACK's workers). It is process-wide, and replacing it
    leaves methods loaded earlier pointing at the old pool, so runners reload themselves when the
    pool changed under them (see `ExecuTorchRunner._run`). Returns the count in effect."""
    global _pool_generation
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
        _pool_generation += 1
    return portable_lib._threadpool_get_thread_count()


class ExecuTorchRunner(Runner):
    runtime = "executorch"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise RuntimeMissing(f"running {self.path.name} needs ExecuTorch: pip install executorch==1.5.1 ({exc})") from exc
        self._torch, self._runtime = torch, Runtime
        self._load()

    def _load(self) -> None:
        set_threads(self.threads)
        self.method = None  # release the old method before its pool goes
        try:
            self.program = self._runtime.get().load_program(self.path)
            self.method = self.program.load_method("forward")
        except Exception as exc:
            raise AsppEdgeError(f"{str(self.path)!r} could not be loaded by the ExecuTorch runtime: {exc}") from exc
        self._generation = _pool_generation

    check_format = staticmethod(check_pte)

    @property
    def version(self) -> str:
        return importlib.metadata.version("executorch")

    def _run(self, x: np.ndarray) -> np.ndarray:
        from executorch.extension.pybindings import portable_lib

        if self._generation != _pool_generation or portable_lib._threadpool_get_thread_count() != self.threads:
            self._load()  # another runner replaced the threadpool: reload on a pool of our own size
        return self.method.execute([self._torch.from_numpy(x)])[0].numpy()
