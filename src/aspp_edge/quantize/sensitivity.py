"""Isolated layer sensitivity and the greedy choice of layers to keep in float (mixed precision).

The cumulative per-tensor SQNR of `<name>_int8.layers.json` mixes each layer's own error with what
earlier layers propagate into it, so it cannot say which layer to keep in float. Here each layer
is measured *alone*, in two ways:

- **alone int8**: only that layer in int8 (its input, weights and output quantized), everything
  else float. What quantizing it costs by itself: the ranking key (lowest SQNR first).
- **alone float**: that layer in float, everything else int8. What keeping it in float recovers:
  `keep_float: auto` tries layers in this order (highest alone-float SQNR first).

Layers are the weighted ops (convolutions, linears) named by module path, as `quantizers.py`
defines them. Both variants are taken from the one calibrated, converted Q/DQ program by switching
quantize -> dequantize pairs off (a switched-off pair passes its float input through), following
the rules the annotation itself applies to a float layer: its weights are not quantized, and a
tensor stays quantized when its producer is int8 or any of its consumers is (an int8 op needs an
int8 input); ops that only move values (activations, resize, broadcast, dropout) take the precision
of their producer. In "alone int8" every op without weights is float as well; in "alone float" and
in the greedy search they are int8, as in the real mixed program. No recalibration is needed:
PTQ observers see float values, so a quantized tensor gets the same qparams with or without float
layers around it (a concat of a float and an int8 input is the one case where the real program,
whose qparams the greedy result is finally measured on, can differ a little).

Cost: one forward pass of the sensitivity images per layer and variant (2 x layers), plus one val
pass per top candidate and variant, and one val pass per greedy step.
"""

from __future__ import annotations

import copy
import math
import operator
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx import Graph, GraphModule, Node
from torch.utils.data import Dataset
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from ..calibration.report import sqnr_db
from ..console import progress_bar
from .quantizers import BN_TARGETS, RELU6_TARGETS, SHARED_RANGE_TARGETS, WEIGHTED_TARGETS, layer_name

Q_TENSOR = {torch.ops.quantized_decomposed.quantize_per_tensor.default, torch.ops.quantized_decomposed.quantize_per_tensor.tensor}
DQ_TENSOR = {torch.ops.quantized_decomposed.dequantize_per_tensor.default, torch.ops.quantized_decomposed.dequantize_per_tensor.tensor}
Q_CHANNEL = {torch.ops.quantized_decomposed.quantize_per_channel.default}
DQ_CHANNEL = {torch.ops.quantized_decomposed.dequantize_per_channel.default}
# Ops that take their producer's precision (XNNPACK's shared-observer ops and our shared-range ones).
FOLLOWERS = RELU6_TARGETS | SHARED_RANGE_TARGETS | BN_TARGETS | {
    operator.getitem, torch.ops.aten.relu.default, torch.ops.aten.relu_.default, torch.ops.aten.dropout.default,
    torch.ops.aten.dropout_.default, torch.ops.aten.clamp.default, torch.ops.aten.max_pool2d.default,
    torch.ops.aten.flatten.using_ints, torch.ops.aten.view.default, torch.ops.aten.reshape.default,
}
TOP_CANDIDATES = 5  # layers whose val mIoU drop is measured (alone int8 and alone float)
SENSITIVITY_IMAGES = 32  # calibration images the SQNR / agreement columns are computed on


def switched_program(program: GraphModule, passthrough: set[str]) -> GraphModule:
    """A copy of `program`'s graph (sharing its weights) in which each `passthrough` quantize/dequantize
    node is removed: its users read its input instead."""
    graph = Graph()
    env: dict[Node, Node] = {}
    out = graph.graph_copy(program.graph, env)
    graph.output(out)
    for old, new in env.items():
        if old.name in passthrough:
            new.replace_all_uses_with(new.args[0])
    switched = GraphModule(program, graph)
    switched.graph.eliminate_dead_code()
    switched.recompile()
    return switched


class ProgramVariant(nn.Module):
    """One precision assignment of a converted program, callable like the model (evaluate_miou takes it)."""

    def __init__(self, program: GraphModule, passthrough: set[str]) -> None:
        super().__init__()
        self.program = switched_program(program, passthrough)

    def train(self, mode: bool = True) -> ProgramVariant:
        return self  # an exported program has no train mode to switch (evaluate_miou calls .eval())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.program(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class PrecisionPlanner:
    """The quantize/dequantize pairs of a converted program and the layer each tensor belongs to."""

    def __init__(self, program: GraphModule) -> None:
        self.program = program
        self.nodes = {n.name: n for n in program.graph.nodes}
        self.layer_of = {n.name: layer_name(n) for n in program.graph.nodes if layer_name(n) is not None}
        self.layers: list[str] = list(dict.fromkeys(self.layer_of.values()))
        self.tensor_q = [n for n in program.graph.nodes if n.op == "call_function" and n.target in Q_TENSOR]
        self.weight_q = [n for n in program.graph.nodes if n.op == "call_function" and n.target in Q_CHANNEL]
        self.quantized_layers = {self.layer_of[u.name] for q in self.weight_q for d in q.users for u in d.users
                                 if u.name in self.layer_of}

    def _owner(self, node: Node) -> tuple[str, str | None]:
        """What produced `node`'s value: ("layer", name), ("op", node name) or ("input", None)."""
        while True:
            if not isinstance(node, Node) or node.op in ("placeholder", "get_attr"):
                return "input", None
            if node.name in self.layer_of:
                return "layer", self.layer_of[node.name]
            if node.target in Q_TENSOR | DQ_TENSOR or node.target in FOLLOWERS:
                node = node.args[0]
                continue
            return "op", node.name

    def _int8(self, owner: tuple[str, str | None], float_layers: set[str], ops_int8: bool) -> bool:
        kind, name = owner
        if kind == "layer":
            return name not in float_layers
        return kind == "op" and ops_int8

    def _consumer_int8(self, user: Node, float_layers: set[str], ops_int8: bool) -> bool:
        if user.op == "output":
            return False
        if user.name in self.layer_of:
            return self.layer_of[user.name] not in float_layers
        if user.target in FOLLOWERS:
            return self._int8(self._owner(user), float_layers, ops_int8)
        return ops_int8

    def passthrough(self, float_layers: set[str], *, ops_int8: bool = True) -> set[str]:
        """Names of the quantize/dequantize nodes that a program with `float_layers` in float does not have."""
        off: set[str] = set()
        for q in self.tensor_q:
            consumers = [u for d in q.users for u in d.users]
            keep = self._int8(self._owner(q.args[0]), float_layers, ops_int8) or any(
                self._consumer_int8(u, float_layers, ops_int8) for u in consumers)
            if not keep:
                off.add(q.name)
                off.update(d.name for d in q.users)
        for q in self.weight_q:
            users = [u for d in q.users for u in d.users]
            if all(self.layer_of.get(u.name) in float_layers for u in users):
                off.add(q.name)
                off.update(d.name for d in q.users)
        return off

    def variant(self, float_layers: set[str], *, ops_int8: bool = True) -> ProgramVariant:
        return ProgramVariant(self.program, self.passthrough(set(float_layers), ops_int8=ops_int8))

    def alone_int8(self, layer: str) -> ProgramVariant:
        return self.variant(set(self.layers) - {layer}, ops_int8=False)

    def alone_float(self, layer: str) -> ProgramVariant:
        return self.variant({layer})


@dataclass
class LayerSensitivity:
    layer: str
    alone_int8_sqnr_db: float  # only this layer int8, the rest float: logits vs float
    alone_int8_agreement: float
    alone_float_sqnr_db: float  # only this layer float, the rest int8
    alone_float_agreement: float
    alone_int8_miou_drop: float | None = None  # points, val; top candidates only
    alone_float_miou_drop: float | None = None


@dataclass
class SensitivityReport:
    """Layers most sensitive first (alone-int8 SQNR ascending), with the full int8 program's figures."""

    layers: list[LayerSensitivity]
    full_int8_sqnr_db: float
    full_int8_agreement: float
    float_miou: float | None
    full_int8_miou_drop: float | None
    images: int
    val_images: int
    seconds: float
    notes: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Layer names in the table's order: what quantizing each alone costs, most first."""
        return [row.layer for row in self.layers]

    def recovery_order(self) -> list[str]:
        """Layer names by what keeping each alone in float recovers, most first: the order `keep_float: auto`
        tries them in (alone-float SQNR, highest first; ties by the isolated int8 cost)."""
        rows = sorted(self.layers, key=lambda r: (-r.alone_float_sqnr_db, r.alone_int8_sqnr_db))
        return [row.layer for row in rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranking": "alone_int8_sqnr_db ascending (most sensitive first)",
            "keep_float_auto_order": self.recovery_order(),
            "layers": [_finite(asdict(r)) for r in self.layers],
            "full_int8": _finite({"sqnr_db": self.full_int8_sqnr_db, "agreement": self.full_int8_agreement,
                                  "miou_drop": self.full_int8_miou_drop}),
            "float_miou": self.float_miou, "images": self.images, "val_images": self.val_images,
            "seconds": self.seconds, **self.notes,
        }

    def table(self, top: int | None = None) -> str:
        """The console table: rank, layer, alone-int8 and alone-float SQNR / agreement / mIoU drop."""
        rows = self.layers[:top] if top else self.layers
        width = max([len(r.layer) for r in rows] + [5])

        def drop(v: float | None) -> str:
            return f"{v:7.2f}" if v is not None else "      -"

        lines = [f"{'#':>3}  {'layer':<{width}}  {'int8 alone: SQNR dB  agree  drop':>33}   {'float alone: SQNR dB  agree  drop':>34}"]
        for i, r in enumerate(rows, 1):
            lines.append(f"{i:>3}  {r.layer:<{width}}  {_db(r.alone_int8_sqnr_db):>19} {r.alone_int8_agreement:6.4f} "
                         f"{drop(r.alone_int8_miou_drop)}"
                         f"   {_db(r.alone_float_sqnr_db):>20} {r.alone_float_agreement:6.4f} {drop(r.alone_float_miou_drop)}")
        full = drop(self.full_int8_miou_drop).strip()
        lines.append(f"full int8: {_db(self.full_int8_sqnr_db).strip()} dB, agreement {self.full_int8_agreement:.4f}, "
                     f"mIoU drop {full} points"
                     f"  ({self.images} calibration images; drops on {self.val_images} val images; {self.seconds:.0f} s)")
        return "\n".join(lines)


def _db(v: float) -> str:
    return f"{v:7.2f}" if math.isfinite(v) else "    inf"


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf: an exact match (no noise) is written as null with the SQNR key."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def converted_for_analysis(prepared: GraphModule) -> GraphModule:
    """convert_pt2e on a copy with the weight quantize ops kept (switchable), no clamp dropped."""
    return convert_pt2e(copy.deepcopy(prepared), fold_quantize=False)


@torch.no_grad()
def _compare(reference: torch.Tensor, module: nn.Module, images: torch.Tensor, batch: int = 16) -> tuple[float, float]:
    out = torch.cat([module(b) for b in images.split(batch)])
    return sqnr_db(reference, out), float((reference.argmax(1) == out.argmax(1)).float().mean())


def miou_drop(module: nn.Module, val: Dataset, float_miou: float, batch_size: int = 16) -> float:
    from ..metrics import evaluate_miou

    return 100 * (float_miou - evaluate_miou(module, val, torch.device("cpu"), batch_size))


def analyze(
    model: nn.Module,
    prepared: GraphModule,
    images: torch.Tensor,
    *,
    val: Dataset | None = None,
    float_miou: float | None = None,
    top: int = TOP_CANDIDATES,
    batch_size: int = 16,
    progress: bool = False,
) -> SensitivityReport:
    """Isolated sensitivity of every quantizable layer of a calibrated `prepared` program of `model`.

    SQNR and agreement are measured on `images` (calibration images) against the float model; with
    `val`, the val mIoU drop of the `top` most sensitive layers (both variants) and of full int8.
    """
    started = time.perf_counter()
    planner = PrecisionPlanner(converted_for_analysis(prepared))
    layers = [name for name in planner.layers if name in planner.quantized_layers]
    with torch.no_grad():
        reference = torch.cat([model.eval()(b) for b in images.split(batch_size)])
    full_sqnr, full_agree = _compare(reference, planner.variant(set()), images, batch_size)
    rows = []
    for name in progress_bar(layers, desc="sensitivity", unit="layer", disable=not progress, leave=False):
        s8, a8 = _compare(reference, planner.alone_int8(name), images, batch_size)
        sf, af = _compare(reference, planner.alone_float(name), images, batch_size)
        rows.append(LayerSensitivity(name, s8, a8, sf, af))
    rows.sort(key=lambda r: (r.alone_int8_sqnr_db, -r.alone_float_sqnr_db))
    full_drop = None
    if val is not None:
        from ..metrics import evaluate_miou

        if float_miou is None:
            float_miou = evaluate_miou(model, val, torch.device("cpu"), batch_size)
        full_drop = miou_drop(planner.variant(set()), val, float_miou, batch_size)
        for row in progress_bar(rows[:top], desc="sensitivity mIoU", unit="layer", disable=not progress, leave=False):
            row.alone_int8_miou_drop = miou_drop(planner.alone_int8(row.layer), val, float_miou, batch_size)
            row.alone_float_miou_drop = miou_drop(planner.alone_float(row.layer), val, float_miou, batch_size)
    return SensitivityReport(
        rows, full_sqnr, full_agree, float_miou, full_drop, images=len(images), val_images=len(val) if val is not None else 0,
        seconds=time.perf_counter() - started,
        notes={"layers_named_by": "module path of the weighted op (model.get_submodule(name))",
               "measured_on": "the calibrated PTQ program, quantize/dequantize pairs switched per variant (no recalibration)"},
    )


@dataclass
class FloatChoice:
    """The greedy result: layers kept in float, the estimated drop after each step, whether the target held."""

    layers: list[str]
    max_drop: float
    max_float_layers: int | None
    steps: list[dict[str, Any]]
    met: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_float_layers(
    planner_or_prepared: PrecisionPlanner | GraphModule,
    ranking: list[str],
    val: Dataset,
    float_miou: float,
    *,
    max_drop: float,
    max_float_layers: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> FloatChoice:
    """Keep the layers of `ranking` in float, most sensitive first, until the val mIoU drop (points)
    of the switched program is <= `max_drop` or `max_float_layers` are float."""
    planner = planner_or_prepared if isinstance(planner_or_prepared, PrecisionPlanner) else \
        PrecisionPlanner(converted_for_analysis(planner_or_prepared))
    chosen: list[str] = []
    drop = miou_drop(planner.variant(set()), val, float_miou, batch_size)
    steps = [{"float_layers": [], "miou_drop": drop}]
    cap = len(ranking) if max_float_layers is None else min(max_float_layers, len(ranking))
    bar = progress_bar(total=cap, desc="keep_float auto", unit="layer", disable=not progress, leave=False)
    while drop > max_drop and len(chosen) < cap:
        chosen.append(ranking[len(chosen)])
        drop = miou_drop(planner.variant(set(chosen)), val, float_miou, batch_size)
        steps.append({"float_layers": list(chosen), "miou_drop": drop})
        bar.update(1)
    bar.close()
    return FloatChoice(chosen, max_drop, max_float_layers, steps, met=drop <= max_drop)
