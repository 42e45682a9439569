"""Calibrated post-training quantization: export -> prepare_pt2e -> calibrate (convert is the caller's)."""

from __future__ import annotations

import copy

import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

from ..calibration.calibrate import calibrate
from ..config import PTQConfig
from .quantizers import build_quantizer, check_layer_names
from .rewrites import integer_friendly

MAX_BATCH = 1024


def export_dynamic_batch(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export with a dynamic batch dimension (an exported program otherwise asserts its batch size)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = example[:1].expand(2, *example.shape[1:]).contiguous()  # batch 1 would specialise the dim
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def ptq(model: torch.nn.Module, config: PTQConfig, batches: list[torch.Tensor], *, progress: bool = False,
        float_layers: tuple[str, ...] | list[str] | None = None) -> GraphModule:
    """The calibrated, prepared (observed) program of `model` under the shared int8 scheme.

    `float_layers` (default: the config's `keep_float` list) stay out of the annotation (mixed precision);
    an unknown name is a ConfigError that lists the model's layers."""
    model = copy.deepcopy(model).eval()
    if config.cle:
        from ..calibration.equalize import equalize

        model = equalize(model)
    gm = export_dynamic_batch(model, batches[0]).module()
    integer_friendly(gm)
    float_nodes = check_layer_names(gm, config.float_layers if float_layers is None else float_layers)
    quantizer = build_quantizer(observer=config.observer, per_channel=config.per_channel, percentile=config.percentile,
                                float_nodes=float_nodes)
    prepared = prepare_pt2e(gm, quantizer)
    calibrate(prepared, batches, progress=progress)
    return prepared
