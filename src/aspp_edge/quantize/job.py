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
from ..metrics import evaluate_miou, reference_spread
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


def _measure(model: torch.nn.Module, converted: torch.nn.Module, val, batch_size: int) -> dict[str, Any]:
    """The int8 program against the float model: val mIoU of both, logits SQNR and argmax agreement
    on the first SQNR_IMAGES val images, and how varied the float model's own predictions are there
    (the reference spread: is agreement informative)."""
    cpu = torch.device("cpu")
    float_miou, int8_miou = evaluate_miou(model, val, cpu, batch_size), evaluate_miou(converted, val, cpu, batch_size)
    images = torch.stack([val[i][0] for i in range(min(SQNR_IMAGES, len(val)))])
    with torch.no_grad():
        ref, out = model(images), converted(images)
    classes = torch.bincount(ref.argmax(1).ravel(), minlength=val.num_classes).numpy()
    return {"float_miou": float_miou, "int8_miou": int8_miou, "miou_drop_points": 100 * (float_miou - int8_miou),
            "sqnr_db": sqnr_db(ref, out), "agreement": float((ref.argmax(1) == out.argmax(1)).float().mean()),
            "spread": reference_spread(classes, tuple(getattr(val, "classes", ()) or ()))}


def _layers(qmodel: QuantizedModel, converted: torch.nn.Module, calib: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Per-layer report: the prepared program with fake quant off against the converted one."""
    qmodel.prepared.apply(disable_fake_quant)
    try:
        return layer_report(qmodel.prepared, converted, calib[0][:REPORT_IMAGES])
    finally:
        qmodel.prepared.apply(enable_fake_quant)


def _cle_meta(model: torch.nn.Module, config, val, batch_size: int) -> dict[str, Any]:
    """With cle: what equalization did and the equalized float model's val mIoU (it must not move)."""
    if not getattr(config, "cle", False):
        return {}
    from ..calibration.equalize import EqualizeReport, equalize

    report = EqualizeReport()
    equalized = equalize(model, report)
    return {"cle": dataclasses.asdict(report), "cle_float_miou": evaluate_miou(equalized, val, torch.device("cpu"), batch_size)}


def _sensitivity(qmodel: QuantizedModel, model, config, method: str, calib, val, float_miou: float, top: int, batch_size: int,
                 progress: bool):
    """The isolated per-layer sensitivity report (`sensitivity.analyze`), unless keep_float auto measured one with `top`."""
    from .sensitivity import SENSITIVITY_IMAGES, TOP_CANDIDATES, analyze

    report = qmodel.sensitivity
    if report is None or top != TOP_CANDIDATES:
        from . import sensitivity_program

        full = qmodel.prepared if method == "ptq" and not qmodel.float_layers else sensitivity_program(model, config, calib)
        report = analyze(model, full, torch.cat(calib)[:SENSITIVITY_IMAGES], val=val, float_miou=float_miou, top=top,
                         batch_size=batch_size, progress=progress)
    return report


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
    val, batch = build_dataset(recipe, "val"), recipe.train.batch_size
    qmodel: QuantizedModel = quantize(
        model, config, calibration=calib, train_set=build_dataset(recipe, "train") if method == "qat" else None,
        val_set=val, device=device, progress=progress,
    )
    unfolded = qmodel.convert(fold_quantize=False)  # saved below; converted once (QAT's convert is slow)
    converted = fold_weights(unfolded)
    m = _measure(model, converted, val, batch)
    layers = _layers(qmodel, converted, calib)
    qat_selection = qmodel.prepared.meta.get("qat_selection")
    qmodel.meta = {
        **_cle_meta(model, config, val, batch), "rank_weight_sha256": qmodel.prepared.meta.get("rank_weight_sha256"),
        "world_size": ctx.world, "recipe": recipe.to_dict(), "source_checkpoint_sha256": sha256_file(checkpoint),
        "calibration_split": calib_split, **{k: m[k] for k in ("float_miou", "int8_miou", "miou_drop_points", "sqnr_db", "agreement")},
        "accuracy_note": m["spread"]["note"], "evaluated_on": "int8 Q/DQ reference program (PyTorch, cpu)",
        **({"qat_selection": qat_selection} if qat_selection is not None else {}),
    }
    report = (_sensitivity(qmodel, model, config, method, calib, val, m["float_miou"], sensitivity_top, batch, progress)
              if sensitivity else qmodel.sensitivity)
    if qmodel.selection is not None:
        qmodel.selection["program_miou_drop"] = m["miou_drop_points"]  # the saved program, as evaluated above
        qmodel.selection["met"] = qmodel.selection["program_miou_drop"] <= config.max_drop
    name = name or f"{recipe.name}_{method}"
    keep_report = report is not None and (sensitivity or config.auto_float)
    if ctx.main:
        qmodel.save(out_dir, name, reports={"layers": layers, **({"sensitivity": report.to_dict()} if keep_report else {})},
                    converted=unfolded)
    finish_distributed(ctx)
    return QuantizeResult(
        program=Path(out_dir) / f"{name}_int8.pt2", method=method, float_miou=m["float_miou"], int8_miou=m["int8_miou"],
        miou_drop_points=m["miou_drop_points"], sqnr_db=m["sqnr_db"], agreement=m["agreement"],
        seconds=time.perf_counter() - started, worst_layers=layers[:5], float_layers=list(qmodel.float_layers),
        keep_float_auto=qmodel.selection, sensitivity=report if keep_report else None,
        accuracy_note=m["spread"]["note"], qat_selection=qat_selection,
    )
