"""ExecuTorch `.pte` delegated to Vulkan (`VulkanPartitioner`): Android GPUs through ExecuTorch.

fp32: the float model (BatchNorm folded). fp16: the same with the delegate's `force_fp16` option
(weights and activations held in fp16 on the GPU). int8: the shared int8 program (weights folded).
The Vulkan delegate has static int8 convolution kernels (`et_vk.q8ta_conv2d`, `_dw`, `_pw`: int8
activations per tensor, int8 weights per output channel): its pattern pass
(`backends/vulkan/patterns/quantized_convolution.py`) fuses dequantize(input) -> conv(dequantized
weight) [-> relu] -> quantize into one of them. A conv followed by anything else (MobileNetV2's
ReLU6 is a hardtanh) stays a float conv between dequantize and quantize ops, inside the delegate;
the manifest counts both kinds (`int8_conv_kernels`, `float_convs_in_int8_program`).

Nothing here runs it (runtime/executorch_vulkan.py); the manifest records the delegated fraction
and the ops left on the CPU, and `aspp-edge bench-device --adb` times it on a phone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .common import Written, folded, io_specs
from .executorch import to_pte

DELEGATE = "VulkanBackend"


def int8_convs(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """Convs inside the Vulkan partitions that its pattern pass turns into int8 kernels, and the rest."""
    from executorch.backends.vulkan.patterns.quantized_convolution import find_quantized_convolution_patterns

    gm, fused, other = program.graph_module, 0, 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and "executorch_call_delegate" in str(node.target):
            lowered = getattr(gm, node.args[0].target)
            for inner in lowered.original_module.graph_module.graph.nodes:
                if inner.op == "call_function" and "convolution" in str(inner.target):
                    if find_quantized_convolution_patterns(inner) is not None:
                        fused += 1
                    else:
                        other += 1
    return {"int8_conv_kernels": fused, "float_convs_in_int8_program": other}


def write(module: torch.nn.Module, source, precision: str, tmp: Path, *, layout: str, io_dtype: str) -> Written:
    """The Vulkan-delegated `.pte` of the float model (fp32, fp16) or the int8 program at `tmp`."""
    from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

    options = {"force_fp16": True} if precision == "fp16" else {}
    data, info = to_pte(folded(module) if precision == "int8" else module, source.example, VulkanPartitioner(options), DELEGATE,
                        inspect_edge=int8_convs if precision == "int8" else None)
    tmp.write_bytes(data)
    info.update({"compute_precision": "fp16" if precision == "fp16" else "fp32" if precision == "fp32" else "int8 convs + float",
                 "ops_on_cpu": info["undelegated_ops"], "checked_here": "structure only (needs a Vulkan device)"})
    if precision == "fp16":
        from ..models.half import half_precision_check

        info["fp16_check"] = half_precision_check(module, source.example)
    return Written(info, *io_specs(source, "NCHW"))
