"""Exact graph rewrites applied to the exported float program before it is quantized.

Each rewrite computes the same function in float and exists because a runtime has no int8 kernel
for the op it removes:

- **hardsigmoid after a convolution** (MobileNetV3's squeeze-excitation gates). TFLite has no
  HARD_SIGMOID operator: litert-torch lowers it to ADD(+3) and MUL(1/6) in float32, with a
  DEQUANTIZE before and a QUANTIZE after, a float island in every SE block that also splits
  XNNPACK's partitions; ExecuTorch keeps its two scalar constants outside the delegate. Since
  hardsigmoid(z) = clamp(z / 6 + 1/2, 0, 1), a convolution z = W x + b followed by hardsigmoid is
  the convolution W/6, b/6 + 1/2 followed by clamp(0, 1) (hardtanh), and a conv + clamp is one
  quantized partition in every runtime (the clamp becomes the conv's output bound).
- **hardswish** (MobileNetV3's activation). The LiteRT XNNPACK delegate runs HARD_SWISH in float
  only (its HARD_SWISH visitor accepts float tensors only), so an int8 HARD_SWISH runs in LiteRT's
  single-threaded builtin kernel and splits the XNNPACK partition at each one: a MobileNetV3
  LR-ASPP at 512x512 had 29 XNNPACK partitions and its int8 .tflite ran slower than fp32.
  hardswish(x) = x * hardsigmoid(x) = x * clamp(x / 6 + 1/2, 0, 1), and x / 6 + 1/2 is a 1x1
  depthwise convolution (weight 1/6, bias 1/2; 1/6 is exact as an int8 per-channel weight), so
  the int8 program computes it as a depthwise conv + a multiply, both integer XNNPACK operators
  in every runtime.

After `convert_pt2e`, `drop_saturated_clamps` removes a clamp whose input and output carry the
same int8 qparams spanning no more than the clamp's bounds: the int8 saturation has already
applied it (the [0, 1] gates above are quantized on exactly [0, 1]; LiteRT would otherwise keep
a float-only RELU_0_TO_1 outside XNNPACK).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx import GraphModule, Node

from .quantizers import CONV_TARGETS

HARDSIGMOID_TARGETS = {torch.ops.aten.hardsigmoid.default, torch.ops.aten.hardsigmoid_.default}
HARDSWISH_TARGETS = {torch.ops.aten.hardswish.default, torch.ops.aten.hardswish_.default}
CLAMP_TARGETS = {torch.ops.aten.hardtanh.default: (1, 2), torch.ops.aten.relu.default: None}
QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default
DEQUANTIZE = torch.ops.quantized_decomposed.dequantize_per_tensor.default
CONV_BIAS_ARG = 2  # conv2d / convolution: (input, weight, bias, ...)


def _attr(gm: GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _private_attr(node: Node | None) -> bool:
    """A get_attr parameter read by this one node only (so it can be rescaled for it)."""
    return node is None or (isinstance(node, Node) and node.op == "get_attr" and len(node.users) == 1)


def fold_hardsigmoid_into_conv(gm: GraphModule) -> list[str]:
    """Rewrite every conv -> hardsigmoid (conv used only there) as conv' -> hardtanh(0, 1), in place.

    Returns the names of the rewritten hardsigmoid nodes. A hardsigmoid fed by anything else is
    left as it is (it stays a float op in the int8 artifacts; `aspp-edge inspect` lists it)."""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in HARDSIGMOID_TARGETS:
            continue
        conv = node.args[0]
        if not (isinstance(conv, Node) and conv.op == "call_function" and conv.target in CONV_TARGETS and len(conv.users) == 1):
            continue
        weight_node = conv.args[1]
        bias_node = conv.args[CONV_BIAS_ARG] if len(conv.args) > CONV_BIAS_ARG else None
        if not (_private_attr(weight_node) and weight_node is not None and _private_attr(bias_node)):
            continue
        weight = _attr(gm, weight_node.target)
        bias = _attr(gm, bias_node.target) if bias_node is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
        stem = f"_hardsigmoid_fold_{len(done)}"
        with torch.no_grad():
            gm.register_parameter(f"{stem}_weight", nn.Parameter(weight.detach() / 6.0, requires_grad=weight.requires_grad))
            gm.register_parameter(f"{stem}_bias", nn.Parameter(bias.detach() / 6.0 + 0.5, requires_grad=weight.requires_grad))
        with gm.graph.inserting_before(conv):
            new_weight, new_bias = gm.graph.get_attr(f"{stem}_weight"), gm.graph.get_attr(f"{stem}_bias")
        new_weight.meta.update(weight_node.meta)
        new_bias.meta["val"] = weight_node.meta["val"].new_empty(weight.shape[:1]) if "val" in weight_node.meta else None
        args = list(conv.args) + [None] * max(0, CONV_BIAS_ARG + 1 - len(conv.args))
        args[1], args[CONV_BIAS_ARG] = new_weight, new_bias
        conv.args = tuple(args)
        for old in (weight_node, bias_node):
            if old is not None and not old.users:
                gm.graph.erase_node(old)
        node.target, node.args, node.kwargs = torch.ops.aten.hardtanh.default, (conv, 0.0, 1.0), {}
        done.append(node.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def decompose_hardswish(gm: GraphModule) -> list[str]:
    """Rewrite every 4-D hardswish(x) as x * hardtanh(depthwise_conv1x1(x; 1/6, 1/2), 0, 1), in place.

    The constants are buffers, so QAT does not train them. Returns the rewritten nodes' names."""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in HARDSWISH_TARGETS:
            continue
        x = node.args[0]
        val = x.meta.get("val") if isinstance(x, Node) else None
        if val is None or val.dim() != 4:
            continue
        channels = int(val.shape[1])
        stem = f"_hardswish_gate_{len(done)}"
        gm.register_buffer(f"{stem}_weight", torch.full((channels, 1, 1, 1), 1.0 / 6.0, dtype=val.dtype))
        gm.register_buffer(f"{stem}_bias", torch.full((channels,), 0.5, dtype=val.dtype))
        graph = gm.graph
        with graph.inserting_before(node):
            weight, bias = graph.get_attr(f"{stem}_weight"), graph.get_attr(f"{stem}_bias")
            weight.meta["val"] = val.new_empty((channels, 1, 1, 1))
            bias.meta["val"] = val.new_empty((channels,))
            affine = graph.call_function(torch.ops.aten.conv2d.default, (x, weight, bias, [1, 1], [0, 0], [1, 1], channels))
            gate = graph.call_function(torch.ops.aten.hardtanh.default, (affine, 0.0, 1.0))
            out = graph.call_function(torch.ops.aten.mul.Tensor, (x, gate))
        for new in (affine, gate, out):
            new.meta.update({k: v for k, v in node.meta.items() if k in ("val", "nn_module_stack", "stack_trace", "source_fn_stack")})
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        done.append(out.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def _qparams(node: Node) -> tuple | None:
    if not (isinstance(node, Node) and node.op == "call_function" and node.target in (QUANTIZE, DEQUANTIZE)):
        return None
    return tuple(node.args[1:6])  # scale, zero_point, quant_min, quant_max, dtype


def drop_saturated_clamps(gm: GraphModule) -> int:
    """Remove dequantize -> clamp -> quantize where both ends share qparams whose range lies inside
    the clamp's bounds (an identity on every int8 value); returns how many were removed."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in CLAMP_TARGETS:
            continue
        dq = node.args[0]
        users = list(node.users)
        if _qparams(dq) is None or dq.target != DEQUANTIZE or len(users) != 1 or users[0].target != QUANTIZE:
            continue
        q = users[0]
        if _qparams(q) != _qparams(dq):
            continue
        scale, zero_point, qmin, qmax, _ = _qparams(q)
        low, high = scale * (qmin - zero_point), scale * (qmax - zero_point)
        bounds = CLAMP_TARGETS[node.target]
        lo, hi = (node.args[bounds[0]], node.args[bounds[1]]) if bounds else (0.0, float("inf"))
        # a value moved by under half a step re-quantizes to the same integer
        if not (lo <= low + scale / 2 and high <= hi + scale / 2):
            continue
        q.replace_all_uses_with(dq.args[0])  # the producer's quantize carries the same int8 values
        gm.graph.erase_node(q)
        gm.graph.erase_node(node)
        if not dq.users:
            gm.graph.erase_node(dq)
        removed += 1
    if removed:
        gm.graph.lint()
        gm.recompile()
    return removed


def integer_friendly(gm: GraphModule) -> dict[str, list[str]]:
    """The rewrites to apply to an exported float program before `prepare_pt2e` / `prepare_qat_pt2e`."""
    return {"hardsigmoid_folded": fold_hardsigmoid_into_conv(gm), "hardswish_decomposed": decompose_hardswish(gm)}
