"""`aspp-edge quantize`: float checkpoint -> int8 program + reports, in one call."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchao.quantization.pt2e import disable_fake_quant, enable_fake_quant

from ..calibration.calibrate import calibration_batches
from ..calibration.report import layer_report, sqnr_db
from ..checkpoint import load_model
from ..config import METHODS, Recipe
from ..data import build_dataset, calibration_dataset
from ..distributed import finish_distributed, init_distributed
from ..errors import ConfigError, choices_error
from ..fileio import sha256_file
from ..train import evaluate_miou
from . import QuantizedModel, quantize

SQNR_IMAGES = 32  # val images whose logits the SQNR and agreement figures are computed on
REPORT_IMAGES = 4  # calibration images for the per-layer report


@dataclass
class QuantizeResult:
    program: Path
    method: str
    float_miou: float
    int8_miou: float
    miou_drop_points: float
    sqnr_db: float
    agreement: float
    seconds: float
    worst_layers: list[dict[str, Any]]


def method_config(recipe: Recipe, method: str, **overrides: Any):
    """The recipe's ptq: or qat: section with CLI overrides applied (None means keep)."""
    if method not in METHODS:
        raise choices_error("method", method, METHODS)
    base = recipe.ptq if method == "ptq" else recipe.qat
    fields = {f.name for f in dataclasses.fields(base)}
    changes = {k: v for k, v in overrides.items() if v is not None}
    for key in changes:
        if key not in fields:
            raise ConfigError(f"option {key!r} does not apply to method {method!r}; its options: {', '.join(sorted(fields))}")
    return dataclasses.replace(base, **changes)


@torch.no_grad()
def compare_logits(reference: torch.nn.Module, candidate: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """(SQNR in dB, argmax agreement) of candidate logits against reference logits."""
    ref, out = reference(images), candidate(images)
    return sqnr_db(ref, out), float((ref.argmax(1) == out.argmax(1)).float().mean())


def quantize_checkpoint(
    recipe: Recipe, checkpoint: str | Path, method: str, out_dir: str | Path, *, name: str | None = None, progress: bool = True,
    **overrides: Any,
) -> QuantizeResult:
    """Quantize a float checkpoint into `out_dir/<name>_int8.pt2` (name: `<recipe>_<method>` unless given)."""
    started = time.perf_counter()
    config = method_config(recipe, method, **overrides)
    model, recipe, _ = load_model(checkpoint, recipe)
    calib_set, calib_split = calibration_dataset(recipe)
    calib = calibration_batches(calib_set, config.calib_size, config.batch_size, seed=config.seed, split=calib_split)
    ctx, device = init_distributed(None)  # under torchrun, QAT trains as DDP; rank 0 writes
    qmodel: QuantizedModel = quantize(
        model, config, calibration=calib, train_set=build_dataset(recipe, "train") if method == "qat" else None,
        device=device, progress=progress,
    )
    converted = qmodel.convert()
    val = build_dataset(recipe, "val")
    float_miou = evaluate_miou(model, val, torch.device("cpu"), recipe.train.batch_size)
    int8_miou = evaluate_miou(converted, val, torch.device("cpu"), recipe.train.batch_size)
    images = torch.stack([val[i][0] for i in range(min(SQNR_IMAGES, len(val)))])
    sqnr, agreement = compare_logits(model, converted, images)
    qmodel.prepared.apply(disable_fake_quant)
    try:
        layers = layer_report(qmodel.prepared, converted, calib[0][:REPORT_IMAGES])
    finally:
        qmodel.prepared.apply(enable_fake_quant)
    cle_meta = {}
    if getattr(config, "cle", False):
        from ..calibration.equalize import EqualizeReport, equalize

        report = EqualizeReport()
        equalized = equalize(model, report)
        cle_meta = {"cle": dataclasses.asdict(report),
                    "cle_float_miou": evaluate_miou(equalized, val, torch.device("cpu"), recipe.train.batch_size)}
    qmodel.meta = {
        **cle_meta, "rank_weight_sha256": qmodel.prepared.meta.get("rank_weight_sha256"), "world_size": ctx.world,
        "recipe": recipe.to_dict(), "source_checkpoint_sha256": sha256_file(checkpoint), "calibration_split": calib_split,
        "float_miou": float_miou, "int8_miou": int8_miou, "miou_drop_points": 100 * (float_miou - int8_miou),
        "sqnr_db": sqnr, "agreement": agreement, "evaluated_on": "int8 Q/DQ reference program (PyTorch, cpu)",
    }
    name = name or f"{recipe.name}_{method}"
    program = Path(out_dir) / f"{name}_int8.pt2"
    if ctx.main:
        qmodel.save(out_dir, name, reports={"layers": layers})
    finish_distributed(ctx)
    return QuantizeResult(
        program=program, method=method, float_miou=float_miou, int8_miou=int8_miou,
        miou_drop_points=100 * (float_miou - int8_miou), sqnr_db=sqnr, agreement=agreement,
        seconds=time.perf_counter() - started, worst_layers=layers[:5],
    )
