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
from ..metrics import reference_spread
from ..metrics import evaluate_miou
from . import QuantizedModel, fold_weights, quantize

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
    float_layers: list[str] = dataclasses.field(default_factory=list)  # layers kept in float (mixed precision)
    keep_float_auto: dict[str, Any] | None = None  # keep_float auto: greedy steps, max_drop, whether it held
    sensitivity: Any = None  # SensitivityReport, with --sensitivity or keep_float auto
    accuracy_note: str | None = None  # the float model predicts one class on nearly every pixel: agreement says nothing
    qat_selection: dict[str, Any] | None = None  # QAT: the step returned and every check (qat.qat)


def method_config(recipe: Recipe, method: str, **overrides: Any):
    """The recipe's ptq: or qat: section with CLI overrides applied (None means keep)."""
    if method not in METHODS:
        raise choices_error("method", method, METHODS)
    base = recipe.ptq if method == "ptq" else recipe.qat
    fields = {f.name for f in dataclasses.fields(base)}
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("keep_float", "auto") != "auto":  # a list replaces the recipe's auto and its auto-only settings
        changes = {"max_drop": None, "max_float_layers": None, **changes}
    for key in changes:
        if key not in fields:
            raise ConfigError(f"option {key!r} does not apply to method {method!r}; its options: {', '.join(sorted(fields))}")
    return dataclasses.replace(base, **changes)


def calibration_images(recipe: Recipe, config) -> tuple[list[torch.Tensor], str]:
    """(batches, split name) of the recipe's calibration images as `config` (ptq: or qat:) asks for them."""
    calib_set, split = calibration_dataset(recipe)
    return calibration_batches(calib_set, config.calib_size, config.batch_size, seed=config.seed, split=split), split


def calibrated_ptq(model: torch.nn.Module, recipe: Recipe, config=None) -> QuantizedModel:
    """PTQ of `model` with the recipe's ptq section (or `config`), calibrated on the recipe's
    calibration images; `meta` records the recipe and the calibration split."""
    config = config or recipe.ptq
    calib, split = calibration_images(recipe, config)
    q = quantize(model, config, calibration=calib)
    q.meta = {"recipe": recipe.to_dict(), "calibration_split": split}
    return q


@torch.no_grad()
def compare_logits(reference: torch.nn.Module, candidate: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """(SQNR in dB, argmax agreement) of candidate logits against reference logits."""
    ref, out = reference(images), candidate(images)
    return sqnr_db(ref, out), float((ref.argmax(1) == out.argmax(1)).float().mean())


def quantize_checkpoint(
    recipe: Recipe, checkpoint: str | Path, method: str, out_dir: str | Path, *, name: str | None = None, progress: bool = True,
    sensitivity: bool = False, sensitivity_top: int = 5, **overrides: Any,
) -> QuantizeResult:
    """Quantize a float checkpoint into `out_dir/<name>_int8.pt2` (name: `<recipe>_<method>` unless given).

    `sensitivity`: also measure each layer's isolated sensitivity (`sensitivity.analyze`; the val mIoU
    drop for the `sensitivity_top` most sensitive) into `<name>_int8.sensitivity.json`. A mixed
    program (`keep_float`) lists its float layers in `<name>_int8.json` (`float_layers`)."""
    started = time.perf_counter()
    config = method_config(recipe, method, **overrides)
    model, recipe, _ = load_model(checkpoint, recipe)
    calib, calib_split = calibration_images(recipe, config)
    ctx, device = init_distributed(None)  # under torchrun, QAT trains as DDP; rank 0 writes
    val = build_dataset(recipe, "val")
    qmodel: QuantizedModel = quantize(
        model, config, calibration=calib, train_set=build_dataset(recipe, "train") if method == "qat" else None,
        val_set=val, device=device, progress=progress,
    )
    unfolded = qmodel.convert(fold_quantize=False)  # saved below; converted once (QAT's convert is slow)
    converted = fold_weights(unfolded)
    float_miou = evaluate_miou(model, val, torch.device("cpu"), recipe.train.batch_size)
    int8_miou = evaluate_miou(converted, val, torch.device("cpu"), recipe.train.batch_size)
    images = torch.stack([val[i][0] for i in range(min(SQNR_IMAGES, len(val)))])
    sqnr, agreement = compare_logits(model, converted, images)
    with torch.no_grad():  # how varied the float model's own predictions are: is agreement informative
        classes = torch.bincount(model(images).argmax(1).ravel(), minlength=val.num_classes).numpy()
    spread = reference_spread(classes, tuple(getattr(val, "classes", ()) or ()))
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
        "sqnr_db": sqnr, "agreement": agreement, "accuracy_note": spread["note"],
        "evaluated_on": "int8 Q/DQ reference program (PyTorch, cpu)",
        **({"qat_selection": qmodel.prepared.meta["qat_selection"]} if "qat_selection" in qmodel.prepared.meta else {}),
    }
    report = qmodel.sensitivity
    from .sensitivity import SENSITIVITY_IMAGES, TOP_CANDIDATES, analyze

    if sensitivity and (report is None or sensitivity_top != TOP_CANDIDATES):  # keep_float auto measured one already
        from . import sensitivity_program

        full = qmodel.prepared if method == "ptq" and not qmodel.float_layers else sensitivity_program(model, config, calib)
        report = analyze(model, full, torch.cat(calib)[:SENSITIVITY_IMAGES], val=val, float_miou=float_miou, top=sensitivity_top,
                         batch_size=recipe.train.batch_size, progress=progress)
    if qmodel.selection is not None:
        qmodel.selection["program_miou_drop"] = 100 * (float_miou - int8_miou)  # the saved program, as evaluated above
        qmodel.selection["met"] = qmodel.selection["program_miou_drop"] <= config.max_drop
    name = name or f"{recipe.name}_{method}"
    program = Path(out_dir) / f"{name}_int8.pt2"
    reports = {"layers": layers, **({"sensitivity": report.to_dict()} if report is not None and (sensitivity or config.auto_float) else {})}
    if ctx.main:
        qmodel.save(out_dir, name, reports=reports, converted=unfolded)
    finish_distributed(ctx)
    return QuantizeResult(
        program=program, method=method, float_miou=float_miou, int8_miou=int8_miou,
        miou_drop_points=100 * (float_miou - int8_miou), sqnr_db=sqnr, agreement=agreement,
        seconds=time.perf_counter() - started, worst_layers=layers[:5], float_layers=list(qmodel.float_layers),
        keep_float_auto=qmodel.selection, sensitivity=report if (sensitivity or config.auto_float) else None,
        accuracy_note=spread["note"], qat_selection=qmodel.prepared.meta.get("qat_selection"),
    )
