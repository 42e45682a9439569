"""The end-to-end `aspp-edge run`: float training -> PTQ/QAT -> exports -> evaluation -> report.

`plan(...)` lists the stages (stages.py: key, inputs, outputs, function, upstream stages); one
`StageBook` runs them, skipping those whose outputs exist and whose inputs (and upstream stamps) are
unchanged, and counts what ran and what was reused. Each stage prints one progress line and appends
it to `OUT/run.log`.

Side by side: `heads` (built-in) and `models` (brought: torchvision:NAME, smp:ARCH,
module.path:callable) run in one report, on the same data, with the same quantization and the same
measurement. A brought model's folder and row name is its spec's slug (torchvision-NAME).

Layout: `OUT/<head>/float/float.pt`, `OUT/<head>/quant/<name>_<method>_int8.pt2`,
`OUT/<head>/artifacts/<artifact>` (+ manifest), `OUT/<head>/eval/<artifact>.json` (+ .npz masks),
and `OUT/report.{json,md}`, `OUT/pareto.png`, `OUT/samples.png`. With the recipe's `deploy:` section,
`OUT/deploy/<head>/...` holds the architecture at deploy size (the sweep's layout: quant/, artifacts/,
latency/), reported apart from the accuracy rows.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import METHODS, RUN_METHODS, Recipe
from .errors import ConfigError, choices_error
from .fileio import atomic_path
from .formats import BACKENDS, DEFAULT_BACKENDS, artifact_name, get_backend, manifest_path
from .stages import Stage, StageBook

ALL = "all"
LOG_FILE = "run.log"
# Bump when a stage's code changes what it writes, so old outputs are not reused.
STAGE_VERSIONS = {"float": 1, "quantize": 2, "export": 1, "eval": 4, "reference": 2, "peaks": 1}


def apps_artifacts(rows: list[dict[str, Any]], head: str, out: Path) -> tuple[list[Path], list[str]]:
    """For the demo apps: per backend, the int8 artifact of `head` with the highest measured mIoU
    (the float one where no int8 artifact was measured), and a line per backend saying why it won
    (the other int8 artifacts' mIoU beside it, e.g. QAT's where QAT ended worse than PTQ)."""
    chosen: dict[str, dict[str, Any]] = {}
    measured = [r for r in rows if r["head"] == head and r["miou"] is not None]
    for r in measured:
        best = chosen.get(r["backend"])
        key = (r["precision"] == "int8", r["miou"])
        if best is None or key > (best["precision"] == "int8", best["miou"]):
            chosen[r["backend"]] = r
    if not chosen:
        raise ConfigError(f"no measured artifact of head {head!r} to install for the apps")
    reasons = []
    for backend, r in chosen.items():
        others = [o for o in measured if o["backend"] == backend and o is not r and o["precision"] == r["precision"]]
        why = f"{backend}: {r['method']} {r['precision']} (val mIoU {r['miou']:.4f}"
        why += "".join(f"; {o['method']} {o['miou']:.4f}" for o in others) + ")"
        if r["precision"] != "int8":
            why += ", no int8 artifact was measured"
        reasons.append(why)
    return [out / r["path"] for r in chosen.values()], reasons


@dataclass
class RunSummary:
    recipe: str
    out: str
    device: str
    references: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    report: dict[str, str]
    stages_run: int
    stages_reused: int
    seconds: float
    log: list[str] = field(default_factory=list)
    deploy: dict[str, Any] | None = None  # the recipe's deploy section: architecture latency at deploy size


def parse_choices(value: str | list[str] | tuple[str, ...] | None, valid: tuple[str, ...], what: str, default: tuple[str, ...],
                  *, all_: tuple[str, ...] | None = None) -> list[str]:
    """`value` (comma-separated or a list) checked against `valid`; None: `default`; 'all': `all_` (default `valid`)."""
    if value is None:
        return list(default)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    items = [v for v in items if v]
    if items == [ALL]:
        return list(all_ or valid)
    if not items:
        raise choices_error(what, "", (ALL, *valid))
    for v in items:
        if v not in valid:
            raise choices_error(what, v, (ALL, *valid))
    return list(dict.fromkeys(items))


ModelEntry = str | dict[str, Any]  # a spec, or {"source": spec, "args": {...}, "weights": path}


def plan_models(recipe: Recipe, heads: str | list[str] | None, models: ModelEntry | list[ModelEntry] | None) -> list[tuple[str, Recipe]]:
    """(key, recipe) per model of the run: the built-in `heads` first, then the brought `models`.
    Neither given: the recipe's own model. Every brought model is built and checked here (import,
    factory, output contract, weights), before anything is written."""
    from .models import list_models, model_from_recipe, model_key

    if heads is None and models is None:
        return [(model_key(recipe.model), recipe)]
    builtin = {"source": None, "args": {}, "weights": None}
    entries = [(h, recipe.replace(model={**builtin, "head": h}))
               for h in (parse_choices(heads, tuple(list_models()), "head", (recipe.model.head,)) if heads is not None else [])]
    if isinstance(models, (str, dict)):
        models = [models]
    for item in models or []:
        specs = [{"source": s.strip()} for s in item.split(",") if s.strip()] if isinstance(item, str) else [dict(item)]
        for spec in specs:
            unknown = sorted(set(spec) - {"source", "args", "weights"})
            if unknown or "source" not in spec:
                raise ConfigError(f"model entry {spec!r} is not valid; valid keys: source (required), args, weights")
            entries.append((None, recipe.replace(model={"source": spec["source"], "args": spec.get("args") or {},
                                                        "weights": spec.get("weights")})))
    entries = [(key or model_key(r.model), r) for key, r in entries]
    keys = [k for k, _ in entries]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup:
        raise ConfigError(f"model {dup!r} is asked for twice in one run")
    if not entries:
        raise ConfigError("no model to run: give --heads and/or --model")
    for _, r in entries:
        if r.model.source:
            model_from_recipe(r)
    return entries


def run(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    heads: str | list[str] | None = None,
    models: ModelEntry | list[ModelEntry] | None = None,
    backends: str | list[str] | None = None,
    methods: str | list[str] | None = None,
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 5,
    peaks: bool = True,
    force: bool = False,
    progress: bool = True,
    for_apps: str | Path | None = None,
    fp16: bool = False,
) -> RunSummary:
    """Every stage for each model asked for (`heads`: built-in heads, 'all' for the ablation; `models`:
    brought models), into one report. Neither given: the recipe's own model. `methods`: ptq, qat
    (the default, 'all') and the opt-in `mixed` (PTQ with float layers, beside full-int8 ptq;
    `mixed_settings`). `fp16`: also an fp16 artifact from each backend that offers fp16 beside
    another float default (tflite, executorch-vulkan). A recipe with `deploy:` also times each
    model's architecture at the deploy size (`sweep.deploy_plan`), reported apart."""
    started = time.perf_counter()
    entries = plan_models(recipe, heads, models)
    # 'all' and the default are the registry's default set; opt-in backends (executorch-coreml, -vulkan) are named
    backends = parse_choices(backends, tuple(BACKENDS), "backend", DEFAULT_BACKENDS, all_=DEFAULT_BACKENDS)
    methods = parse_choices(methods, RUN_METHODS, "method", METHODS, all_=METHODS)  # 'mixed' is named
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a directory")
    if for_apps is not None:
        from .apps import check_app_root

        check_app_root(for_apps)  # refuse before the run, not after it
    book = StageBook(out, recipe.name, force=force)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    book.log, book.chatter = _logger(out, lines), out / LOG_FILE
    book.log(f"== run {_now()} recipe {recipe.name}: heads {','.join(k for k, _ in entries)}; "
             f"backends {','.join(backends)}; methods {','.join(methods)}")
    bodies = _Bodies(recipe=recipe, out=out, threads=threads, runs=runs, warmup=warmup, progress=progress)
    deploy_stages, deploy_collect = [], None
    if recipe.deploy is not None:
        from .sweep import deploy_plan

        deploy_stages, deploy_collect = deploy_plan(entries, backends, out, threads=threads)
    book.run_plan(plan(entries, backends, methods, bodies, peaks=peaks, fp16=fp16, deploy=deploy_stages))

    rows, references, peak_figures = collect(out, [key for key, _ in entries], bodies.results, peaks=peaks)
    deploy = deploy_collect(peak_figures) if deploy_collect else None
    from .evaluate.report import write_report
    from .formats.manifest import tool_versions

    first = entries[0][0]
    seconds = time.perf_counter() - started
    paths = write_report(out, rows, recipe=recipe.to_dict(), references=references, tools=tool_versions(), peaks=peak_figures,
                         samples=samples(out, recipe, first, rows), seconds=seconds, deploy=deploy)
    if for_apps is not None:
        from .apps import install_for_apps

        chosen, reasons = apps_artifacts(rows, first, out)
        install_for_apps(chosen, for_apps, entries[0][1], threads=threads)
        book.log(f"apps: {', '.join(p.name for p in chosen)} -> {for_apps}; the highest val mIoU per backend: {'; '.join(reasons)}")
    book.log(f"report: {paths['report.md']} ({len(book.ran)} stages ran, {len(book.reused)} reused, {seconds:.0f} s)")
    return RunSummary(
        recipe=recipe.name, out=str(out), device=references[first]["device"], references=references, rows=rows,
        report={k: str(v) for k, v in paths.items()}, stages_run=len(book.ran), stages_reused=len(book.reused), seconds=seconds,
        log=lines, deploy=deploy,
    )


def collect(out: Path, keys: list[str], results: list[Path], *, peaks: bool):
    """(rows, references, peak figures) of a finished plan: the eval stages' rows with their
    cross-backend agreement and fraction of the runtime's peak throughput added."""
    rows = [json.loads(p.read_text()) for p in results]
    references = {key: json.loads((out / key / "reference.json").read_text()) for key in keys}
    cross_backend(rows, out)
    peak_figures = json.loads((out / "peaks.json").read_text()) if peaks else None
    for r in rows if peak_figures else []:
        peak = peak_figures.get(f"{r['backend']} {r['precision']}")
        r["peak_fraction"] = r["gmacs_per_s"] / peak["gmacs_per_s"] if peak and r["gmacs_per_s"] else None
    return rows, references, peak_figures


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _logger(out: Path, lines: list[str]):
    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)
        with open(out / LOG_FILE, "a") as f:
            f.write(line + "\n")

    return log


def plan(entries: list[tuple[str, Recipe]], backends: list[str], methods: list[str], bodies: _Bodies, *, peaks: bool,
         fp16: bool = False, deploy: list[Stage] | None = None) -> list[Stage]:
    """The run's stages in order: per model float -> reference -> int8 programs -> (export, eval) per
    artifact; then the `deploy` stages (sweep.deploy_plan), then the runtimes' peak throughput.
    Nothing is read or written here."""
    stages = [stage for key, recipe in entries for stage in _model_stages(key, recipe, backends, methods, bodies, fp16=fp16)]
    stages += deploy or []
    if peaks:
        from .evaluate.latency import PEAK_CHANNELS, PEAK_LAYERS, PEAK_SIZE

        stages.append(Stage("runtime-peaks", {"v": STAGE_VERSIONS["peaks"], "threads": bodies.threads,
                                              "shape": [PEAK_LAYERS, PEAK_CHANNELS, PEAK_SIZE]},
                            [bodies.out / "peaks.json"], bodies.write_peaks))
    return stages


def _model_stages(head: str, recipe: Recipe, backends: list[str], methods: list[str], bodies: _Bodies, *,
                  fp16: bool = False) -> list[Stage]:
    """Every stage of one model (`head`: its key, a built-in head or a brought model's slug)."""
    from .train import FINAL

    name, hdir, conf, device = f"{recipe.name}_{head}", bodies.out / head, recipe.to_dict(), _device()
    ckpt, ref_json = hdir / "float" / FINAL, hdir / "reference.json"
    float_key = f"{head}/float"
    float_inputs = {"v": STAGE_VERSIONS["float"], **{k: conf[k] for k in ("model", "data", "train")}}
    if recipe.model.weights:  # a brought model's state dict: its content, not only its path
        from .fileio import sha256_file

        float_inputs["weights_sha256"] = sha256_file(recipe.model.weights)
    stages = [
        Stage(float_key, float_inputs, [ckpt], lambda resume: bodies.train(recipe, hdir / "float", resume=resume), resumable=True),
        Stage(f"{head}/reference", {"v": STAGE_VERSIONS["reference"], "data": conf["data"], "device": device},
              [ref_json, ref_json.with_suffix(".npz")], lambda: bodies.write_reference(head, recipe, ckpt, ref_json),
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
                            lambda b=base, m=method, o=overrides: bodies.quantize(recipe, ckpt, b, hdir / "quant", f"{name}_{m}", **o),
                            upstream={"float": float_key}))
    eval_inputs = {"v": STAGE_VERSIONS["eval"], "data": conf["data"], "threads": bodies.threads, "runs": bodies.runs,
                   "warmup": bodies.warmup, "system": platform.system(), "device": device}
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
            bodies.results.append(result)
            stages += [
                Stage(export_key, {"v": STAGE_VERSIONS["export"], "backend": backend, "precision": prec},
                      [artifact, manifest_path(artifact)],
                      lambda b=backend, p=prec, s=source: bodies.export(recipe, name, ckpt, *s(), b, p, hdir / "artifacts"),
                      upstream={"source": source_key}),
                Stage(f"{head}/eval/{filename}", eval_inputs, [result, result.with_suffix(".npz")],
                      lambda a=artifact, r=result, m=method: bodies.measure(head, recipe, a, r, ref_json, method=m),
                      upstream={"artifact": export_key, "float": float_key}),
            ]
    return stages


def mixed_settings(recipe: Recipe) -> dict[str, Any]:
    """The run's `mixed` method: the overrides of PTQ that make it. The recipe's ptq.keep_float layers
    in float where it names some, else `auto` at ptq.max_drop (MIXED_MAX_DROP points when unset) and
    ptq.max_float_layers."""
    from .config import MIXED_MAX_DROP

    ptq = recipe.ptq
    if ptq.keep_float and ptq.keep_float != "auto":
        return {"keep_float": tuple(ptq.keep_float)}
    return {"keep_float": "auto", "max_drop": MIXED_MAX_DROP if ptq.max_drop is None else ptq.max_drop,
            "max_float_layers": ptq.max_float_layers}


@dataclass
class _Bodies:
    """What the stages do; holds what several stages share (the float model's val logits, per model)."""

    recipe: Recipe
    out: Path
    threads: int | None
    runs: int
    warmup: int
    progress: bool
    results: list[Path] = field(default_factory=list)  # every eval stage's result, in plan order
    _references: dict[Path, Any] = field(default_factory=dict)
    _float_sources: dict[Path, Any] = field(default_factory=dict)

    def train(self, recipe: Recipe, out: Path, *, resume: bool) -> None:
        from .train import train

        train(recipe, out, resume=resume and (out / "last.pt").exists(), progress=self.progress)

    def quantize(self, recipe: Recipe, ckpt: Path, method: str, out: Path, name: str, **overrides: Any) -> None:
        from .quantize.job import quantize_checkpoint

        quantize_checkpoint(recipe, ckpt, method, out, name=name, progress=self.progress, **overrides)

    def export(self, recipe: Recipe, name: str, ckpt: Path, kind: str, path: Path, backend: str, precision: str, out: Path) -> None:
        from .export import export, from_checkpoint, from_quantized

        if kind == "float":
            if ckpt not in self._float_sources:
                self._float_sources[ckpt] = from_checkpoint(ckpt, recipe, name=name)
            source = self._float_sources[ckpt]
        else:
            source = from_quantized(path)
        export(source, backend, precision, out)

    def reference_logits(self, recipe: Recipe, ckpt: Path):
        if ckpt not in self._references:
            from .checkpoint import load_model
            from .data import build_dataset
            from .evaluate.accuracy import float_reference

            model, _, _ = load_model(ckpt, recipe)
            self._references[ckpt] = (model, float_reference(model, build_dataset(recipe, "val"), batch_size=recipe.train.batch_size,
                                                             progress=self.progress))
        return self._references[ckpt]

    def write_reference(self, head: str, recipe: Recipe, ckpt: Path, path: Path) -> None:
        from .fileio import sha256_file
        from .models import describe_model
        from .models.stats import model_stats

        model, ref = self.reference_logits(recipe, ckpt)
        stats = model_stats(model)
        payload = {"head": head, "model": describe_model(recipe, model), "device": ref.device, "miou": ref.miou, "pixel_accuracy": ref.pixel_accuracy,
                   **ref.spread, "checkpoint": str(ckpt.relative_to(self.out)), "checkpoint_sha256": sha256_file(ckpt),
                   "params": stats.params, "gmacs": stats.macs / 1e9, "images": len(ref.logits)}
        _write_masks(path.with_suffix(".npz"), ref.masks)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=2))

    def measure(self, head: str, recipe: Recipe, artifact: Path, result: Path, ref_json: Path, *, method: str | None = None) -> None:
        """Measure one artifact into its row; `method` labels an int8 row by how the run made it (`mixed`:
        a PTQ program with float layers, whose manifest says `ptq`)."""
        from .data import build_dataset
        from .evaluate.measure import measure_artifact
        from .formats.manifest import add_metrics

        reference = json.loads(ref_json.read_text())
        _, ref = self.reference_logits(recipe, self.out / reference["checkpoint"])
        measured, masks = measure_artifact(artifact, root=self.out, head=head, gmacs=reference["gmacs"], reference=ref,
                                           val=build_dataset(recipe, "val"), batch_size=recipe.train.batch_size, threads=self.threads,
                                           runs=self.runs, warmup=self.warmup, progress=self.progress)
        row = measured.to_row()
        if method == "mixed":
            from .formats.manifest import read_manifest

            row["method"] = method
            row["float_layers"] = read_manifest(artifact)["quantization"]["float_layers"]
        _write_masks(result.with_suffix(".npz"), masks)
        with atomic_path(result) as tmp:
            tmp.write_text(json.dumps(row, indent=2))
        add_metrics(artifact, {k: row[k] for k in ("miou", "miou_drop", "agreement", "minority_agreement", "sqnr_db", "latency_ms",
                                                   "load_ms", "peak_rss_mb", "gmacs_per_s", "threads", "evaluated_by", "accuracy_note")
                               if k in row})

    def write_peaks(self) -> None:
        from .evaluate.latency import runtime_peaks

        figures = runtime_peaks(self.out / "peak", threads=self.threads)
        with atomic_path(self.out / "peaks.json") as tmp:
            tmp.write_text(json.dumps(figures, indent=2))


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
    from .data import build_dataset, to_pixels
    from .evaluate.accuracy import SAMPLE_IMAGES

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


def _device() -> str:
    from .evaluate.accuracy import reference_device

    return reference_device().type


def find_reference(artifact: Path, given: str | Path | None = None) -> Path:
    """The float checkpoint an artifact was made from: `given`, or a float.pt of its run whose sha256
    matches the manifest's `source.checkpoint_sha256`."""
    from .errors import AsppEdgeError
    from .formats.manifest import read_manifest
    from .fileio import sha256_file
    from .train import FINAL

    if given is not None:
        if not Path(given).is_file():
            raise AsppEdgeError(f"reference checkpoint {str(given)!r} not found")
        return Path(given)
    want = read_manifest(artifact)["source"].get("checkpoint_sha256")
    candidates = [artifact.parent / FINAL, artifact.parent.parent / "float" / FINAL, artifact.parent / "float" / FINAL]
    for path in candidates:
        if path.is_file() and want and sha256_file(path) == want:
            return path
    raise AsppEdgeError(
        f"no float reference found for {artifact.name}: pass --reference float.pt (the checkpoint with sha256 {want}); "
        f"looked at {', '.join(str(c) for c in candidates)}"
    )


def eval_artifacts(paths: list[str | Path], *, recipe: Recipe | None = None, reference: str | Path | None = None,
                   threads: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Accuracy of each artifact on the val split against its float reference (CUDA if present, else CPU)."""
    from . import runtime
    from .checkpoint import load_model
    from .data import build_dataset
    from .evaluate.accuracy import evaluate, float_reference
    from .evaluate.results import EvaluatedBy

    checked = [runtime.check_artifact(p) for p in paths]
    refs: dict[Path, Any] = {}
    rows = []
    for path in checked:
        ckpt = find_reference(path, reference)
        if ckpt not in refs:
            model, ckpt_recipe, _ = load_model(ckpt, recipe)
            val = build_dataset(ckpt_recipe, "val")
            refs[ckpt] = (ckpt_recipe, val, float_reference(model, val, batch_size=ckpt_recipe.train.batch_size, progress=progress))
        ckpt_recipe, val, ref = refs[ckpt]
        row = {"path": str(path), "reference": str(ckpt), "reference_device": ref.device, "reference_miou": ref.miou,
               "reference_spread": ref.spread}
        try:
            runner = runtime.load(path, threads=threads)
        except runtime.RuntimeMissing as exc:
            row.update(evaluated_by=str(EvaluatedBy.not_run(exc)))
        else:
            row.update(evaluate(runner, val, ref, batch_size=ckpt_recipe.train.batch_size, progress=progress).to_dict())
        rows.append(row)
    return rows
