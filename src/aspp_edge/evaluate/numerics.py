"""Where an artifact drifts: every layer's output in the artifact's own runtime against the int8
program it came from and the float model, on the recipe's val images (`aspp-edge compare`).

A layer is a weighted op (conv, linear) named by module path, as `sensitivity` prints them. Its
*output point* is where the program quantizes what the layer produced: from the layer's node, over
the ops that only pass values on (BN, ReLU/ReLU6, dropout, Q/DQ pairs with one consumer), to the
last activation quantize reached. The same walk over the float model's exported graph (BN and
activation nodes, no Q/DQ) gives the float value there. The runtimes' own intermediate tensors:

- ExecuTorch: a debug copy of the `.pte`, lowered from the artifact's own program with XNNPACK's
  per-operator partitioner (every op its own delegate call, the same kernels) and its ETRecord,
  both cached beside the artifact (`<name>.pte.debug/`); one ETDump with the debug buffer per
  image holds every delegate call's output, and the Inspector maps each call back to the module
  that ran it: matched **by module path**. The debug copy's final output is checked against the
  shipped `.pte`'s (`debug_copy_max_diff`).
- LiteRT: the interpreter with its builtin kernels (no delegate) and every tensor preserved; its
  tensor names are litert-torch wrapper names that carry no module path, so a layer's tensor is
  the one with the layer's output quantization (scale, zero point) and shape, taken in graph
  order: matched **by quantization parameters and position**. The shipped XNNPACK-delegated run
  is the end-to-end figure beside it.
- Core ML: the MIL reference interpreter's values of every `quantize` op, matched the same way
  (the package's fp16 scales compared to 1e-3).
- Float artifacts (fp32 `.tflite`, fp16 Core ML, fp32 `.pte`) against the float model: their
  tensors hold no quantization parameters, so a layer's tensor is the unused one of the same shape
  closest to the float value: matched **by shape and value** (said in the table's notes).

Where an artifact leaves its program: the first layer, in graph order, whose SQNR against the
program lies more than `LEAVE_FALL_DB` (10 dB) below the lowest SQNR of every layer before it
*and* within `LEAVE_FALL_DB` of the program's own SQNR against the float model there. Two int8
implementations of one program round some requantized values differently (one step here and
there: the program rounds a float product half-to-even, kernels use fixed-point multipliers), and
the differences spread and grow layer by layer: on the default and quick models every artifact
starts 65-70 dB from its program at the first conv and falls 2-12 dB per layer over the first
few (measured with `compare`), to settle 8-12 dB above the program's own quantization error. A
fall of more than 10 dB at one layer is more than rounding adds; landing within 10 dB of the
program's error means the artifact's own difference is at least a tenth of the quantization
noise power (0.4 dB more error), a visible part of what int8 costs there. A changed weight or
quantization parameter falls by tens of dB, below the program's error. Float artifacts are
measured against the float model, with the fall alone.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.fx import GraphModule, Interpreter, Node

from ..errors import AsppEdgeError
from ..formats import backend_for, read_manifest
from ..metrics import logits_sqnr_db
from ..quantize.quantizers import SHARED_RANGE_TARGETS, layer_name
from ..quantize.sensitivity import DQ_TENSOR, FOLLOWERS, Q_TENSOR

LEAVE_FALL_DB = 10.0  # see the module docstring
DEFAULT_IMAGES = 8
# what a layer's output point walks over: ops that pass values on at the same shape (a resize or
# max-pool after a layer is a step of its own; the runtimes keep its input as a tensor of its own)
PASS_ON = FOLLOWERS - SHARED_RANGE_TARGETS - {torch.ops.aten.max_pool2d.default}


class CompareError(AsppEdgeError):
    """An artifact, program or checkpoint that cannot be compared layer by layer."""


# ----------------------------------------------------------------------------- the program's layer points

@dataclass
class Point:
    """One layer's output point: the program's node there and its quantization, the float model's node."""

    layer: str
    order: int
    program_node: str | None = None  # the activation quantize node at the layer's output
    float_node: str | None = None
    scale: float | None = None
    zero_point: int | None = None


def _numbered(name: str, seen: dict[str, int]) -> str:
    """A layer's key: its name the first time a module runs, `name#2` the second, and so on."""
    seen[name] = seen.get(name, 0) + 1
    return name if seen[name] == 1 else f"{name}#{seen[name]}"


def _layer_keys(gm: GraphModule) -> list[tuple[str, Node]]:
    """(layer key, node) of every weighted op in graph order."""
    seen: dict[str, int] = {}
    return [(_numbered(name, seen), node) for node in gm.graph.nodes if (name := layer_name(node)) is not None]


def _single_user(node: Node) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def program_points(program: GraphModule) -> dict[str, Point]:
    """Each quantized layer's output point in a converted Q/DQ program (a layer kept in float has none)."""
    points = {}
    for order, (key, node) in enumerate(_layer_keys(program)):
        n, q = node, None
        while (user := _single_user(n)) is not None or (q is None and n is node and n.users):
            if user is None:  # the layer's output feeds several ops: a quantize among them is its point
                q = next((u for u in n.users if u.target in Q_TENSOR), None)
                break
            if user.target in Q_TENSOR:
                q = user
                dq = _single_user(user)
                if dq is None or dq.target not in DQ_TENSOR:
                    break
                n = dq
            elif user.target in PASS_ON or user.target in DQ_TENSOR:
                n = user
            else:
                break
        if q is not None and isinstance(q.args[1], float):
            points[key] = Point(key, order, q.name, scale=float(q.args[1]), zero_point=int(q.args[2]))
    return points


def float_points(graph: GraphModule) -> dict[str, str]:
    """Layer key -> the float graph's node at its output point (the same walk, without Q/DQ)."""
    ends = {}
    for key, node in _layer_keys(graph):
        n = node
        while (user := _single_user(n)) is not None and user.target in PASS_ON:
            n = user
        ends[key] = n.name
    return ends


class _Recorder(Interpreter):
    def __init__(self, gm: GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names, self.values = names, {}

    def run_node(self, n: Node) -> Any:
        out = super().run_node(n)
        if n.name in self.names:
            self.values[n.name] = out.detach().float().numpy().copy()
        return out


def record(gm: GraphModule, images: torch.Tensor, names: set[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The named nodes' values (N, ...) on `images`, one image at a time, and the graph's output."""
    values: dict[str, list[np.ndarray]] = {n: [] for n in names}
    outputs = []
    with torch.no_grad():
        for i in range(images.shape[0]):
            rec = _Recorder(gm, names)
            out = rec.run(images[i : i + 1])
            out = out[0] if isinstance(out, (tuple, list)) else out
            outputs.append(out.float().numpy())
            for n in names:
                values[n].append(rec.values[n])
    return {n: np.concatenate(v) for n, v in values.items()}, np.concatenate(outputs)


# ----------------------------------------------------------------------------- the runtimes' tensors

@dataclass
class Tensor:
    """One intermediate tensor of an artifact's run: NCHW float values over the images."""

    index: int  # position in the runtime's execution order
    op: str
    values: np.ndarray
    scale: float | None = None
    zero_point: int | None = None
    layer: str | None = None  # set when the runtime itself names the module (ExecuTorch)


@dataclass
class Tapped:
    tensors: list[Tensor]
    output: np.ndarray  # the final logits (N, C, H, W) of the shipped artifact in its shipped runtime
    matched_by: str
    notes: list[str] = field(default_factory=list)
    debug_copy_max_diff: float | None = None  # ExecuTorch: the debug copy's output against the shipped .pte's
    scale_tolerance: float = 1e-5  # relative: how close a tensor's scale must be to the program's to match


def shipped_output(runner, inputs: list[np.ndarray]) -> np.ndarray:
    """The artifact's NCHW float logits in its shipped runtime, on inputs already in its own form."""
    return np.concatenate([runner._from_output(runner._run(x)) for x in inputs])  # noqa: SLF001


def _nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def tap_tflite(runner, inputs: list[np.ndarray]) -> Tapped:
    """Every op output of a `.tflite` under LiteRT's builtin kernels (all tensors preserved)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(runner.path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    details = {t["index"]: t for t in interp.get_tensor_details()}
    ops = [op for op in interp._get_ops_details() if op["op_name"] not in ("DELEGATE",)]  # noqa: SLF001
    (inp,) = interp.get_input_details()
    runs: list[dict[int, np.ndarray]] = []
    for x in inputs:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        runs.append({int(o): interp.get_tensor(int(o)).copy() for op in ops for o in op["outputs"] if int(o) >= 0})
    tensors = []
    for op in ops:
        for o in op["outputs"]:
            t = details[int(o)]
            scale, zp = t["quantization"]
            raw = np.concatenate([r[int(o)] for r in runs])
            quantized = raw.dtype in (np.int8, np.uint8) and scale > 0
            values = (raw.astype(np.float32) - zp) * scale if quantized else raw.astype(np.float32)
            tensors.append(Tensor(op["index"], op["op_name"], _nchw(values), scale if quantized else None,
                                  int(zp) if quantized else None))
    return Tapped(tensors, shipped_output(runner, inputs), "quantization parameters and position (builtin kernels)",
                  ["LiteRT tensors carry litert-torch wrapper names, not module paths"])


def tap_coreml(runner, inputs: list[np.ndarray]) -> Tapped:
    """The MIL reference interpreter's value of every op of a Core ML package."""
    from ..runtime.coreml import CoreMLRunner

    if not isinstance(runner, CoreMLRunner) or not runner.reference:
        from ..runtime.mil import MILProgram

        program = MILProgram(runner.path)
    else:
        program = runner.program
    envs = [program.run({runner.input_spec["name"]: x}, keep=True) for x in inputs]
    tensors = []
    for index, (op_type, _, args, outputs) in enumerate(program.ops):
        name = outputs[0][0]
        values = np.concatenate([e[name] for e in envs])
        if values.ndim != 4 or not np.issubdtype(values.dtype, np.number):
            continue
        if op_type == "quantize":
            scale, zp = (args.get(k, [0])[0] for k in ("scale", "zero_point"))  # no zero_point: symmetric
            scale, zp = (np.asarray(program.constants[v] if isinstance(v, str) else v) for v in (scale, zp))
            if scale.size != 1:
                continue  # a per-channel quantize is not an activation
            scale, zp = float(scale), int(zp)
            shift = 128 if values.dtype == np.uint8 else 0  # Core ML keeps post-ReLU tensors in uint8
            tensors.append(Tensor(index, op_type, (values.astype(np.float32) - zp) * scale, scale, zp - shift))
        elif op_type != "dequantize":
            tensors.append(Tensor(index, op_type, values.astype(np.float32)))
    outputs = np.concatenate([e[runner.output_spec["name"]] for e in envs]).astype(np.float32)
    return Tapped(tensors, outputs, "quantization parameters and position (MIL reference interpreter)",
                  ["Core ML values from the MIL reference interpreter (Apple's kernels run on macOS only)"],
                  scale_tolerance=1e-3)  # the package stores its scales in fp16


def tap_executorch(runner, inputs: list[np.ndarray], module: torch.nn.Module, points: dict[str, Point], *,
                   precision: str, debug_dir: Path | None = None) -> Tapped:
    """Every delegate call's output in the per-operator debug copy of a `.pte` (ETDump + ETRecord).
    `module`: what the `.pte` was lowered from (its own int8 program, or the float model)."""
    from executorch.devtools import Inspector, parse_etrecord
    from executorch.extension.pybindings import portable_lib

    from ..export.executorch import debug_copy

    folder = (debug_dir or runner.path.parent) / f"{runner.path.name}.debug"
    pte, etrecord = debug_copy(module, torch.from_numpy(inputs[0]), folder, source=runner.path, precision=precision)
    shipped = shipped_output(runner, inputs)
    chunks: dict[tuple[str | None, int], list[np.ndarray]] = {}
    record = parse_etrecord(str(etrecord))  # once: each Inspector would parse it again (about a second each)
    debug_out, layer_of, buffer_bytes = [], weight_handles(record), debug_buffer_bytes(record)
    with tempfile.TemporaryDirectory() as tmp:
        for x in inputs:
            loaded = portable_lib._load_for_executorch(str(pte), enable_etdump=True, debug_buffer_size=buffer_bytes)  # noqa: SLF001
            debug_out.append(loaded.run_method("forward", [torch.from_numpy(x)])[0].numpy())
            dump, buffer = Path(tmp) / "run.etdump", Path(tmp) / "debug.bin"
            loaded.write_etdump_result_to_file(str(dump), str(buffer))
            inspector = Inspector(etdump_path=str(dump), etrecord=record, debug_buffer_path=str(buffer))
            calls = [e for b in inspector.event_blocks for e in b.events if e.name == "DELEGATE_CALL" and e.debug_data]
            seen: dict[str, int] = {}
            for index, event in enumerate(calls):
                name = next((layer_of[h] for h in event.debug_handles or () if h in layer_of), None)
                name = _numbered(name, seen) if name is not None else None
                chunks.setdefault((name, index), []).append(event.debug_data[-1].numpy())
    tensors = []
    for (key, index), parts in chunks.items():
        raw, point = np.concatenate(parts), points.get(key)
        if raw.dtype == np.int8 and point is not None and point.scale is not None:
            values = (raw.astype(np.float32) - point.zero_point) * point.scale
            tensors.append(Tensor(index, "delegate_call", values, point.scale, point.zero_point, layer=key))
        elif raw.dtype != np.int8 and raw.ndim == 4:
            tensors.append(Tensor(index, "delegate_call", raw.astype(np.float32), layer=key if precision == "int8" else None))
    gap = float(np.abs(np.concatenate(debug_out) - shipped).max())
    notes = [f"per-operator debug copy {pte.parent.name}/{pte.name} (ETRecord {etrecord.name}); its output differs from the "
             f"shipped .pte's by at most {gap:.3g}"]
    by = "module path (ETRecord)" if precision == "int8" else "shape and value (per-operator debug copy)"
    return Tapped(tensors, shipped, by, notes, debug_copy_max_diff=gap)


def debug_buffer_bytes(etrecord) -> int:
    """The ETDump debug buffer for one run of a debug copy: twice the bytes of every op's output in
    its edge program (each call's output is one of them) plus 1 MiB. The buffer is written to disk and
    read back whole on every run, so a fixed 256 MiB cost about a second per image at 96x96, where
    this is about 33 MiB."""
    total = 0
    for node in etrecord.edge_dialect_program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "call_function" and isinstance(val, torch.Tensor):
            total += val.numel() * val.element_size() + 64  # each entry is aligned
    return 2 * total + (1 << 20)


def weight_handles(etrecord) -> dict[int, str]:
    """Debug handle of each weight dequantize in the (parsed) ETRecord's edge program -> the module path
    of the conv or linear that reads it. A weight belongs to one layer's delegate call, while a call's
    other handles (its input and output Q/DQ) are shared with the ops around it, so this names the call."""
    graph = etrecord.edge_dialect_program.graph_module.graph
    out = {}
    for node in graph.nodes:
        handle = node.meta.get("debug_handle")
        if "dequantize_per_channel" not in str(node.target) or not isinstance(handle, int):
            continue
        for user in node.users:
            stack = user.meta.get("nn_module_stack")
            if stack and any(k in str(user.target) for k in ("convolution", "linear", "addmm")):
                out[handle] = list(stack.values())[-1][0].removeprefix("L['self'].")
    return out


# ----------------------------------------------------------------------------- matching and measuring

def _same_q(t: Tensor, p: Point, rel: float) -> bool:
    return (t.scale is not None and p.scale is not None and t.zero_point == p.zero_point
            and abs(t.scale - p.scale) <= rel * p.scale)


def match(tapped: Tapped, points: dict[str, Point], targets: dict[str, np.ndarray], *, by_value: bool) -> dict[str, Tensor]:
    """Layer key -> the runtime tensor at its output point. ExecuTorch's tensors name their layer; a
    quantized run's are matched by (scale, zero point, shape) in graph order, each tensor once; a
    float run's by shape and the closest value (`targets`: the value each layer should hold)."""
    named = {t.layer: t for t in tapped.tensors if t.layer is not None}
    if named:
        return {k: named[k] for k in points if k in named}
    used: set[int] = set()
    out = {}
    for key, point in sorted(points.items(), key=lambda kv: kv[1].order):
        want = targets[key].shape
        cands = [i for i, t in enumerate(tapped.tensors) if i not in used and t.values.shape == want]
        if by_value:
            cands = sorted(cands, key=lambda i: -logits_sqnr_db(tapped.tensors[i].values, targets[key]))
        else:
            cands = [i for i in cands if _same_q(tapped.tensors[i], point, tapped.scale_tolerance)]
        if cands:
            used.add(cands[0])
            out[key] = tapped.tensors[cands[0]]
    return out


@dataclass
class Comparison:
    """One artifact against its program and the float model, layer by layer."""

    artifact: str
    runtime: str
    precision: str
    matched_by: str
    rows: list[dict[str, Any]]  # graph order: layer, sqnr_vs_program, sqnr_vs_float, program_sqnr_vs_float, max_steps
    leaves_at: str | None
    worst: dict[str, Any] | None
    output_sqnr_vs_program: float
    output_sqnr_vs_float: float
    notes: list[str]
    unmatched: list[str]
    debug_copy_max_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def measure_layers(tapped: Tapped, points: dict[str, Point], program_vals: dict[str, np.ndarray] | None,
                   float_vals: dict[str, np.ndarray], *, quantized: bool) -> tuple[list[dict[str, Any]], str | None, list[str]]:
    """Rows in graph order, the layer where the artifact leaves its program, and the layers not found."""
    targets = program_vals if program_vals is not None else float_vals
    found = match(tapped, points, targets, by_value=not quantized)
    rows, leaves, lowest = [], None, math.inf
    for key, point in sorted(points.items(), key=lambda kv: kv[1].order):
        t = found.get(key)
        if t is None or t.values.shape != targets[key].shape:
            continue
        row: dict[str, Any] = {"layer": key, "runtime_op": t.op, "sqnr_vs_float": logits_sqnr_db(t.values, float_vals[key])}
        if program_vals is not None:
            prog = program_vals[key]
            row["sqnr_vs_program"] = logits_sqnr_db(t.values, prog)
            row["program_sqnr_vs_float"] = logits_sqnr_db(prog, float_vals[key])
            row["max_steps"] = round(float(np.abs(t.values - prog).max() / point.scale), 2) if point.scale else None
        else:
            row["sqnr_vs_program"] = row["sqnr_vs_float"]
            row["program_sqnr_vs_float"] = math.inf
            row["max_steps"] = None
        row["fall_db"] = max(0.0, lowest - row["sqnr_vs_program"]) if math.isfinite(lowest) else 0.0
        near = row["sqnr_vs_program"] < row["program_sqnr_vs_float"] + LEAVE_FALL_DB
        if row["fall_db"] > LEAVE_FALL_DB and near and leaves is None:
            leaves = key
        lowest = min(lowest, row["sqnr_vs_program"])
        rows.append(row)
    unmatched = [k for k in sorted(points, key=lambda k: points[k].order) if k not in {r["layer"] for r in rows}]
    return rows, leaves, unmatched


# ----------------------------------------------------------------------------- compare()

def find_program(artifact: Path, given: str | Path | None = None) -> Path:
    """The int8 program an artifact was made from: `given`, or its manifest's `quantized_program` in
    the artifact's folder, `../quant/` or `./quant/`."""
    if given is not None:
        if not Path(given).is_file():
            raise CompareError(f"int8 program {str(given)!r} not found")
        return Path(given)
    name = read_manifest(artifact)["source"].get("quantized_program")
    if not name:
        raise CompareError(f"{artifact.name} names no int8 program in its manifest (a float artifact): "
                           "it is compared with the float model; pass --program X_int8.pt2 only for int8 artifacts")
    candidates = [artifact.parent / name, artifact.parent.parent / "quant" / name, artifact.parent / "quant" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise CompareError(f"int8 program {name!r} of {artifact.name} not found: pass --program; looked at "
                       + ", ".join(str(c) for c in candidates))


def val_images(recipe, count: int) -> torch.Tensor:
    """The first `count` val images of the recipe's data (normalized, not augmented)."""
    from ..data import build_dataset

    if count < 1:
        raise CompareError(f"--images must be at least 1; got {count}")
    val = build_dataset(recipe, "val", augment=False)
    count = min(count, len(val))
    return torch.stack([val[i][0] for i in range(count)])


class _References:
    """The float model's and each program's layer values on the images, computed once per source."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor) -> None:
        from ..quantize.ptq import export_dynamic_batch

        self.images, self.model = images, model
        graph = export_dynamic_batch(model.eval(), images[:1]).module()
        self.float_nodes = float_points(graph)
        vals, self.float_output = record(graph, images, set(self.float_nodes.values()))
        self.float_vals = {k: vals[n] for k, n in self.float_nodes.items()}
        self.programs: dict[str, tuple[GraphModule, dict[str, Point], dict[str, np.ndarray], np.ndarray]] = {}

    def program(self, path: Path):
        from ..quantize import load_quantized

        key = str(path.resolve())
        if key not in self.programs:
            gm = load_quantized(path)
            points = program_points(gm)
            missing = sorted(set(points) - set(self.float_nodes))
            if missing or not points:
                raise CompareError(
                    f"int8 program {str(path)!r} is not a program of this float model: "
                    + (f"its layers {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} are not the model's"
                       if missing else "it has no quantized layer"))
            try:
                vals, out = record(gm, self.images, {p.program_node for p in points.values()})
            except Exception as exc:
                raise CompareError(f"int8 program {str(path)!r} does not run on this model's images: {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:200]}") from exc
            for k, p in points.items():
                q = vals[p.program_node]
                vals[p.program_node] = ((q.astype(np.float32) - p.zero_point) * p.scale).astype(np.float32)
                if vals[p.program_node].shape != self.float_vals[k].shape:
                    raise CompareError(f"int8 program {str(path)!r} is not a program of this float model: layer {k} "
                                       f"outputs {vals[p.program_node].shape[1:]}, the model's {self.float_vals[k].shape[1:]}")
            self.programs[key] = (gm, points, {k: vals[p.program_node] for k, p in points.items()}, out)
        return self.programs[key]


def compare(artifacts: list[str | Path], *, program: str | Path | None = None, checkpoint: str | Path | None = None,
            recipe=None, images: int = DEFAULT_IMAGES, progress: bool = True, debug_dir: str | Path | None = None) -> list[Comparison]:
    """Each artifact's layers against its int8 program (int8 artifacts) and the float model, on val images.
    A `.pte`'s per-operator debug copy is kept in `<debug_dir or the artifact's folder>/<name>.pte.debug/`."""
    from .. import runtime
    from ..checkpoint import load_model
    from ..console import progress_bar
    from ..quantize import load_quantized
    from .artifacts import find_reference

    paths = [runtime.check_artifact(p) for p in artifacts]
    for p in paths:
        read_manifest(p)  # an artifact without a manifest: one line, before anything runs
    refs: dict[Path, _References] = {}
    results = []
    for path in progress_bar(paths, desc="compare", disable=not progress):
        ckpt = find_reference(path, checkpoint)
        if ckpt not in refs:
            model, ckpt_recipe, _ = load_model(ckpt, recipe)
            refs[ckpt] = _References(model, val_images(ckpt_recipe, images))
        ref = refs[ckpt]
        manifest = read_manifest(path)
        quantized = manifest["precision"] == "int8"
        if quantized:
            gm, points, program_vals, program_out = ref.program(find_program(path, program))
        else:
            gm, program_vals, program_out = None, None, ref.float_output
            points = {k: Point(k, i) for i, k in enumerate(ref.float_nodes)}
        runner = runtime.load(path, threads=1)
        inputs = [runner._to_input(ref.images[i : i + 1].numpy()) for i in range(ref.images.shape[0])]  # noqa: SLF001
        backend = backend_for(path).name
        if backend == "executorch":
            own = _own_program(path, program)
            if not quantized:
                module = ref.model
            elif str(own.resolve()) in ref.programs:  # the program just measured (loading one takes seconds)
                module = ref.programs[str(own.resolve())][0]
            else:
                module = load_quantized(own)
            tapped = tap_executorch(runner, inputs, module, points if quantized else {}, precision=manifest["precision"],
                                    debug_dir=Path(debug_dir) if debug_dir else None)
        elif backend == "tflite":
            tapped = tap_tflite(runner, inputs)
        elif backend == "coreml":
            tapped = tap_coreml(runner, inputs)
        else:
            raise CompareError(f"{path.name}: per-layer comparison reads executorch, tflite and coreml artifacts; "
                               f"{backend!r} has no reader of its intermediate tensors")
        if not quantized and backend != "executorch":
            tapped.matched_by = f"shape and value ({tapped.matched_by.split('(', 1)[-1]}"  # a float run has no qparams
        rows, leaves, unmatched = measure_layers(tapped, points, program_vals, ref.float_vals, quantized=quantized)
        worst = min(rows, key=lambda r: r["sqnr_vs_program"]) if rows else None
        results.append(Comparison(
            artifact=str(path), runtime=runner.evaluated_by, precision=manifest["precision"], matched_by=tapped.matched_by,
            rows=rows, leaves_at=leaves, worst=worst, output_sqnr_vs_program=logits_sqnr_db(tapped.output, program_out),
            output_sqnr_vs_float=logits_sqnr_db(tapped.output, ref.float_output), notes=tapped.notes, unmatched=unmatched,
            debug_copy_max_diff=tapped.debug_copy_max_diff))
    return results


def _own_program(artifact: Path, given: str | Path | None) -> Path | None:
    """The program an int8 `.pte` was lowered from (its manifest's), else the one given; None for float."""
    if read_manifest(artifact)["precision"] != "int8":
        return None
    try:
        return find_program(artifact)
    except CompareError:
        if given is None:
            raise
        return Path(given)


# ----------------------------------------------------------------------------- rendering

def _db(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if x == math.inf else f"{x:.1f}"


def table(results: list[Comparison], *, top: int | None = None) -> str:
    """One markdown table, worst first: a row per layer, a column pair per artifact."""
    if not results:
        return ""
    labels = [Path(r.artifact).name for r in results]
    layers: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(results):
        for row in r.rows:
            layers.setdefault(row["layer"], {})[i] = row
    worst = sorted(layers, key=lambda k: min(layers[k][i]["sqnr_vs_program"] for i in layers[k]))
    head = "| layer | int8 program vs float dB | " + " | ".join(f"{lab}: vs program dB / vs float dB / max steps" for lab in labels) + " |"
    lines = [head, "|" + "---|" * (2 + len(labels))]
    for key in worst[:top] if top else worst:
        cells = []
        prog = next((layers[key][i]["program_sqnr_vs_float"] for i in layers[key]), None)
        for i in range(len(results)):
            row = layers[key].get(i)
            if row is None:
                cells.append("-")
                continue
            steps = "-" if row["max_steps"] is None else f"{row['max_steps']:.0f}"
            mark = " **leaves**" if results[i].leaves_at == key else ""
            cells.append(f"{_db(row['sqnr_vs_program'])} / {_db(row['sqnr_vs_float'])} / {steps}{mark}")
        lines.append(f"| {key} | {_db(prog if prog != math.inf else None)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_lines(results: list[Comparison]) -> list[str]:
    out = []
    for r in results:
        worst = r.worst
        where = f"leaves its program at {r.leaves_at}" if r.leaves_at else "never leaves its program"
        w = f"worst layer {worst['layer']} ({_db(worst['sqnr_vs_program'])} dB)" if worst else "no layer matched"
        out.append(f"{Path(r.artifact).name} ({r.runtime}; matched by {r.matched_by}): {w}; {where}; output "
                   f"{_db(r.output_sqnr_vs_program)} dB vs program, {_db(r.output_sqnr_vs_float)} dB vs float"
                   + (f"; {len(r.unmatched)} layer(s) not found: {', '.join(r.unmatched[:3])}" if r.unmatched else ""))
    return out


def write_json(results: list[Comparison], path: str | Path) -> None:
    """Every artifact's rows, with what made them (`report.provenance`: command, code, date, machine, versions)."""
    from ..fileio import write_text_atomic
    from .report import provenance

    write_text_atomic(path, json.dumps({"provenance": provenance(), "leave_fall_db": LEAVE_FALL_DB,
                                        "artifacts": [r.to_dict() for r in results]}, indent=1))
