"""The accuracy stages of a run, per model: float training -> the float reference on val -> int8
programs (PTQ, QAT, mixed) -> per backend and precision, export -> evaluation against the reference.

`AccuracyStages.model_stages` lists one model's stages (stages.py: key, inputs, outputs, function,
upstream stages) without reading or writing anything; the methods of `AccuracyStages` are their
bodies, and hold what several stages share (the float model's val logits, per model). `collect`
reads a finished plan's rows back, with their cross-backend agreement.

Layout: `OUT/<key>/float/float.pt`, `OUT/<key>/reference.{json,npz}`,
`OUT/<key>/quant/<name>_<method>_int8.pt2`, `OUT/<key>/artifacts/<artifact>` (+ manifest),
`OUT/<key>/eval/<artifact>.json` (+ .npz masks).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Recipe
from ..evaluate.arm64 import ARM64_BACKENDS
from ..fileio import atomic_path
from ..formats import artifact_name, get_backend, manifest_path
from ..stages import Stage
from .common import add_peak_fraction, read_peaks

# Bump when a stage's code changes what it writes, so old outputs are not reused.
STAGE_VERSIONS = {"float": 1, "quantize": 2, "export": 1, "eval": 5, "reference": 2, "numerics": 1, "arm64": 1}


def mixed_settings(recipe: Recipe) -> dict[str, Any]:
    """The run's `mixed` method: the overrides of PTQ that make it. The recipe's ptq.keep_float layers
    in float where it names some, else `auto` at ptq.max_drop (MIXED_MAX_DROP points when unset) and
    ptq.max_float_layers."""
    from ..config import MIXED_MAX_DROP

    ptq = recipe.ptq
    if ptq.keep_float and ptq.keep_float != "auto":
        return {"keep_float": tuple(ptq.keep_float)}
    return {"keep_float": "auto", "max_drop": MIXED_MAX_DROP if ptq.max_drop is None else ptq.max_drop,
            "max_float_layers": ptq.max_float_layers}


@dataclass
class AccuracyStages:
    """The accuracy stages of a run's models and their bodies; holds what several stages share (the
    float model's val logits, per model) and every eval stage's result path, in plan order."""

    out: Path
    threads: int | None
    runs: int
    warmup: int
    progress: bool
    numerics_images: int = 8  # val images `compare` runs per int8 artifact (0: no numerics stages)
    arm64_cpus: tuple[str, ...] = ()  # qemu CPU models each .pte / .tflite runs on in its aarch64 runtime (none: no arm64 stages)
    arm64_images: int = 4
    results: list[Path] = field(default_factory=list)  # every eval stage's result, in plan order
    _references: dict[Path, Any] = field(default_factory=dict)
    _float_sources: dict[Path, Any] = field(default_factory=dict)

    def model_stages(self, head: str, recipe: Recipe, backends: list[str], methods: list[str], *, fp16: bool = False) -> list[Stage]:
        """Every stage of one model (`head`: its key, a built-in head or a brought model's slug), in
        order; each eval stage's result path is appended to `results`. Nothing is read or written."""
        from ..train import FINAL

        name, hdir, conf, device = f"{recipe.name}_{head}", self.out / head, recipe.to_dict(), _device()
        ckpt, ref_json = hdir / "float" / FINAL, hdir / "reference.json"
        float_key = f"{head}/float"
        float_inputs = {"v": STAGE_VERSIONS["float"], **{k: conf[k] for k in ("model", "data", "train")}}
        from ..models.factory import starting_weights

        start = starting_weights(recipe.model)  # the starting weights' content, not only their name or path
        if start:
            float_inputs["weights_sha256"] = start["sha256"]
        stages = [
            Stage(float_key, float_inputs, [ckpt], lambda resume: self.train(recipe, hdir / "float", resume=resume), resumable=True),
            Stage(f"{head}/reference", {"v": STAGE_VERSIONS["reference"], "data": conf["data"], "device": device},
                  [ref_json, ref_json.with_suffix(".npz")], lambda: self.write_reference(head, recipe, ckpt, ref_json),
                  upstream={"float": float_key}),
        ]
        programs = {}
        for method in methods:
            program = hdir / "quant" / f"{name}_{method}_int8.pt2"
            programs[method] = program
            base, overrides = ("ptq", mixed_settings(recipe)) if method == "mixed" else (method, {})
            section, inputs = conf[base], dict(overrides)
            if method == "ptq" and "mixed" in methods and recipe.ptq.keep_float:  # the full-int8 program mixed is compared with
                section, overrides = {**section, "keep_float": [], "max_drop": None, "max_float_layers": None}, {"keep_float": ()}
            stages.append(Stage(f"{head}/{method}", {"v": STAGE_VERSIONS["quantize"], "data": conf["data"], method: section, **inputs},
                                [program, program.with_suffix(".json")],
                                lambda b=base, m=method, o=overrides: self.quantize(recipe, ckpt, b, hdir / "quant", f"{name}_{m}", **o),
                                upstream={"float": float_key}))
        eval_inputs = {"v": STAGE_VERSIONS["eval"], "data": conf["data"], "threads": self.threads, "runs": self.runs,
                       "warmup": self.warmup, "system": platform.system(), "device": device}
        for backend in backends:
            b = get_backend(backend)
            floats = [b.float_precision] + (["fp16"] if fp16 and "fp16" in b.precisions and b.float_precision != "fp16" else [])
            jobs = [(artifact_name(name, backend, p), p, float_key, lambda: ("float", ckpt)) for p in floats]
            jobs += [(artifact_name(f"{name}_{m}", backend, "int8"), "int8", f"{head}/{m}", lambda m=m: ("int8", programs[m]))
                     for m in methods]
            for filename, prec, source_key, source in jobs:
                method = source_key.rsplit("/", 1)[1] if prec == "int8" else None
                artifact, result = hdir / "artifacts" / filename, hdir / "eval" / f"{filename}.json"
                export_key = f"{head}/export/{filename}"
                self.results.append(result)
                stages += [
                    Stage(export_key, {"v": STAGE_VERSIONS["export"], "backend": backend, "precision": prec},
                          [artifact, manifest_path(artifact)],
                          lambda b=backend, p=prec, s=source: self.export(recipe, name, ckpt, *s(), b, p, hdir / "artifacts"),
                          upstream={"source": source_key}),
                    Stage(f"{head}/eval/{filename}", eval_inputs, [result, result.with_suffix(".npz")],
                          lambda a=artifact, r=result, m=method: self.measure(head, recipe, a, r, ref_json, method=m),
                          upstream={"artifact": export_key, "float": float_key}),
                ]
                if prec == "int8" and self.numerics_images > 0 and backend in NUMERICS_BACKENDS:
                    found = numerics_path(hdir, filename)
                    stages.append(Stage(f"{head}/numerics/{filename}", {"v": STAGE_VERSIONS["numerics"], "data": conf["data"],
                                                                         "images": self.numerics_images}, [found],
                                        lambda a=artifact, f=found, m=method: self.numerics(recipe, a, programs[m], ckpt, f),
                                        upstream={"artifact": export_key, "program": source_key, "float": float_key}))
                if self.arm64_cpus and backend in ARM64_BACKENDS:
                    found = arm64_path(hdir, filename)
                    stages.append(Stage(f"{head}/arm64/{filename}", {"v": STAGE_VERSIONS["arm64"], "data": conf["data"],
                                                                      "cpus": list(self.arm64_cpus), "images": self.arm64_images},
                                        [found], lambda a=artifact, f=found: self.arm64(recipe, a, ckpt, f),
                                        upstream={"artifact": export_key, "float": float_key}))
        return stages

    def arm64(self, recipe: Recipe, artifact: Path, ckpt: Path, path: Path) -> None:
        """One artifact on its aarch64 runtime under qemu, per CPU model, against x86 and the float model
        (`aspp-edge check-arm64`); a failing row is recorded, not raised (the report says it)."""
        from ..evaluate.arm64 import check_arm64

        rows = check_arm64([artifact], checkpoint=ckpt, recipe=recipe, images=self.arm64_images, cpus=self.arm64_cpus, progress=False)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps([r.to_dict() for r in rows], indent=1))

    def numerics(self, recipe: Recipe, artifact: Path, program: Path, ckpt: Path, path: Path) -> None:
        """Per-layer numerics of one int8 artifact against its program and the float model (`aspp-edge compare`)."""
        from ..evaluate.numerics import compare

        (result,) = compare([artifact], program=program, checkpoint=ckpt, recipe=recipe, images=self.numerics_images, progress=False,
                            debug_dir=path.parent)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=1))

    def train(self, recipe: Recipe, out: Path, *, resume: bool) -> None:
        from ..train import train

        train(recipe, out, resume=resume and (out / "last.pt").exists(), progress=self.progress)

    def quantize(self, recipe: Recipe, ckpt: Path, method: str, out: Path, name: str, **overrides: Any) -> None:
        from ..quantize.job import quantize_checkpoint

        quantize_checkpoint(recipe, ckpt, method, out, name=name, progress=self.progress, **overrides)

    def export(self, recipe: Recipe, name: str, ckpt: Path, kind: str, path: Path, backend: str, precision: str, out: Path) -> None:
        from ..export import export, from_checkpoint, from_quantized

        if kind == "float":
            if ckpt not in self._float_sources:
                self._float_sources[ckpt] = from_checkpoint(ckpt, recipe, name=name)
            source = self._float_sources[ckpt]
        else:
            source = from_quantized(path)
        export(source, backend, precision, out)

    def reference_logits(self, recipe: Recipe, ckpt: Path):
        if ckpt not in self._references:
            from ..checkpoint import load_model
            from ..data import build_dataset
            from ..evaluate.accuracy import float_reference

            model, _, _ = load_model(ckpt, recipe)
            self._references[ckpt] = (model, float_reference(model, build_dataset(recipe, "val"), batch_size=recipe.train.batch_size,
                                                             progress=self.progress))
        return self._references[ckpt]

    def write_reference(self, head: str, recipe: Recipe, ckpt: Path, path: Path) -> None:
        from ..fileio import sha256_file
        from ..models import describe_model
        from ..models.stats import model_stats

        model, ref = self.reference_logits(recipe, ckpt)
        stats = model_stats(model)
        payload = {"head": head, "model": describe_model(recipe, model), "device": ref.device, "miou": ref.miou,
                   "pixel_accuracy": ref.pixel_accuracy,
                   **ref.spread, "checkpoint": str(ckpt.relative_to(self.out)), "checkpoint_sha256": sha256_file(ckpt),
                   "params": stats.params, "gmacs": stats.macs / 1e9, "images": len(ref.logits)}
        _write_masks(path.with_suffix(".npz"), ref.masks)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=2))

    def measure(self, head: str, recipe: Recipe, artifact: Path, result: Path, ref_json: Path, *, method: str | None = None) -> None:
        """Measure one artifact into its row; `method` labels an int8 row by how the run made it (`mixed`:
        a PTQ program with float layers, whose manifest says `ptq`)."""
        from ..data import build_dataset
        from ..evaluate.measure import measure_artifact
        from ..formats.manifest import add_metrics

        reference = json.loads(ref_json.read_text())
        _, ref = self.reference_logits(recipe, self.out / reference["checkpoint"])
        measured, masks = measure_artifact(artifact, root=self.out, head=head, gmacs=reference["gmacs"], reference=ref,
                                           val=build_dataset(recipe, "val"), batch_size=recipe.train.batch_size, threads=self.threads,
                                           runs=self.runs, warmup=self.warmup, progress=self.progress)
        row = measured.to_row()
        from ..formats.manifest import read_manifest

        manifest = read_manifest(artifact)
        if method == "mixed":
            row["method"] = method
            row["float_layers"] = manifest["quantization"]["float_layers"]
        if row["method"] == "qat":  # which QAT check the program is (step 0: PTQ's program, no check clearly closer)
            summary = self.out / head / "quant" / Path(manifest["source"]["quantized_program"]).with_suffix(".json").name
            selection = json.loads(summary.read_text()).get("qat_selection", {}) if summary.is_file() else {}
            if "step" in selection:
                row["qat_step"], row["qat_program"] = selection["step"], selection.get("program", "trained")
        if "float_islands" in manifest["backend_info"]:  # int8: what the runtime keeps float, by layer (quantize/islands.py)
            row["float_islands"] = manifest["backend_info"]["float_islands"]
        _write_masks(result.with_suffix(".npz"), masks)
        with atomic_path(result) as tmp:
            tmp.write_text(json.dumps(row, indent=2))
        add_metrics(artifact, {k: row[k] for k in ("miou", "miou_drop", "agreement", "minority_agreement", "sqnr_db", "latency_ms",
                                                   "load_ms", "peak_rss_mb", "gmacs_per_s", "threads", "evaluated_by", "accuracy_note")
                               if k in row})


def _write_masks(path: Path, masks: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, masks=masks)


def _eval_masks(out: Path, row: dict[str, Any]) -> np.ndarray:
    return np.load(out / row["head"] / "eval" / f"{Path(row['path']).name}.npz")["masks"]


def cross_backend(rows: list[dict[str, Any]], out: Path) -> None:
    """Add `agreement_with` {backend: fraction of val pixels with the same argmax} to each int8
    row: the int8 artifacts of one program, compared with each other across backends."""
    masks = {(r["head"], r["method"], r["backend"]): _eval_masks(out, r)
             for r in rows if r["precision"] == "int8" and r["miou"] is not None}
    for r in rows:
        mine = masks.get((r["head"], r["method"], r["backend"]))
        if mine is not None:
            r["agreement_with"] = {b: float((mine == m).mean()) for (h, meth, b), m in masks.items()
                                   if (h, meth) == (r["head"], r["method"]) and b != r["backend"] and m.shape == mine.shape}


def samples(out: Path, recipe: Recipe, head: str, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The figure's inputs: the first val images, their ground truth, and each measured artifact's masks."""
    from ..data import build_dataset, to_pixels
    from ..evaluate.accuracy import SAMPLE_IMAGES

    val = build_dataset(recipe, "val")  # every model of a run shares its data
    k = min(SAMPLE_IMAGES, len(val))
    pairs = [val[i] for i in range(k)]
    ref = json.loads((out / head / "reference.json").read_text())
    sample_rows = [(f"float ({ref['device']})", np.load(out / head / "reference.npz")["masks"])]
    sample_rows += [(f"{r['backend']} {r['precision']}{'' if r['method'] == 'none' else ' ' + r['method']}", _eval_masks(out, r)[:k])
                    for r in rows if r["head"] == head and r["miou"] is not None]
    return {"images": np.stack([to_pixels(image, recipe.data.mean, recipe.data.std) for image, _ in pairs]),
            "ground_truth": np.stack([mask.numpy() for _, mask in pairs]), "colors": [list(c) for c in recipe.class_colors],
            "rows": sample_rows}


NUMERICS_BACKENDS = ("executorch", "tflite", "coreml")  # the backends whose intermediate tensors `compare` reads


def arm64_path(model_dir: Path, artifact_name: str) -> Path:
    return model_dir / "arm64" / f"{artifact_name}.json"


def arm64_summary(out: Path, row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A row's aarch64 checks from its arm64 stage: per CPU model and mode, agreement with x86 and the verdict."""
    path = arm64_path(out / row["head"], Path(row["path"]).name)
    if not path.is_file():
        return None
    keep = ("cpu", "mode", "evaluated_by", "runtime", "agreement_vs_x86", "sqnr_vs_x86_db", "max_steps_vs_x86", "identical_to_x86",
            "agreement_vs_float", "sqnr_vs_float_db", "nonfinite", "kernels", "kernels_ok", "passed", "failures")
    return [{k: r[k] for k in keep} for r in json.loads(path.read_text())]


def numerics_path(model_dir: Path, artifact_name: str) -> Path:
    return model_dir / "numerics" / f"{artifact_name}.json"


def numerics_summary(out: Path, row: dict[str, Any]) -> dict[str, Any] | None:
    """An int8 row's per-layer summary from its numerics stage: worst layer, where it leaves its program."""
    path = numerics_path(out / row["head"], Path(row["path"]).name)
    if row.get("precision") != "int8" or not path.is_file():
        return None
    found = json.loads(path.read_text())
    worst = found["worst"] or {}
    return {"worst_layer": worst.get("layer"), "worst_sqnr_db": worst.get("sqnr_vs_program"), "leaves_at": found["leaves_at"],
            "output_sqnr_vs_program_db": found["output_sqnr_vs_program"], "matched_by": found["matched_by"],
            "layers": len(found["rows"]), "unmatched": len(found["unmatched"])}


def _device() -> str:
    from ..evaluate.accuracy import reference_device

    return reference_device().type


def val_truth(recipe: Recipe) -> tuple[np.ndarray, int]:
    """The val split's ground-truth label maps (N, H, W) as the eval stages read them, and the class count."""
    from ..data import build_dataset

    val = build_dataset(recipe, "val")
    return np.stack([val[i][1].numpy() for i in range(len(val))]), val.num_classes


def qat_against_ptq(rows: list[dict[str, Any]], out: Path, truth: dict[str, tuple[np.ndarray, int]]) -> None:
    """Add `qat_vs_ptq` to each QAT int8 row whose head and backend also have a PTQ int8 row: QAT's val
    mIoU minus PTQ's, in points, and its paired-bootstrap interval over the val images
    (`metrics.paired_miou_difference`), from both artifacts' saved masks."""
    from ..metrics import paired_miou_difference

    for q in rows:
        if (q["precision"], q["method"]) != ("int8", "qat") or q["miou"] is None or q["head"] not in truth:
            continue
        p = next((r for r in rows if (r["head"], r["backend"], r["precision"], r["method"]) == (q["head"], q["backend"], "int8", "ptq")
                  and r["miou"] is not None), None)
        if p is None:
            continue
        (labels, classes), mine, ptq = truth[q["head"]], _eval_masks(out, q), _eval_masks(out, p)
        if mine.shape == ptq.shape == labels.shape:
            q["qat_vs_ptq"] = paired_miou_difference(mine, ptq, labels, classes)


def collect(out: Path, keys: list[str], results: list[Path], *, peaks: bool, truth: dict[str, tuple[np.ndarray, int]] | None = None):
    """(rows, references, peak figures) of a finished plan: the eval stages' rows with their
    cross-backend agreement and fraction of the runtime's peak throughput added; with `truth` (per
    model key, `val_truth`), QAT rows also get their difference from PTQ (`qat_against_ptq`)."""
    rows = [json.loads(p.read_text()) for p in results]
    for row in rows:
        if (found := numerics_summary(out, row)) is not None:
            row["numerics"] = found
        if (checks := arm64_summary(out, row)) is not None:
            row["arm64"] = checks
    references = {key: json.loads((out / key / "reference.json").read_text()) for key in keys}
    cross_backend(rows, out)
    if truth:
        qat_against_ptq(rows, out, truth)
    peak_figures = read_peaks(out) if peaks else None
    if peak_figures:
        add_peak_fraction(rows, peak_figures)
    return rows, references, peak_figures
