"""Parameter and MAC counts, measured by torch's FlopCounterMode (conv/matmul FLOPs / 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .segmenter import Segmenter


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, as counted by torch (one MAC = two FLOPs)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int
    head_params: int | None  # None for a brought model (no head of ours to count apart)
    head_macs: int | None


def model_stats(model: nn.Module, size: int | tuple[int, int] | None = None) -> ModelStats:
    """Counts for the whole model and for its head alone, at `size` (default: the model's input size).
    A brought model (any module with `input_size`) is counted whole."""
    hw = model.input_size if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    x = torch.zeros(1, 3, *hw)
    if not isinstance(model, Segmenter):
        return ModelStats(params=count_params(model), macs=count_macs(model, x), head_params=None, head_macs=None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.backbone(x)["out"]
    finally:
        model.train(was_training)
    return ModelStats(
        params=count_params(model),
        macs=count_macs(model, x),
        head_params=count_params(model.head),
        head_macs=count_macs(model.head, features),
    )
