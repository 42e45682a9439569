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
from torchao.quantization.pt2e.export_utils import _EXPORTED_TRAINING_ATTR
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from ..config import PTQConfig, QATConfig
from ..calibration.report import QUANTIZE_PER_TENSOR
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path
from .ptq import export_dynamic_batch, ptq
from .qat import present_conv_kinds_only, qat
from .quantizers import build_quantizer
from .rewrites import drop_saturated_clamps

__all__ = ["PTQConfig", "QATConfig", "QuantizedModel", "build_quantizer", "fold_weights", "load_quantized", "quantize",
           "sensitivity_program"]

@dataclass
class QuantizedModel:
    """A calibrated or QAT-trained prepared program and what it was made with."""

    prepared: GraphModule
    config: PTQConfig | QATConfig
    example: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)  # layers kept in float (mixed precision)
    selection: dict[str, Any] | None = None  # keep_float auto: the greedy steps and whether max_drop held
    sensitivity: Any = None  # keep_float auto: the SensitivityReport the choice was ranked by

    @property
    def method(self) -> str:
        return self.config.method

    def convert(self, *, fold_quantize: bool = True) -> GraphModule:
        """convert_pt2e on a copy: `fold_quantize=True` for ExecuTorch/XNNPACK, False for litert-torch.
        Who needs both converts once with False and folds a copy (`fold_weights`): a QAT program's
        convert re-traces its conv-BN patterns (about 35 s for a MobileNetV3-Large on one core)."""
        with present_conv_kinds_only():
            converted = convert_pt2e(copy.deepcopy(self.prepared), fold_quantize=False)
        drop_saturated_clamps(converted)
        converted = allow_exported_model_train_eval(converted)
        setattr(converted, _EXPORTED_TRAINING_ATTR, False)  # an inference program: `.eval()` must not rebuild its BN (qat.set_mode)
        return fold_weights(converted, inplace=True) if fold_quantize else converted

    def qparams(self) -> list[dict[str, Any]]:
        """Activation qparams of the converted program: one entry per quantize node."""
        return activation_qparams(self.convert(fold_quantize=False))

    def save(self, out_dir: str | Path, name: str, reports: dict[str, Any] | None = None, *,
             converted: GraphModule | None = None) -> Path:
        """Write `<name>_int8.pt2` (the converted Q/DQ program, weights not folded, so each backend
        can fold or not), `<name>_int8.json` (config, qparams, meta) and `<name>_int8.<key>.json`
        for each extra report. All files are written to temporary names and renamed together at the end.
        `converted`: this program's `convert(fold_quantize=False)` where the caller already made it.
        """
        out = Path(out_dir)
        converted = self.convert(fold_quantize=False) if converted is None else converted
        program = export_dynamic_batch(converted, self.example)
        summary = {
            "method": self.method, "config": self.config.to_dict(), "input_shape": list(self.example.shape[1:]),
            "qparams": activation_qparams(converted), "float_layers": list(self.float_layers),
            **({"keep_float_auto": self.selection} if self.selection is not None else {}), **self.meta,
        }
        texts = {f"{name}_int8.json": summary, **{f"{name}_int8.{k}.json": v for k, v in (reports or {}).items()}}
        pt2 = out / f"{name}_int8.pt2"
        with contextlib.ExitStack() as stack:
            torch.export.save(program, stack.enter_context(atomic_path(pt2)))
            for filename, payload in texts.items():
                stack.enter_context(atomic_path(out / filename)).write_text(json.dumps(payload, indent=2))
        return pt2


def fold_weights(converted: GraphModule, *, inplace: bool = False) -> GraphModule:
    """What convert_pt2e's `fold_quantize=True` adds to a `fold_quantize=False` program: the weights'
    quantize ops constant-folded into int8 tensors (on a copy unless `inplace`)."""
    from torchao.quantization.pt2e.constant_fold import constant_fold

    from .sensitivity import Q_CHANNEL, Q_TENSOR

    folded = converted if inplace else copy.deepcopy(converted)
    constant_fold(folded, lambda n: n.op == "call_function" and (n.target in Q_TENSOR or n.target in Q_CHANNEL))
    return folded


def activation_qparams(converted: GraphModule) -> list[dict[str, Any]]:
    rows = []
    for node in converted.graph.nodes:
        if node.op == "call_function" and node.target == QUANTIZE_PER_TENSOR:
            src, scale, zero_point = node.args[0], node.args[1], node.args[2]
            if isinstance(scale, float):
                rows.append({"tensor": getattr(src, "name", str(src)), "scale": scale, "zero_point": int(zero_point)})
    return rows


_LOADED: dict[tuple[str, int, int], torch.export.ExportedProgram] = {}  # (path, mtime_ns, size) -> program as read
_LOADED_KEEP = 4


def load_quantized(path: str | Path) -> GraphModule:
    """Load a saved `<name>_int8.pt2` as a runnable module (Q/DQ reference program), a copy of its own.

    A run reads each program many times (every int8 export and per-layer comparison) and reading one
    takes seconds, so the last few programs read are kept, keyed by path, mtime and size (a rewritten
    file is read again); each call returns a deep copy, so no caller sees another's changes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"quantized program {str(path)!r} not found")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _LOADED:
        try:
            program = torch.export.load(path)
        except Exception as exc:
            raise CheckpointError(f"quantized program {str(path)!r} is corrupt or not a torch.export program "
                                  f"({type(exc).__name__})") from exc
        while len(_LOADED) >= _LOADED_KEEP:
            del _LOADED[next(iter(_LOADED))]
        _LOADED[key] = program
    return copy.deepcopy(_LOADED[key]).module()


def quantize(
    model: torch.nn.Module,
    config: PTQConfig | QATConfig,
    *,
    calibration: list[torch.Tensor],
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> QuantizedModel:
    """Quantize a float model with the shared int8 scheme. PTQ needs `calibration`; QAT also `train_set`.

    Mixed precision: the layers named in `config.keep_float` stay float. With `keep_float: auto` the
    layers are chosen on `val_set` (required then): isolated sensitivity on the PTQ program, then the
    most sensitive layers are kept in float, one at a time, until the val mIoU drop is <= `max_drop`
    (see `sensitivity.py`); the chosen program is measured again as built and, for PTQ, grown by the
    next layer of the ranking while the drop is still above the target.
    """
    if not calibration or sum(b.shape[0] for b in calibration) == 0:
        raise ConfigError("calibration set is empty")
    if not isinstance(config, (PTQConfig, QATConfig)):
        raise ConfigError(f"config {type(config).__name__!r} is not a quantization config; valid choices: PTQConfig, QATConfig")
    if isinstance(config, QATConfig) and train_set is None:
        raise ConfigError("QAT needs train_set (the recipe's augmented train split)")
    if config.auto_float and val_set is None:
        raise ConfigError(f"{config.method}.keep_float 'auto' needs val_set: the layers are chosen on the val mIoU drop")
    float_layers, selection, report = list(config.float_layers), None, None
    if config.auto_float:
        float_layers, selection, report = _choose_float_layers(model, config, calibration, val_set, progress=progress)
    if isinstance(config, PTQConfig):
        prepared = ptq(model, config, calibration, progress=progress, float_layers=float_layers)
        if selection is not None:
            prepared, float_layers = _meet_on_program(model, config, calibration, val_set, prepared, float_layers, selection, report,
                                                      progress=progress)
    else:
        prepared = qat(model, config, train_set, calibration, device=device, progress=progress, float_layers=float_layers)
    return QuantizedModel(prepared, config, calibration[0][:1].clone(), float_layers=float_layers, selection=selection,
                          sensitivity=report)


def sensitivity_program(model: torch.nn.Module, config: PTQConfig | QATConfig, calibration: list[torch.Tensor], *,
                        progress: bool = False) -> GraphModule:
    """The full-int8 PTQ program the sensitivity is measured on: the section's observer and weights, no float layers."""
    import dataclasses

    ptq_config = config if isinstance(config, PTQConfig) else PTQConfig(observer=config.observer, per_channel=config.per_channel)
    ptq_config = dataclasses.replace(ptq_config, keep_float=(), max_drop=None, max_float_layers=None)
    return ptq(model, ptq_config, calibration, progress=progress)


def _choose_float_layers(model, config, calibration, val_set, *, progress: bool):
    from ..metrics import evaluate_miou
    from .sensitivity import SENSITIVITY_IMAGES, PrecisionPlanner, analyze, choose_float_layers, converted_for_analysis

    prepared = sensitivity_program(model, config, calibration, progress=progress)
    float_miou = evaluate_miou(model, val_set, torch.device("cpu"), 16)
    images = torch.cat(calibration)[:SENSITIVITY_IMAGES]
    report = analyze(model, prepared, images, val=val_set, float_miou=float_miou, progress=progress)
    planner = PrecisionPlanner(converted_for_analysis(prepared))
    choice = choose_float_layers(planner, report.recovery_order(), val_set, float_miou, max_drop=config.max_drop,
                                 max_float_layers=config.max_float_layers, progress=progress)
    selection = {**choice.to_dict(), "float_miou": float_miou,
                 "ranked_by": "what keeping each layer alone in float recovers (alone-float SQNR, sensitivity.json)"}
    return choice.layers, selection, report


def _meet_on_program(model, config, calibration, val_set, prepared, float_layers, selection, report, *, progress: bool):
    """Measure the built mixed program on val; while its drop is above max_drop, keep the next ranked layer too."""
    from ..metrics import evaluate_miou

    ranking, cap = report.recovery_order(), config.max_float_layers or len(report.names())
    float_miou = selection["float_miou"]
    while True:
        converted = QuantizedModel(prepared, config, calibration[0][:1]).convert()
        drop = 100 * (float_miou - evaluate_miou(converted, val_set, torch.device("cpu"), 16))
        selection["program_miou_drop"] = drop
        selection["met"] = drop <= config.max_drop
        if selection["met"] or len(float_layers) >= cap:
            return prepared, float_layers
        float_layers = [*float_layers, ranking[len(float_layers)]]
        selection["layers"] = float_layers
        selection["steps"].append({"float_layers": list(float_layers), "miou_drop": None, "added_after_program_check": True})
        prepared = ptq(model, config, calibration, progress=progress, float_layers=float_layers)
