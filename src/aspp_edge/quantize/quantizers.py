"""The shared int8 scheme as a PT2E quantizer.

Weights int8 symmetric per-channel (per-tensor by option), activations int8 asymmetric
per-tensor, one set of qparams shared by every concat's inputs and output, and by the input and
output of each bilinear resize, average pool and broadcast (what TFLite's RESIZE_BILINEAR,
AVERAGE_POOL_2D/MEAN and BROADCAST_TO need in int8, and what lets XNNPACK run them without a
requantize).

Sigmoid (the SE and LR-ASPP gates) is quantized with the fixed output qparams that both int8
kernels require (scale 1/256, zero point -128, the range [0, 1)): TFLite's LOGISTIC refuses any
other output scale and XNNPACK's qs8 sigmoid assumes it, so a gate quantized with observed
qparams would either fail to load or stay a float island.

A convolution (with or without its BN) followed only by a ReLU6 (hardtanh) is one fused
partition, as conv + ReLU is in XNNPACKQuantizer: the conv output stays float inside it and the
ReLU6 output gets its own observer. XNNPACKQuantizer fuses only ReLU, so every MobileNetV2
ReLU6 would otherwise be quantized with its conv's pre-activation range (about [-12, 12] where
the ReLU6 output spans [0, 6]: a step 3-4x coarser than needed). XNNPACK fuses the hardtanh
into the conv as its output clamp, TFLite as a fused RELU6.

Built on ExecuTorch's XNNPACKQuantizer (its patterns, conv+BN folding for QAT and concat
sharing). Beyond the ReLU6 fusion, the one change is the annotation order: resize and broadcast
nodes are annotated to share their producer's qparams *before* concats are annotated, so a
concat fed by an upsample or by the image-pooling broadcast joins the same qparam group instead
of adding a requantize.

Mixed precision (`keep_float`): the quantizable *layers* are the weighted ops (convolutions and
linears), named by the module path of the `nn.Module` that ran them in the float model
(`backbone.features.3.conv.0.0`: `model.get_submodule(name)` finds it). A layer kept in float drops
out of the annotation with its whole partition (the conv, its folded BN and the activation fused
with it); ops without weights (add, concat, pool, resize, gates) stay int8 and quantize their
inputs as usual, so a float layer is a float island with a dequantize before it and a quantize
after it wherever an int8 op consumes its output.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import OP_TO_ANNOTATOR, propagate_annotation
from torch import nn
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.fake_quantize import FakeQuantize
from torchao.quantization.pt2e.quantizer import (
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationConfig,
    SharedQuantizationSpec,
)

from ..calibration.observers import EPS, observer_ctr

Q_ANNOTATION_KEY = "quantization_annotation"

# Ops whose output must carry the qparams of their input.
SHARED_RANGE_TARGETS = {
    torch.ops.aten.upsample_bilinear2d.vec,
    torch.ops.aten.upsample_bilinear2d.default,
    torch.ops.aten.expand.default,
}
SIGMOID_TARGETS = {torch.ops.aten.sigmoid.default}
# Pointwise activations XNNPACKQuantizer leaves unannotated (it knows ReLU, ReLU6 and the ops that
# share their producer's range): each gets its own int8 input and output, see `_annotate_activations`.
ACTIVATION_TARGETS = {
    torch.ops.aten.hardswish.default, torch.ops.aten.hardswish_.default, torch.ops.aten.hardsigmoid.default,
    torch.ops.aten.hardsigmoid_.default, torch.ops.aten.silu.default, torch.ops.aten.silu_.default,
    torch.ops.aten.gelu.default, torch.ops.aten.elu.default, torch.ops.aten.leaky_relu.default, torch.ops.aten.tanh.default,
}
RELU6_TARGETS = {torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default}
CONV_TARGETS = {torch.ops.aten.conv2d.default, torch.ops.aten.conv2d.padding, torch.ops.aten.convolution.default}
# BN overloads with a `training` argument (QAT graphs), and every BN overload
BN_TRAINING_TARGETS = {
    torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit.default, torch.ops.aten.cudnn_batch_norm.default,
}
BN_TARGETS = BN_TRAINING_TARGETS | {torch.ops.aten._native_batch_norm_legit_no_training.default}
SIGMOID_QSPEC = FixedQParamsQuantizationSpec(
    dtype=torch.int8, scale=1.0 / 256.0, zero_point=-128, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine
)
# A clamp to [0, 1] (the hardsigmoid gates after `rewrites.fold_hardsigmoid_into_conv`): its input
# is quantized on exactly [0, 1], so the int8 requantize of the conv output already saturates
# where the clamp would, and the clamp shares those qparams (an integer op in every runtime).
UNIT_QSPEC = FixedQParamsQuantizationSpec(
    dtype=torch.int8, scale=1.0 / 255.0, zero_point=-128, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine
)


WEIGHTED_TARGETS = CONV_TARGETS | {torch.ops.aten.linear.default}


def layer_name(node: Node) -> str | None:
    """The layer a weighted op belongs to: the module path of the innermost module that ran it
    (torch.export's `nn_module_stack`), or the graph node's name where the stack is missing."""
    if node.op != "call_function" or node.target not in WEIGHTED_TARGETS:
        return None
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    path = list(stack.values())[-1][0]
    return path.removeprefix("L['self'].")


def quantizable_layers(model: GraphModule) -> dict[str, list[str]]:
    """Layer name -> the graph nodes it names (one, unless the module runs more than once), in graph order."""
    layers: dict[str, list[str]] = {}
    for node in model.graph.nodes:
        name = layer_name(node)
        if name is not None:
            layers.setdefault(name, []).append(node.name)
    return layers


def check_layer_names(model: GraphModule, names) -> set[str]:
    """The graph nodes of the named layers; an unknown name is a ConfigError that lists the valid ones."""
    from ..errors import choices_error

    layers = quantizable_layers(model)
    nodes: set[str] = set()
    for name in names:
        if name not in layers:
            raise choices_error("layer for keep_float", name, layers)
        nodes.update(layers[name])
    return nodes


class LearnedRangeFakeQuantize(FakeQuantize):
    """A weight fake quant whose range QAT learns (LSQ, Esser et al. 2020, on the log of the scale).

    The observer sets the range while it is enabled (calibration: the minmax range PTQ takes, so the
    program starts as PTQ's); once it is disabled the scale is a parameter (`log_scale`) the loss
    trains through the rounding and clipping of every weight. Learned on its log, a step of the
    optimizer changes the scale by the same fraction whatever its size (torchao's
    LearnableFakeQuantize learns the scale itself: under AdamW a step moves a 0.001 scale as far as a
    1.0 one). Where a few large weights set a per-tensor range that rounds the other channels to zero
    (MobileNetV2's depthwise layers, whose dead channels carry the largest folded weights), a held
    range can only be lived with; a learned one clips those weights and gives the others their
    levels back. Convert reads the learned scale (`calculate_qparams`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_scale = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.cut_pending = False

    def start_learning(self) -> None:
        """Hold the observer from now on and let the loss move the scale, from the smaller of the
        observed scale and LSQ's initial one (`lsq_scale`), taken on the next weight seen."""
        self.disable_observer()
        self.log_scale.requires_grad_(True)
        self.cut_pending = True

    def lsq_scale(self, x: torch.Tensor) -> torch.Tensor:
        """LSQ's initial scale, 2 mean|w| / sqrt(quant_max) (per channel where the scale is): at int8 a
        range of about 22.5x the mean |w|, wider than any weight of a bell-shaped tensor (no cut), but
        not than the 100-300x outliers of a dead channel."""
        dims = [d for d in range(x.dim()) if d != self.ch_axis] if self.is_per_channel else list(range(x.dim()))
        return 2 * x.detach().abs().mean(dims) / self.quant_max**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer_enabled[0] == 1:
            self.activation_post_process(x.detach())
            scale, zero_point = self.activation_post_process.calculate_qparams()
            self.log_scale.data = scale.to(device=x.device, dtype=torch.float32).log()
            self.zero_point.resize_(zero_point.shape)
            self.zero_point.copy_(zero_point)
        elif self.cut_pending:
            self.log_scale.data = torch.minimum(self.log_scale.data, self.lsq_scale(x).clamp_min(EPS).log().reshape(self.log_scale.shape))
            self.cut_pending = False
        if self.fake_quant_enabled[0] == 1:
            scale, zero_point = self.log_scale.exp(), self.zero_point.float()
            if self.is_per_channel:
                return torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point, self.ch_axis, self.quant_min,
                                                                        self.quant_max, 1.0)
            return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero_point, self.quant_min, self.quant_max, 1.0)
        return x

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.log_scale.detach().exp(), self.zero_point


def scheme_config(*, observer: str = "minmax", per_channel: bool = True, qat: bool = False, percentile: float = 99.99,
                  learned_weight_ranges: bool = False) -> QuantizationConfig:
    """The int8 scheme's QuantizationConfig with the chosen activation observer.

    QAT: with observer "ema" the activations keep XNNPACK's fused moving-average fake quant;
    any other observer is wrapped in a FakeQuantize, so QAT can start from (and, with its
    observers frozen, keep) the same ranges PTQ would choose. `learned_weight_ranges` (QAT): the
    weights' fake quants are LearnedRangeFakeQuantize around XNNPACK's weight observer (on a
    constant weight its moving average is PTQ's minmax).
    """
    base = get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=qat)
    if qat and learned_weight_ranges:
        ctr = LearnedRangeFakeQuantize.with_args(observer=base.weight.observer_or_fake_quant_ctr.p.keywords["observer"], eps=EPS)
        base = dataclasses.replace(base, weight=dataclasses.replace(base.weight, observer_or_fake_quant_ctr=ctr))
    if qat and observer == "ema":
        return base
    ctr = observer_ctr(observer, percentile=percentile)
    if qat:
        ctr = FakeQuantize.with_args(observer=ctr)
    act = dataclasses.replace(base.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(base, input_activation=act, output_activation=act)


def _annotate_shared_range(model: GraphModule) -> None:
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in SHARED_RANGE_TARGETS:
            continue
        src = node.args[0]
        if not isinstance(src, Node) or Q_ANNOTATION_KEY in node.meta:
            continue
        producer = src.meta.get(Q_ANNOTATION_KEY)
        if producer is None or producer.output_qspec is None:
            continue  # the input is float: leave the resize in float too
        shared = SharedQuantizationSpec(src)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={src: shared}, output_qspec=shared, _annotated=True
        )


def _conv_partition_output(node: Node) -> bool:
    """Whether `node` ends a conv or conv + BN partition (the node carrying its output qspec)."""
    if node.target in CONV_TARGETS or node.target == torch.ops.aten.conv_transpose2d.input:
        return True  # a transposed conv + ReLU6 too: unfused, LiteRT ran the int8 RELU6 outside XNNPACK
    if node.target is operator.getitem:  # the BN variants that return a tuple
        node = node.args[0]
    if node.target in BN_TARGETS:
        src = node.args[0]
        return isinstance(src, Node) and src.target in CONV_TARGETS and len(src.users) == 1
    return False


def _annotate_conv_relu6(model: GraphModule, config: QuantizationConfig) -> None:
    """Fuse conv[+BN] -> ReLU6 into one partition: the conv output loses its qspec, the ReLU6 gets one."""
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in RELU6_TARGETS or Q_ANNOTATION_KEY in node.meta:
            continue
        src = node.args[0]
        if not isinstance(src, Node) or len(src.users) != 1 or not _conv_partition_output(src):
            continue
        producer = src.meta.get(Q_ANNOTATION_KEY)
        if producer is None or producer.output_qspec is None:
            continue  # float conv (filtered out): leave the ReLU6 float as well
        producer.output_qspec = None
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=config.output_activation, _annotated=True)


def _is_unit_clamp(node: Node) -> bool:
    return node.target in RELU6_TARGETS and tuple(node.args[1:3]) == (0.0, 1.0)


def _annotate_unit_clamp(model: GraphModule) -> None:
    """conv[+BN] -> clamp(0, 1): the conv output gets the fixed [0, 1] qparams, the clamp shares them.

    Not fused like ReLU6: TFLite has no fused [0, 1] activation, so a fused partition would leave
    the conv in float (DEQUANTIZE, CONV_2D, RELU_0_TO_1, QUANTIZE)."""
    for node in model.graph.nodes:
        if node.op != "call_function" or not _is_unit_clamp(node) or Q_ANNOTATION_KEY in node.meta:
            continue
        src = node.args[0]
        producer = src.meta.get(Q_ANNOTATION_KEY) if isinstance(src, Node) else None
        if len(src.users) != 1 or not _conv_partition_output(src) or producer is None or producer.output_qspec is None:
            continue
        producer.output_qspec = UNIT_QSPEC
        shared = SharedQuantizationSpec(src)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map={src: shared}, output_qspec=shared, _annotated=True)


def _annotate_sigmoid(model: GraphModule, config: QuantizationConfig) -> None:
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in SIGMOID_TARGETS or Q_ANNOTATION_KEY in node.meta:
            continue
        src = node.args[0]
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={src: config.input_activation}, output_qspec=SIGMOID_QSPEC, _annotated=True
        )


def _annotate_activations(model: GraphModule, config: QuantizationConfig) -> None:
    """Hardswish, GELU and the other pointwise activations of ACTIVATION_TARGETS: int8 in, int8 out.

    Left unannotated (XNNPACKQuantizer's default), such an activation is a float op, and so is every op
    that takes its range from it: an SE squeeze `mean` reading a hardswish, the pools after it. That
    is a DEQUANTIZE -> HARD_SWISH -> MEAN -> QUANTIZE float island in the .tflite (issue 36). Its
    own int8 input (shared with the producer's output observer where the producer has one) and output
    make it an integer op wherever the runtime has the kernel; where it has not, `islands.FLOAT_ISLANDS`
    says what the runtime does with it."""
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in ACTIVATION_TARGETS or Q_ANNOTATION_KEY in node.meta:
            continue
        src = node.args[0]
        if not isinstance(src, Node):
            continue
        producer = src.meta.get(Q_ANNOTATION_KEY)
        if producer is None and src.op == "call_function" and src.target in WEIGHTED_TARGETS | BN_TARGETS | {operator.getitem}:
            continue  # the producer is a layer kept in float (mixed precision): the activation stays with it
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={src: config.input_activation}, output_qspec=config.output_activation, _annotated=True
        )


def _fixed_output(node: Node) -> bool:
    """Whether `node`'s output carries fixed qparams (a sigmoid, a [0, 1] clamp), directly or by sharing."""
    seen = set()
    while isinstance(node, Node) and node not in seen:
        seen.add(node)
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        qspec = annotation.output_qspec if annotation is not None else None
        if isinstance(qspec, FixedQParamsQuantizationSpec):
            return True
        if not isinstance(qspec, SharedQuantizationSpec):
            return False
        target = qspec.edge_or_node
        if isinstance(target, tuple):  # an input edge (producer, user): the qspec the user gave it
            producer, user = target
            edge_qspec = user.meta[Q_ANNOTATION_KEY].input_qspec_map.get(producer)
            if isinstance(edge_qspec, FixedQParamsQuantizationSpec):
                return True
            node = producer if isinstance(edge_qspec, SharedQuantizationSpec) else None
        else:
            node = target
    return False


def _share_fixed_ranges(model: GraphModule) -> None:
    """An op reading a fixed-range output (a gate in [0, 1]) takes it as it is: its input shares the
    producer's qparams instead of an observer of its own.

    With its own observer the edge carries a requantize (quantize 1/256 -> dequantize -> quantize at the
    observed range), which no runtime needs (an int8 conv or multiply takes any input qparams) and which
    litert-torch lowers wrongly: it drops the second QUANTIZE but quantizes the next conv's bias with its
    scale (a sigmoid -> conv measured 14.7 dB from the program, 59 dB without the requantize)."""
    for node in model.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is None or node.target in (torch.ops.aten.cat.default,):
            continue
        for src, qspec in list(annotation.input_qspec_map.items()):
            if isinstance(src, Node) and not isinstance(qspec, SharedQuantizationSpec) and _fixed_output(src):
                annotation.input_qspec_map[src] = SharedQuantizationSpec(src)


class Int8SchemeQuantizer(XNNPACKQuantizer):
    """XNNPACKQuantizer with fixed-qparam sigmoids, int8 pointwise activations and resize/broadcast
    sharing annotated before concats."""

    SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if p.name != "cat"]

    def annotate(self, model: GraphModule) -> GraphModule:
        model = self._annotate_for_quantization_config(model)  # convs, adds, muls, pools
        if self.global_config is not None:
            _annotate_unit_clamp(model)
            _annotate_conv_relu6(model, self.global_config)
            _annotate_sigmoid(model, self.global_config)
            _annotate_activations(model, self.global_config)
        propagate_annotation(model)  # relu / hardtanh / pool / dropout share their producer's
        _annotate_shared_range(model)
        OP_TO_ANNOTATOR["cat"](model, self.global_config, self.filter_fn)
        propagate_annotation(model)
        _share_fixed_ranges(model)
        return model


def build_quantizer(*, observer: str = "minmax", per_channel: bool = True, qat: bool = False, percentile: float = 99.99,
                    float_nodes: set[str] | frozenset[str] = frozenset(), learned_weight_ranges: bool = False) -> Int8SchemeQuantizer:
    """The scheme's quantizer; `float_nodes` (graph node names, from `check_layer_names`) are left unannotated."""
    quantizer = Int8SchemeQuantizer().set_global(
        scheme_config(observer=observer, per_channel=per_channel, qat=qat, percentile=percentile,
                      learned_weight_ranges=learned_weight_ranges)
    )
    if float_nodes:
        skip = frozenset(float_nodes)
        quantizer.set_filter_function(lambda node: node.name not in skip)
    return quantizer
