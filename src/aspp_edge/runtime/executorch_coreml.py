"""ExecuTorch `.pte` delegated to Core ML: checked here by running the delegate's ML Program in the
MIL reference interpreter (runtime/mil.py), as the `.mlpackage` is off macOS.

The Core ML delegate of a `.pte` carries an uncompiled `model.mlpackage` (the phone compiles it on
first load), flattened into the program's delegate data by ExecuTorch's `executorchcoreml` module;
`delegate_packages` unflattens each one into a folder. A program whose graph is not wholly inside
one Core ML partition cannot be run by the interpreter alone and is refused (RuntimeMissing): the
ops outside would need ExecuTorch's kernels between the Core ML calls.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import AsppEdgeError
from ..formats.files import check_pte
from .base import Runner, RuntimeMissing
from .mil import NAME as REFERENCE

COREML_DELEGATE = "CoreMLBackend"


def _program(path: Path):
    from executorch.exir._serialize._program import deserialize_pte_binary

    check_pte(path)
    try:
        return deserialize_pte_binary(Path(path).read_bytes())
    except Exception as exc:
        raise AsppEdgeError(f"{str(path)!r} is a truncated or corrupt ExecuTorch program (.pte): {type(exc).__name__}") from exc


def delegate_packages(path: str | Path, out_dir: str | Path) -> list[dict]:
    """Unflatten every Core ML delegate of the `.pte` at `path` into `out_dir/<n>/`; per delegate
    {"package": <model.mlpackage path>, "inputs": [...], "outputs": [...]} (names from its metadata)."""
    from executorch.backends.apple.coreml import executorchcoreml

    path, out_dir = Path(path), Path(out_dir)
    pte = _program(path)
    program = pte.program
    named = {}
    if pte.named_data is not None:  # multifunction models keep the package in named data, referenced by key
        named = {k: pte.named_data.buffers[e.buffer_index] for k, e in pte.named_data.pte_data.items()}
    found = []
    for plan in program.execution_plan:
        for delegate in plan.delegates:
            if delegate.id != COREML_DELEGATE:
                continue
            raw = bytes(program.backend_delegate_data[delegate.processed.index].data)
            if raw.startswith(b"CMJR"):
                raw = bytes(named[json.loads(raw[4:].decode())["key"]])
            folder = out_dir / str(len(found))
            folder.mkdir(parents=True)
            if not executorchcoreml.unflatten_directory_contents(raw, str(folder)):
                raise AsppEdgeError(f"{str(path)!r}: Core ML delegate {len(found)} could not be unflattened")
            packages = sorted(folder.rglob("model.mlpackage"))
            metas = sorted(folder.rglob("metadata.json"))
            if not packages:
                raise AsppEdgeError(f"{str(path)!r}: Core ML delegate {len(found)} holds no model.mlpackage "
                                    "(a compiled .mlmodelc cannot be read on Linux)")
            meta = json.loads(metas[0].read_text()) if metas else {}
            found.append({"package": packages[0], "inputs": meta.get("inputNames", []), "outputs": meta.get("outputNames", [])})
    return found


def non_delegated_kernels(path: str | Path) -> list[str]:
    """Operators the `.pte` runs outside any delegate (ExecuTorch's own kernels)."""
    plan = _program(Path(path)).program.execution_plan[0]
    return sorted({plan.operators[i.instr_args.op_index].name for chain in plan.chains for i in chain.instructions
                   if type(i.instr_args).__name__ == "KernelCall"})


class CoreMLDelegateRunner(Runner):
    """The delegate's ML Program in the MIL reference interpreter (everywhere: ExecuTorch's Python
    runtime has no Core ML backend, and Core ML predicts on Apple platforms only)."""

    runtime = REFERENCE

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__(path, threads=threads)
        try:
            from executorch.backends.apple.coreml import executorchcoreml  # noqa: F401
        except ImportError as exc:
            raise RuntimeMissing(f"reading {self.path.name} needs ExecuTorch's Core ML tools: "
                                 f"pip install executorch==1.5.1 ({exc})") from exc
        from .mil import MILProgram

        # MILProgram reads every constant when it is built, so the unflattened package can go right after
        with tempfile.TemporaryDirectory(prefix="aspp_edge_coreml_delegate_") as folder:
            delegates = delegate_packages(self.path, folder)
            outside = non_delegated_kernels(self.path)
            if len(delegates) != 1 or outside:
                raise RuntimeMissing(f"{self.path.name} is not one whole Core ML partition ({len(delegates)} Core ML delegate(s), "
                                     f"ops outside: {', '.join(outside) or 'none'}): the MIL reference interpreter runs one "
                                     "wholly delegated program; run it on iOS/macOS with ExecuTorch's Core ML backend")
            (delegate,) = delegates
            self.program = MILProgram(delegate["package"])
            self.input_name = delegate["inputs"][0] if delegate["inputs"] else next(iter(self.program.inputs))
            self.output_name = delegate["outputs"][0] if delegate["outputs"] else self.program.outputs[0]

    check_format = staticmethod(check_pte)

    @property
    def evaluated_by(self) -> str:
        return REFERENCE

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.program.run({self.input_name: x})[self.output_name].astype(np.float32)
