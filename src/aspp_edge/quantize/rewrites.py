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
- **any other 4-D hardsigmoid** (after a BN, an add, a pool...): hardsigmoid(x) = clamp(x / 6 + 1/2,
  0, 1), and x / 6 + 1/2 is a 1x1 depthwise convolution (weight 1/6, exact as an int8 per-channel
  weight: 127 steps; bias 1/2), so it becomes that conv followed by clamp(0, 1), the same integer
  conv + clamp partition as above (`hardsigmoid_as_unit_conv`).
- **SiLU** (x * sigmoid(x)): no runtime here has an int8 SiLU kernel inside its XNNPACK delegate
  (LiteRT has no SILU operator: litert-torch lowers it to LOGISTIC and MUL), so it is written as
  that sigmoid (int8 with the fixed [0, 1) qparams) and an int8 multiply (`silu_as_sigmoid_mul`).
- **a gate output concatenated** (a sigmoid or [0, 1] clamp feeding a concat): its int8 range is
  fixed by the kernels, a concat needs one range for all its inputs, so the gate's values must be
  requantized on the way. litert-torch cannot convert that requantize (its concat then fails its
  same-scale check), so the rewrite makes it an op every runtime has: a 1x1 depthwise identity
  convolution (weight 1, exact in int8; bias 0) between the gate and the concat
  (`requantize_gates_before_cat`).
- **hardswish, for LiteRT only** (`hardswish_as_int8_gate`, applied to the converted program by the
  TFLite export). The LiteRT XNNPACK delegate runs HARD_SWISH in float only (its HARD_SWISH
  visitor accepts float tensors only), so an int8 HARD_SWISH runs in LiteRT's single-threaded
  builtin kernel and splits the XNNPACK partition at each one: a MobileNetV3 LR-ASPP at 512x512 had
  21 XNNPACK partitions and its int8 .tflite ran 2.15x slower than fp32. hardswish(x) =
  x * clamp(x / 6 + 1/2, 0, 1), and x / 6 + 1/2 is a 1x1 depthwise convolution (weight 1/6, exact
  as an int8 per-channel weight; bias 1/2), so the .tflite computes it as that conv, quantized on
  exactly [0, 1] (the saturation is the clamp), and an int8 MUL that keeps the hardswish output's
  qparams: both XNNPACK int8 operators. ExecuTorch's XNNPACK runs the int8 hardswish itself and
  is faster with it (at 512x512, LR-ASPP OS8: 40 ms with the op, 50 ms with the gate form), and
  Core ML has its own op, so the shared program keeps hardswish and only the .tflite gets the gate
  (one extra int8 rounding of the gate: the .tflite and the .pte then differ by that rounding).

After `convert_pt2e`, `drop_saturated_clamps` removes a clamp whose input and output carry the
same int8 qparams spanning no more than the clamp's bounds: the int8 saturation has already
applied it (the [0, 1] gates above are quantized on exactly [0, 1]; LiteRT would otherwise keep
a float-only RELU_0_TO_1 outside XNNPACK).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx import GraphModule, Node

from .quantizers import CONV_TARGETS, UNIT_QSPEC

HARDSIGMOID_TARGETS = {torch.ops.aten.hardsigmoid.default, torch.ops.aten.hardsigmoid_.default}
HARDSWISH_TARGETS = {torch.ops.aten.hardswish.default, torch.ops.aten.hardswish_.default}
CLAMP_TARGETS = {torch.ops.aten.hardtanh.default: (1, 2), torch.ops.aten.relu.default: None}
QUANTIZE = torch.ops.quantized_decomposed.quantize_per_tensor.default
DEQUANTIZE = torch.ops.quantized_decomposed.dequantize_per_tensor.default
QUANTIZE_PER_CHANNEL = torch.ops.quantized_decomposed.quantize_per_channel.default
DEQUANTIZE_PER_CHANNEL = torch.ops.quantized_decomposed.dequantize_per_channel.default
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


def _depthwise_1x1(gm: GraphModule, src: Node, at: Node, *, scale: float, shift: float, stem: str) -> Node:
    """A 1x1 depthwise conv computing src * scale + shift of the 4-D `src`, inserted before `at`, in
    `at`'s module (the layer it computes belongs there); its weight and bias are buffers `<stem>_*`."""
    val = src.meta["val"]
    channels = int(val.shape[1])
    gm.register_buffer(f"{stem}_weight", torch.full((channels, 1, 1, 1), scale))
    gm.register_buffer(f"{stem}_bias", torch.full((channels,), shift))
    with gm.graph.inserting_before(at):
        weight, bias = gm.graph.get_attr(f"{stem}_weight"), gm.graph.get_attr(f"{stem}_bias")
        conv = gm.graph.call_function(torch.ops.aten.conv2d.default, (src, weight, bias, [1, 1], [0, 0], [1, 1], channels))
    weight.meta["val"], bias.meta["val"] = val.new_empty((channels, 1, 1, 1)), val.new_empty((channels,))
    conv.meta["val"] = val.new_empty(tuple(val.shape))
    conv.meta.update({k: v for k, v in at.meta.items() if k in ("nn_module_stack", "stack_trace", "source_fn_stack")})
    return conv


def hardsigmoid_as_unit_conv(gm: GraphModule) -> list[str]:
    """Rewrite every remaining 4-D hardsigmoid (not fed by a conv of its own, see above) as
    dwconv1x1(x; 1/6, 1/2) -> hardtanh(0, 1), in place; returns the rewritten nodes' names."""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in HARDSIGMOID_TARGETS:
            continue
        src = node.args[0]
        val = src.meta.get("val") if isinstance(src, Node) else None
        if val is None or val.dim() != 4:
            continue
        conv = _depthwise_1x1(gm, src, node, scale=1.0 / 6.0, shift=0.5, stem=f"_hardsigmoid_affine_{len(done)}")
        node.target, node.args, node.kwargs = torch.ops.aten.hardtanh.default, (conv, 0.0, 1.0), {}
        done.append(node.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


CAT_TARGETS = {torch.ops.aten.cat.default, torch.ops.aten.concat.default}
GATE_TARGETS = {torch.ops.aten.sigmoid.default}


def _is_gate(node: Node) -> bool:
    return node.op == "call_function" and (node.target in GATE_TARGETS or (
        node.target in (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default) and tuple(node.args[1:3]) == (0.0, 1.0)))


# Ops that give their output their input's qparams (the scheme's shared ranges and XNNPACKQuantizer's
# propagation): a gate's fixed range reaches a concat through them.
_RANGE_KEEPING = {
    torch.ops.aten.upsample_bilinear2d.vec, torch.ops.aten.upsample_bilinear2d.default, torch.ops.aten.expand.default,
    torch.ops.aten.relu.default, torch.ops.aten.hardtanh.default, torch.ops.aten.max_pool2d.default,
    torch.ops.aten.adaptive_avg_pool2d.default, torch.ops.aten.mean.dim, torch.ops.aten.view.default,
    torch.ops.aten.reshape.default, torch.ops.aten.permute.default, torch.ops.aten.squeeze.dim, torch.ops.aten.unsqueeze.default,
}


def _from_gate(node) -> bool:
    """Whether a concat input carries a gate's fixed range: a gate, or a gate through range-keeping ops."""
    while isinstance(node, Node) and node.op == "call_function":
        if _is_gate(node):
            return True
        if node.target not in _RANGE_KEEPING:
            return False
        node = node.args[0]
    return False


def requantize_gates_before_cat(gm: GraphModule) -> list[str]:
    """Put a 1x1 depthwise identity conv on every 4-D concat input that carries a gate's fixed range
    (sigmoid, clamp(0, 1), or one of them resized or pooled), in place; returns the concats' names."""
    done = []
    for cat in list(gm.graph.nodes):
        if cat.op != "call_function" or cat.target not in CAT_TARGETS:
            continue
        inputs = list(cat.args[0])
        for i, src in enumerate(inputs):
            val = src.meta.get("val") if isinstance(src, Node) else None
            if val is None or val.dim() != 4 or not _from_gate(src):
                continue
            inputs[i] = _depthwise_1x1(gm, src, cat, scale=1.0, shift=0.0, stem=f"_gate_requantize_{len(done)}_{i}")
        if any(a is not b for a, b in zip(inputs, cat.args[0])):
            cat.args = (inputs, *cat.args[1:])
            done.append(cat.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


SILU_TARGETS = {torch.ops.aten.silu.default, torch.ops.aten.silu_.default}


def silu_as_sigmoid_mul(gm: GraphModule) -> list[str]:
    """Rewrite every SiLU as x * sigmoid(x), in place; returns the rewritten nodes' names."""
    done = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in SILU_TARGETS:
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            gate = gm.graph.call_function(torch.ops.aten.sigmoid.default, (x,))
        gate.meta.update({k: v for k, v in node.meta.items() if k in ("val", "nn_module_stack", "stack_trace", "source_fn_stack")})
        node.target, node.args, node.kwargs = torch.ops.aten.mul.Tensor, (x, gate), {}
        done.append(node.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def hardswish_as_int8_gate(gm: GraphModule) -> list[str]:
    """In a converted program (weights not folded): dequantize(x) -> hardswish -> quantize(s, z)
    becomes x * gate with gate = int8 [0, 1] of dwconv1x1(x; 1/6, 1/2) and the product quantized
    with (s, z), in place. Returns the rewritten hardswish nodes' names."""
    done = []
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in HARDSWISH_TARGETS:
            continue
        dq, users = node.args[0], list(node.users)
        val = node.meta.get("val")  # convert_pt2e's dequantize nodes carry no shape; the op's output has x's
        if (_qparams(dq) is None or dq.target != DEQUANTIZE or val is None or val.dim() != 4 or len(users) != 1
                or users[0].target != QUANTIZE):
            continue
        channels = int(val.shape[1])
        stem = f"_hardswish_gate_{len(done)}"
        step = (1.0 / 6.0) / 127.0  # symmetric per-channel int8: 1/6 is exactly 127 steps
        for name, value in (("weight", torch.full((channels, 1, 1, 1), 1.0 / 6.0)), ("bias", torch.full((channels,), 0.5)),
                            ("scale", torch.full((channels,), step)), ("zero_point", torch.zeros(channels, dtype=torch.int64))):
            gm.register_buffer(f"{stem}_{name}", value)
        unit = (UNIT_QSPEC.scale, UNIT_QSPEC.zero_point, UNIT_QSPEC.quant_min, UNIT_QSPEC.quant_max, torch.int8)
        with graph.inserting_before(node):
            weight, bias, scale, zp = (graph.get_attr(f"{stem}_{n}") for n in ("weight", "bias", "scale", "zero_point"))
            wq = graph.call_function(QUANTIZE_PER_CHANNEL, (weight, scale, zp, 0, -127, 127, torch.int8))
            wdq = graph.call_function(DEQUANTIZE_PER_CHANNEL, (wq, scale, zp, 0, -127, 127, torch.int8))
            affine = graph.call_function(torch.ops.aten.conv2d.default, (dq, wdq, bias, [1, 1], [0, 0], [1, 1], channels))
            gate_q = graph.call_function(QUANTIZE, (affine, *unit))
            gate = graph.call_function(DEQUANTIZE, (gate_q, *unit))
            out = graph.call_function(torch.ops.aten.mul.Tensor, (dq, gate))
        for new, shape in ((weight, (channels, 1, 1, 1)), (wq, (channels, 1, 1, 1)), (wdq, (channels, 1, 1, 1)), (bias, (channels,)),
                           (affine, tuple(val.shape)), (gate_q, tuple(val.shape)), (gate, tuple(val.shape)), (out, tuple(val.shape))):
            new.meta["val"] = val.new_empty(shape, dtype=torch.int8 if new in (wq, gate_q) else val.dtype)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        done.append(out.name)
    if done:
        graph.lint()
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
    return {"hardsigmoid_folded": fold_hardsigmoid_into_conv(gm), "hardsigmoid_as_conv": hardsigmoid_as_unit_conv(gm),
            "silu_as_sigmoid_mul": silu_as_sigmoid_mul(gm), "gates_requantized_before_cat": requantize_gates_before_cat(gm)}
