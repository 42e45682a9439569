"""What stays float in an int8 artifact, per runtime: one table, read by the exporters (the
manifest's `float_islands`), `aspp-edge inspect`, the run report and the generated-model test.

The shared scheme makes every op of a model integer where the runtime has the int8 kernel:
convolutions (with or without bias and BN, dense, depthwise, dilated, strided), ReLU, ReLU6,
hardswish, hardsigmoid (rewritten as a conv + clamp, `rewrites.py`), sigmoid, SiLU (rewritten as
x * sigmoid(x)), adds, multiplies, concats, average pools, means and bilinear resizes. What is left
is decided by the runtimes, not the scheme, and each entry below says which runtime, which op,
how the artifact shows it, and why (read from the runtime's or converter's source and checked on
generated models, tests/test_generated_models.py):

- `.tflite`: a transposed convolution stays float (litert-torch 0.10 lowers the int8 program's
  transposed conv as DEQUANTIZE -> TRANSPOSE_CONV (float32) -> QUANTIZE); a GELU is int8 but LiteRT's
  XNNPACK delegate takes GELU in float only, so it runs in LiteRT's builtin kernel and splits the
  XNNPACK partition.
- `.pte` (XNNPACK): nothing leaves the delegate; inside it, the activations whose XNNPACK partitioner
  configs accept FP32 only (hardswish, sigmoid, GELU, tanh) run in float between the delegate's own
  int8 <-> fp32 converts. The artifact is still 100% delegated, so `inspect` lists them as
  "float inside the delegate", not as islands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node


@dataclass(frozen=True)
class FloatIsland:
    runtime: str  # the backend whose artifact shows it (tflite, executorch)
    op: str  # the program's op (aten name)
    targets: frozenset  # the program's op overloads
    shows_as: str  # what the artifact shows: "qdq_inside" (Q/DQ pairs inside the .tflite), "outside_xnnpack:<OP>",
    #                 "float_in_delegate" (.pte: fp32 between XNNPACK converts; still delegated)
    why: str


_A = torch.ops.aten
FLOAT_ISLANDS: tuple[FloatIsland, ...] = (
    FloatIsland("tflite", "conv_transpose2d", frozenset({_A.conv_transpose2d.input, _A.convolution.default}), "qdq_inside",
                "litert-torch 0.10 lowers an int8 transposed convolution as DEQUANTIZE -> TRANSPOSE_CONV (float32) -> QUANTIZE"),
    FloatIsland("tflite", "gelu", frozenset({_A.gelu.default}), "outside_xnnpack:GELU",
                "LiteRT's XNNPACK delegate takes GELU in float only: the int8 GELU runs in LiteRT's builtin kernel, "
                "outside XNNPACK, and splits its partition"),
    FloatIsland("executorch", "hardswish", frozenset({_A.hardswish.default, _A.hardswish_.default}), "float_in_delegate",
                "ExecuTorch's XNNPACK partitioner takes hardswish in FP32 only: fp32 between the delegate's int8 converts"),
    FloatIsland("executorch", "sigmoid", frozenset({_A.sigmoid.default}), "float_in_delegate",
                "ExecuTorch's XNNPACK partitioner takes sigmoid in FP32 only: fp32 between the delegate's int8 converts"),
    FloatIsland("executorch", "gelu", frozenset({_A.gelu.default}), "float_in_delegate",
                "ExecuTorch's XNNPACK partitioner takes GELU in FP32 only: fp32 between the delegate's int8 converts"),
    FloatIsland("executorch", "tanh", frozenset({_A.tanh.default}), "float_in_delegate",
                "ExecuTorch's XNNPACK partitioner takes tanh in FP32 only: fp32 between the delegate's int8 converts"),
)


def _matches(island: FloatIsland, node: Node) -> bool:
    if node.op != "call_function" or node.target not in island.targets:
        return False
    if node.target is _A.convolution.default:  # convolution(input, weight, bias, stride, padding, dilation, transposed, ...)
        return len(node.args) > 6 and bool(node.args[6])
    return True


def module_path(node: Node) -> str:
    """The module a program node ran in (torch.export's nn_module_stack), or its graph name."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    return list(stack.values())[-1][0].removeprefix("L['self'].")


def float_islands(program: GraphModule, runtime: str) -> list[dict[str, Any]]:
    """The table's entries that `program` (an int8 Q/DQ program) holds for `runtime`, each named by
    the layer it sits in: [{"layer", "op", "shows_as", "why"}] in graph order."""
    table = [i for i in FLOAT_ISLANDS if i.runtime == runtime]
    found = []
    for node in program.graph.nodes:
        for island in table:
            if _matches(island, node):
                found.append({"layer": module_path(node), "op": island.op, "shows_as": island.shows_as, "why": island.why})
    return found


def expected_outside_xnnpack(islands: list[dict[str, Any]]) -> dict[str, int]:
    """LiteRT ops the islands put outside its XNNPACK delegate (op name -> count)."""
    out: dict[str, int] = {}
    for i in islands:
        if i["shows_as"].startswith("outside_xnnpack:"):
            op = i["shows_as"].split(":", 1)[1]
            out[op] = out.get(op, 0) + 1
    return out


def format_islands(islands: list[dict[str, Any]]) -> str:
    return "; ".join(f"{i['layer']} ({i['op']}): {i['why']}" for i in islands) or "none"
