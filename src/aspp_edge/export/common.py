"""What every backend's writer shares: the program forms it lowers, and the manifest's I/O sections."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..formats.manifest import normalization

if TYPE_CHECKING:
    from . import ExportSource

INPUT_NAME, OUTPUT_NAME = "image", "logits"  # every artifact's I/O names (TFLite tensors and signature, Core ML features)


@dataclass
class Written:
    """What a backend's `write` reports about the file it wrote: backend facts and the I/O specs."""

    info: dict[str, Any]
    input_spec: dict[str, Any]
    output_spec: dict[str, Any]


def folded(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The Q/DQ program with its weight quantize ops folded into int8 constants (what XNNPACK and
    coremltools lower)."""
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint

    out = copy.deepcopy(program)
    constant_fold(out, _quant_node_constraint)
    return out


@contextlib.contextmanager
def shared_provenance() -> Iterator[None]:
    """Lower with node provenance shared, not deep-copied: every FX pass of a lowering (ExecuTorch's
    XNNPACK passes, litert-torch's, coremltools') builds a `torch.fx.traceback.NodeSource` per node
    it rewrites, which deep-copies that node's whole `from_node` history; the history grows with
    every pass, so the copies alone took 10 of the 34 s of XNNPACK-lowering the quick int8 program
    (cProfile). The records are never changed after they are made, so new ones here point at the old
    history (a new list of the same records) instead of copying it. Written artifacts are the same
    bytes (tests/test_export.py checks a .pte both ways)."""
    from torch.fx import traceback as fx_traceback

    original = fx_traceback.NodeSource.__init__

    def init(self, node, pass_name: str = "", action=None) -> None:
        history = node.meta.get("from_node") if node is not None else None
        if history is None:
            original(self, node, pass_name, action)
            return
        node.meta["from_node"] = []  # nothing for the original to copy
        try:
            original(self, node, pass_name, action)
        finally:
            node.meta["from_node"] = history
        self.from_node = list(history)

    fx_traceback.NodeSource.__init__ = init
    try:
        yield
    finally:
        fx_traceback.NodeSource.__init__ = original


def io_specs(source: ExportSource, layout: str, *, kind: str = "tensor", quant_in=None, quant_out=None,
             in_dtype: str = "float32", out_dtype: str = "float32", applied_by: str = "app", norm: dict | None = None) -> tuple[dict, dict]:
    """The manifest's `input` and `output` sections."""
    size, n = source.recipe.data.resolution, source.recipe.num_classes
    shape_in = [1, 3, size, size] if layout == "NCHW" else [1, size, size, 3]
    shape_out = [1, n, size, size] if layout == "NCHW" else [1, size, size, n]
    return (
        {"name": INPUT_NAME, "kind": kind, "shape": shape_in, "layout": layout, "dtype": in_dtype, "color_order": "RGB",
         "normalization": {**(norm or normalization(source.recipe)), "applied_by": applied_by}, "quantization": quant_in},
        {"name": OUTPUT_NAME, "shape": shape_out, "layout": layout, "dtype": out_dtype, "semantics": "logits", "quantization": quant_out},
    )
