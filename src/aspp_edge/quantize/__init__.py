"""Quantization in torchao's shape: `quantize(model, config) -> QuantizedModel`.

Always the PT2E order: export -> prepare_pt2e / prepare_qat_pt2e -> calibrate / train ->
convert_pt2e. The *prepared* program is what is shared: each backend converts its own copy
(`QuantizedModel.convert(fold_quantize=...)`), so all artifacts carry the same learned qparams.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule
from torch.utils.data import Dataset
from torchao.quantization.pt2e import allow_exported_model_train_eval
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from ..config import PTQConfig, QATConfig
from ..calibration.report import QUANTIZE_PER_TENSOR
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path
from .ptq import export_dynamic_batch, ptq
from .qat import qat
from .quantizers import build_quantizer
from .rewrites import drop_saturated_clamps

__all__ = ["PTQConfig", "QATConfig", "QuantizedModel", "build_quantizer", "load_quantized", "quantize"]

@dataclass
class QuantizedModel:
    """A calibrated or QAT-trained prepared program and what it was made with."""

    prepared: GraphModule
    config: PTQConfig | QATConfig
    example: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.config.method

    def convert(self, *, fold_quantize: bool = True) -> GraphModule:
        """convert_pt2e on a copy: `fold_quantize=True` for ExecuTorch/XNNPACK, False for litert-torch."""
        converted = convert_pt2e(copy.deepcopy(self.prepared), fold_quantize=fold_quantize)
        drop_saturated_clamps(converted)
        return allow_exported_model_train_eval(converted)

    def qparams(self) -> list[dict[str, Any]]:
        """Activation qparams of the converted program: one entry per quantize node."""
        return activation_qparams(self.convert(fold_quantize=False))

    def save(self, out_dir: str | Path, name: str, reports: dict[str, Any] | None = None) -> Path:
        """Write `<name>_int8.pt2` (the converted Q/DQ program, weights not folded, so each backend
        can fold or not), `<name>_int8.json` (config, qparams, meta) and `<name>_int8.<key>.json`
        for each extra report. All files are written to temporary names and renamed together at the end.
        """
        out = Path(out_dir)
        converted = self.convert(fold_quantize=False)
        program = export_dynamic_batch(converted, self.example)
        summary = {
            "method": self.method, "config": self.config.to_dict(), "input_shape": list(self.example.shape[1:]),
            "qparams": activation_qparams(converted), **self.meta,
        }
        texts = {f"{name}_int8.json": summary, **{f"{name}_int8.{k}.json": v for k, v in (reports or {}).items()}}
        pt2 = out / f"{name}_int8.pt2"
        with contextlib.ExitStack() as stack:
            torch.export.save(program, stack.enter_context(atomic_path(pt2)))
            for filename, payload in texts.items():
                stack.enter_context(atomic_path(out / filename)).write_text(json.dumps(payload, indent=2))
        return pt2


def activation_qparams(converted: GraphModule) -> list[dict[str, Any]]:
    rows = []
    for node in converted.graph.nodes:
        if node.op == "call_function" and node.target == QUANTIZE_PER_TENSOR:
            src, scale, zero_point = node.args[0], node.args[1], node.args[2]
            if isinstance(scale, float):
                rows.append({"tensor": getattr(src, "name", str(src)), "scale": scale, "zero_point": int(zero_point)})
    return rows


def load_quantized(path: str | Path) -> GraphModule:
    """Load a saved `<name>_int8.pt2` as a runnable module (Q/DQ reference program)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"quantized program {str(path)!r} not found")
    try:
        return torch.export.load(path).module()
    except Exception as exc:
        raise CheckpointError(f"quantized program {str(path)!r} is corrupt or not a torch.export program ({type(exc).__name__})") from exc


def quantize(
    model: torch.nn.Module,
    config: PTQConfig | QATConfig,
    *,
    calibration: list[torch.Tensor],
    train_set: Dataset | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> QuantizedModel:
    """Quantize a float model with the shared int8 scheme. PTQ needs `calibration`; QAT also `train_set`."""
    if not calibration or sum(b.shape[0] for b in calibration) == 0:
        raise ConfigError("calibration set is empty")
    if isinstance(config, PTQConfig):
        prepared = ptq(model, config, calibration, progress=progress)
    elif isinstance(config, QATConfig):
        if train_set is None:
            raise ConfigError("QAT needs train_set (the recipe's augmented train split)")
        prepared = qat(model, config, train_set, calibration, device=device, progress=progress)
    else:
        raise ConfigError(f"config {type(config).__name__!r} is not a quantization config; valid choices: PTQConfig, QATConfig")
    return QuantizedModel(prepared, config, calibration[0][:1].clone())
