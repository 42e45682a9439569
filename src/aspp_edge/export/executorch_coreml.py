"""ExecuTorch `.pte` delegated to Core ML (`CoreMLPartitioner`): what an iOS app that uses ExecuTorch
loads to reach the GPU and the Neural Engine.

fp16: the float model (BatchNorm folded) as an ML Program with FLOAT16 compute precision. int8:
W8A8 from the shared int8 Q/DQ program (weights folded), converted by coremltools as for the
`.mlpackage` (quantize/dequantize + constexpr_affine_dequantize), also FLOAT16 compute. Options:
`compute_units` (all by default: CPU, GPU and Neural Engine) and `minimum_deployment_target` (iOS17
by default for W8A8, whose quantize/dequantize ops need iOS17; iOS16 for fp16). The delegate
carries an uncompiled `model.mlpackage` that the phone compiles on first load. I/O: the NCHW
float32 tensors of the XNNPACK `.pte` (normalization by the app), named by the program (`x`).

Checked on Linux: the delegate's package is unflattened from the written file and its ops are
checked against the MIL reference interpreter's subset; runtime/executorch_coreml.py runs it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError
from .common import Written, folded, io_specs
from .coreml import mlpackage_summary
from .executorch import to_pte

DELEGATE = "CoreMLBackend"
DEFAULT_TARGET = {"fp16": "iOS16", "int8": "iOS17"}


def _compute_units(name: str):
    import coremltools as ct

    return {"all": ct.ComputeUnit.ALL, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE, "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
            "cpu_only": ct.ComputeUnit.CPU_ONLY}[name]


def partitioner(precision: str, compute_units: str, target: str):
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    specs = CoreMLBackend.generate_compile_specs(compute_unit=_compute_units(compute_units),
                                                 minimum_deployment_target=getattr(ct.target, target),
                                                 compute_precision=ct.precision.FLOAT16)
    return CoreMLPartitioner(compile_specs=specs)


def write(module: torch.nn.Module, source, precision: str, tmp: Path, *, layout: str, io_dtype: str,
          compute_units: str = "all", minimum_deployment_target: str | None = None) -> Written:
    """The Core ML-delegated `.pte` of the float model (fp16) or the int8 program (W8A8) at `tmp`."""
    from ..runtime.executorch_coreml import delegate_packages
    from ..runtime.mil import SUPPORTED_OPS

    target = minimum_deployment_target or DEFAULT_TARGET[precision]
    if precision == "int8" and target < "iOS17":
        raise ConfigError(f"minimum_deployment_target {target!r} for executorch-coreml int8: W8A8's quantize/dequantize "
                          "ops need iOS17; valid choices: iOS17, iOS18")
    data, info = to_pte(folded(module) if precision == "int8" else module, source.example,
                        partitioner(precision, compute_units, target), DELEGATE)
    tmp.write_bytes(data)
    with tempfile.TemporaryDirectory(prefix="aspp_edge_coreml_delegate_") as d:
        packages = [mlpackage_summary(p["package"])["ops"] for p in delegate_packages(tmp, d)]
    ops: dict[str, int] = {}
    for counts in packages:
        for k, v in counts.items():
            ops[k] = ops.get(k, 0) + v
    outside = sorted(set(ops) - set(SUPPORTED_OPS))
    info.update({
        "compute_units": compute_units, "minimum_deployment_target": target, "compute_precision": "fp16",
        "weights": "int8 (constexpr_affine_dequantize)" if precision == "int8" else "fp16",
        "coreml_programs": len(packages), "mil_ops": dict(sorted(ops.items())),
        "checked_here": "mil-reference" if len(packages) == 1 and info["node_fraction"] == 1.0 and not outside else
                        f"structure only (MIL ops outside the reference interpreter: {', '.join(outside) or 'none'}; "
                        f"{len(packages)} Core ML partition(s), {100 * info['node_fraction']:.1f}% of nodes delegated)",
    })
    if precision == "fp16":
        from ..models.half import half_precision_check

        info["fp16_check"] = half_precision_check(module, source.example)
    return Written(info, *io_specs(source, "NCHW"))
