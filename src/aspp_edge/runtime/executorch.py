"""ExecuTorch runner: ExecuTorch's runtime extension (the portable runtime with the XNNPACK delegate)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from ..errors import AsppEdgeError
from ..formats.files import check_pte
from .base import Runner, RuntimeMissing


_pool_generation = 0  # bumped whenever the process-wide threadpool is replaced


def extension():
    """ExecuTorch's compiled runtime (`executorch.extension.pybindings._C`: programs, methods, the
    threadpool, ETDump). `executorch.runtime` and `portable_lib` wrap this same module, but importing
    either also imports the exporter (`executorch.exir`): 4 of the 5.5 s a timing process took to start."""
    import torch  # noqa: F401  (the extension takes and returns torch tensors)
    from executorch.extension.pybindings import _C

    return _C


def set_threads(threads: int) -> int:
    """Size ExecuTorch's CPU threadpool (XNNPACK's workers). It is process-wide, and replacing it
    leaves methods loaded earlier pointing at the old pool, so runners reload themselves when the
    pool changed under them (see `ExecuTorchRunner._run`). Returns the count in effect."""
    global _pool_generation
    et = extension()
    if et._threadpool_get_thread_count() != threads:
        et._unsafe_reset_threadpool(threads)
        _pool_generation += 1
    return et._threadpool_get_thread_count()


def load_method(path: str | Path, name: str = "forward", *, enable_etdump: bool = False, debug_buffer_size: int = 0):
    """(program, method) of a `.pte` (what `executorch.runtime.Runtime.load_program(...).load_method`
    returns, unwrapped); the program must outlive the method. Call the method with a list of tensors."""
    et = extension()
    program = et._load_program(str(path), enable_etdump=enable_etdump, debug_buffer_size=debug_buffer_size,
                               program_verification=et.Verification.InternalConsistency, data_path=None)
    return program, program.load_method(name)


class ExecuTorchRunner(Runner):
    runtime = "executorch"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)
        try:
            import torch

            extension()
        except ImportError as exc:
            raise RuntimeMissing(f"running {self.path.name} needs ExecuTorch: pip install executorch==1.5.1 ({exc})") from exc
        self._torch = torch
        self._load()

    def _load(self) -> None:
        set_threads(self.threads)
        self.method = None  # release the old method before its pool goes
        try:
            self.program, self.method = load_method(self.path)
        except Exception as exc:
            raise AsppEdgeError(f"{str(self.path)!r} could not be loaded by the ExecuTorch runtime: {exc}") from exc
        self._generation = _pool_generation

    check_format = staticmethod(check_pte)

    @property
    def version(self) -> str:
        return importlib.metadata.version("executorch")

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._generation != _pool_generation or extension()._threadpool_get_thread_count() != self.threads:
            self._load()  # another runner replaced the threadpool: reload on a pool of our own size
        return self.method([self._torch.from_numpy(x)])[0].numpy()
