"""ExecuTorch `.pte` with the XNNPACK delegate (fp32, and int8 from the shared Q/DQ program)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..errors import AsppEdgeError
from ..formats.files import check_pte
from .common import Written, folded, io_specs

CALL_DELEGATE = "executorch_call_delegate"


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return name.removeprefix("aten.")


def conv_macs(node: torch.fx.Node) -> int:
    """Multiply-accumulates of a convolution node (0 for anything else)."""
    target = str(node.target)
    if node.op != "call_function" or not ("convolution" in target or "conv2d" in target):  # Core ML keeps aten.conv2d whole
        return 0
    out, weight = node.meta.get("val"), node.args[1].meta.get("val") if isinstance(node.args[1], torch.fx.Node) else None
    if out is None or weight is None:
        return 0
    return int(out.numel()) * int(torch.Size(weight.shape[1:]).numel())


def _graph_counts(gm: torch.fx.GraphModule) -> tuple[Counter, int]:
    ops, macs = Counter(), 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and _op_name(node) != "getitem":
            ops[_op_name(node)] += 1
            macs += conv_macs(node)
    return ops, macs


def delegation(program: torch.export.ExportedProgram, delegate: str = "XnnpackBackend") -> dict[str, Any]:
    """How much of a lowered edge program the delegate runs: nodes and conv MACs, delegated vs not."""
    gm = program.graph_module
    delegated_ops, delegated_macs, outside_ops, outside_macs, partitions = Counter(), 0, Counter(), 0, 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or _op_name(node) == "getitem":
            continue
        if _op_name(node) == CALL_DELEGATE:
            partitions += 1
            lowered = getattr(gm, node.args[0].target)
            ops, macs = _graph_counts(lowered.original_module.graph_module)
            delegated_ops += ops
            delegated_macs += macs
        else:
            outside_ops[_op_name(node)] += 1
            outside_macs += conv_macs(node)
    n_in, n_out = sum(delegated_ops.values()), sum(outside_ops.values())
    total_macs = delegated_macs + outside_macs
    return {
        "delegate": delegate,
        "partitions": partitions,
        "nodes_delegated": n_in,
        "nodes_total": n_in + n_out,
        "node_fraction": n_in / max(1, n_in + n_out),
        "conv_macs_delegated": delegated_macs,
        "conv_macs_total": total_macs,
        # None when no conv MACs were counted (a graph without convs, or convs whose shapes were not
        # recorded): the fraction is unknown, not complete
        "conv_mac_fraction": delegated_macs / total_macs if total_macs else None,
        "undelegated_ops": dict(sorted(outside_ops.items())),
    }


def to_pte(module: torch.nn.Module, example: torch.Tensor, partitioner=None, delegate: str = "XnnpackBackend",
           inspect_edge=None) -> tuple[bytes, dict[str, Any]]:
    """Lower `module` (float, or int8 with weights folded) through a partitioner (default XNNPACK's);
    (.pte bytes, delegation). `inspect_edge(edge_program) -> dict` adds its facts to the delegation."""
    from executorch.exir import to_edge_transform_and_lower

    if partitioner is None:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioner = XnnpackPartitioner()
    program = torch.export.export(module, (example,))
    edge = to_edge_transform_and_lower(program, partitioner=[partitioner])
    info = delegation(edge.exported_program(), delegate)
    if inspect_edge is not None:
        info.update(inspect_edge(edge.exported_program()))
    return edge.to_executorch().buffer, info


DEBUG_PTE, DEBUG_ETRECORD, DEBUG_SOURCE = "debug.pte", "debug.etrecord", "source.json"


def debug_copy(module: torch.nn.Module, example: torch.Tensor, folder: Path, *, source: Path,
               precision: str = "int8") -> tuple[Path, Path]:
    """The per-operator debug copy of a `.pte`: the same program (the int8 one folded, as `write`
    lowers it) through XNNPACK's partitioner in per-operator mode, so every op is its own delegate
    call (the same kernels) whose output ETDump's debug buffer records, and its ETRecord (the map
    from each call back to the graph and the module that ran it). Written to `folder` once per
    shipped `source` file (its sha256 is recorded) and reused while it matches; returns the two paths."""
    import json

    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ..fileio import atomic_path, sha256_file, write_text_atomic
    from .common import shared_provenance

    pte, etrecord, stamp = folder / DEBUG_PTE, folder / DEBUG_ETRECORD, folder / DEBUG_SOURCE
    want = {"source": source.name, "sha256": sha256_file(source)}
    if pte.is_file() and etrecord.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want:
        return pte, etrecord
    folder.mkdir(parents=True, exist_ok=True)
    with shared_provenance():
        program = torch.export.export(folded(module) if precision == "int8" else module, (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner(per_op_mode=True)],
                                              generate_etrecord=True).to_executorch()
    with atomic_path(pte) as tmp:
        tmp.write_bytes(lowered.buffer)
    with atomic_path(etrecord) as tmp:
        lowered.get_etrecord().save(str(tmp))
    write_text_atomic(stamp, json.dumps(want))
    return pte, etrecord


def read_pte(path: str | Path):
    """The deserialized program of a .pte file, or an error naming the file and the format."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    check_pte(path)
    data = Path(path).read_bytes()
    try:
        return deserialize_pte_binary(data).program
    except Exception as exc:
        raise AsppEdgeError(f"{str(path)!r} is a truncated or corrupt ExecuTorch program (.pte): {type(exc).__name__}") from exc


def pte_summary(path: str | Path) -> dict[str, Any]:
    """Operators left outside any delegate, delegate partitions, and the I/O shapes, from the file."""
    plan = read_pte(path).execution_plan[0]

    def shape(i: int) -> list[int]:
        return list(plan.values[i].val.sizes)

    kernels = Counter()
    for chain in plan.chains:
        for ins in chain.instructions:
            args = ins.instr_args
            if type(args).__name__ == "KernelCall":
                kernels[plan.operators[args.op_index].name] += 1
    return {
        "delegates": dict(Counter(d.id for d in plan.delegates)),
        "non_delegated_ops": dict(sorted(kernels.items())),
        "inputs": [shape(i) for i in plan.inputs],
        "outputs": [shape(i) for i in plan.outputs],
    }



def graph_facts(path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """A latency row's graph facts: the delegated share of nodes and conv MACs, partitions and the
    ops left outside, as recorded in the manifest at export."""
    return {k: info.get(k) for k in ("node_fraction", "conv_mac_fraction", "partitions", "undelegated_ops")}


def graph_line(facts: dict[str, Any]) -> str:
    frac = facts.get("node_fraction")
    return f"{100 * frac:.0f}% of nodes in XNNPACK" if frac is not None else "-"

def write(module: torch.nn.Module, source, precision: str, tmp: Path, *, layout: str, io_dtype: str) -> Written:
    """The XNNPACK-delegated `.pte` of a float module or the int8 program (weights folded) at `tmp`."""
    data, info = to_pte(folded(module) if precision == "int8" else module, source.example)
    if precision == "int8":
        from ..quantize.islands import float_islands

        info["float_islands"] = float_islands(module, "executorch")
    tmp.write_bytes(data)
    return Written(info, *io_specs(source, "NCHW"))
