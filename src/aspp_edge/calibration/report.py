"""Per-layer quantization report: activation ranges and SQNR of each quantized tensor.

For every tensor the int8 program quantizes, compare the value the converted (Q/DQ) program
computes, after its own quantize/dequantize, with the same tensor of the prepared program run
in float (BN already folded, observers passing values through). Layers are matched by their
graph node names, which convert_pt2e keeps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter
from torchao.quantization.pt2e import disable_observer, enable_observer

from ..metrics import sqnr_db

QUANTIZE_PER_TENSOR = torch.ops.quantized_decomposed.quantize_per_tensor.default


class _Recorder(Interpreter):
    def __init__(self, module: GraphModule, names: set[str]) -> None:
        super().__init__(module)
        self.names, self.values = names, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.names and isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach().clone()  # later in-place ops (hardtanh_) must not change it
        return out


def _observer_ranges(prepared: GraphModule) -> dict[str, tuple[float, float]]:
    ranges = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and "activation_post_process" in str(node.target):
            obs = prepared.get_submodule(node.target)
            obs = getattr(obs, "activation_post_process", obs)  # FakeQuantize wraps an observer
            lo, hi = getattr(obs, "min_val", None), getattr(obs, "max_val", None)
            src = node.args[0]
            if lo is not None and lo.numel() == 1 and hasattr(src, "name"):
                ranges[src.name] = (float(lo), float(hi))
    return ranges


@torch.no_grad()
def layer_report(prepared: GraphModule, converted: GraphModule, images: torch.Tensor) -> list[dict[str, Any]]:
    """One row per quantized activation: name, float range, scale, zero point, SQNR (dB); worst first."""
    quant_nodes = [n for n in converted.graph.nodes if n.op == "call_function" and n.target == QUANTIZE_PER_TENSOR]
    names = {n.args[0].name for n in quant_nodes if hasattr(n.args[0], "name")}
    prepared.apply(disable_observer)
    try:
        reference = _Recorder(prepared, names)
        reference.run(images)
    finally:
        prepared.apply(enable_observer)
    quantized = _Recorder(converted, names)
    quantized.run(images)
    ranges = _observer_ranges(prepared)
    rows = []
    for node in quant_nodes:
        name = node.args[0].name if hasattr(node.args[0], "name") else None
        scale, zero_point, qmin, qmax = node.args[1], node.args[2], node.args[3], node.args[4]
        if name not in reference.values or name not in quantized.values or not isinstance(scale, float):
            continue  # the graph input, or a tensor the float program does not name the same way
        fq = torch.fake_quantize_per_tensor_affine(quantized.values[name].float(), scale, int(zero_point), qmin, qmax)
        lo, hi = ranges.get(name, (math.nan, math.nan))
        rows.append({
            "tensor": name, "min": lo, "max": hi, "scale": scale, "zero_point": int(zero_point),
            "sqnr_db": sqnr_db(reference.values[name], fq),
        })
    rows.sort(key=lambda r: r["sqnr_db"])
    return rows
