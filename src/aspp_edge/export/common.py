"""What every backend's writer shares: the program forms it lowers, and the manifest's I/O sections."""

from __future__ import annotations

import copy
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
