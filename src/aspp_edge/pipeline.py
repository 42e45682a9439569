"""The end-to-end `aspp-edge run`: float training -> PTQ/QAT -> exports -> evaluation -> report.

Every step is a stage with a key, its inputs and its output files. `OUT/stages.json` records,
per stage, a hash of its inputs and a stamp of when it ran; a stage is skipped when its outputs
exist and its inputs hash matches. A stage's inputs include the stamps of the stages it reads
from, so a stage that reruns makes everything downstream of it rerun, and nothing else: a killed
run resumes where it stopped (float training from its last epoch), a changed recipe section
redoes what depends on it, and a deleted artifact is exported and evaluated again on its own.
Each stage prints one progress line and appends it to `OUT/run.log`.

Side by side: `heads` (built-in) and `models` (brought: torchvision:NAME, smp:ARCH,
module.path:callable) run in one report, on the same data, with the same quantization and the same
measurement. A brought model's folder and row name is its spec's slug (torchvision-NAME).

Layout: `OUT/<head>/float/float.pt`, `OUT/<head>/quant/<name>_<method>_int8.pt2`,
`OUT/<head>/artifacts/<artifact>` (+ manifest), `OUT/<head>/eval/<artifact>.json` (+ .npz masks),
and `OUT/report.{json,md}`, `OUT/pareto.png`, `OUT/samples.png`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Recipe
from .errors import ConfigError, choices_error
from .fileio import atomic_path

METHODS = ("ptq", "qat")
ALL = "all"
STATE_FILE, LOG_FILE = "stages.json", "run.log"
# Bump when a stage's code changes what it writes, so old outputs are not reused.
STAGE_VERSIONS = {"float": 1, "quantize": 1, "export": 1, "eval": 3, "reference": 1, "peaks": 1}


def _hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


class StageBook:
    """stages.json: per stage key, {inputs hash, stamp, done, seconds}; plus the run's recipe name."""

    def __init__(self, out: Path, recipe: Recipe, *, force: bool, log: Callable[[str], None]) -> None:
        self.out, self.path, self.log = out, out / STATE_FILE, log
        self.state: dict[str, Any] = {"recipe": recipe.name, "stages": {}}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{str(self.path)!r} is not valid JSON ({exc}); remove it or choose another --out") from exc
            if saved.get("recipe") != recipe.name and not force:
                raise ConfigError(
                    f"out dir {str(out)!r} holds a run of recipe {saved.get('recipe')!r}, not {recipe.name!r}: reusing its "
                    "stages would mix two recipes' artifacts in one report. Choose another --out, or pass --force to "
                    "run here anyway (stages whose inputs changed are redone)"
                )
            self.state["stages"] = saved.get("stages", {})
        self.total = 0
        self.count = 0

    def _save(self) -> None:
        self.state["recipe_updated"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.state, indent=2))

    def stamp(self, key: str) -> str | None:
        return self.state["stages"].get(key, {}).get("stamp")

    def pending(self, key: str, inputs: dict[str, Any]) -> bool:
        """True when the stage was started with these inputs and did not finish (a killed run)."""
        rec = self.state["stages"].get(key)
        return bool(rec) and not rec.get("done") and rec.get("inputs") == _hash(inputs)

    def run(self, key: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], Any]) -> bool:
        """Run `fn` unless the stage's outputs exist and its inputs are unchanged; True when it ran."""
        self.count += 1
        prefix = f"[{self.count}/{self.total}] {key}"
        rec, digest = self.state["stages"].get(key), _hash(inputs)
        if rec and rec.get("done") and rec.get("inputs") == digest and all(p.exists() for p in outputs):
            self.log(f"{prefix}: reused")
            return False
        why = "new" if not rec else "inputs changed" if rec.get("inputs") != digest else "outputs missing" if rec.get("done") else "resumed"
        self.log(f"{prefix}: running ({why})")
        self.state["stages"][key] = {"inputs": digest, "done": False}
        self._save()
        started = time.perf_counter()
        fn()
        seconds = time.perf_counter() - started
        self.state["stages"][key] = {"inputs": digest, "done": True, "stamp": uuid.uuid4().hex, "seconds": round(seconds, 2)}
        self._save()
        self.log(f"{prefix}: ran in {seconds:.1f} s")
        return True


def apps_artifacts(rows: list[dict[str, Any]], head: str, out: Path) -> list[Path]:
    """For the demo apps: per backend, the int8 artifact of `head` with the highest measured mIoU
    (the float one where no int8 artifact was measured)."""
    chosen: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["head"] != head or r["miou"] is None:
            continue
        best = chosen.get(r["backend"])
        key = (r["precision"] == "int8", r["miou"])
        if best is None or key > (best["precision"] == "int8", best["miou"]):
            chosen[r["backend"]] = r
    if not chosen:
        raise ConfigError(f"no measured artifact of head {head!r} to install for the apps")
    return [out / r["path"] for r in chosen.values()]


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


def _choices(value: str | list[str] | tuple[str, ...] | None, valid: tuple[str, ...], what: str, default: tuple[str, ...]) -> list[str]:
    if value is None:
        return list(default)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    items = [v for v in items if v]
    if items == [ALL]:
        return list(valid)
    if not items:
        raise choices_error(what, "", (ALL, *valid))
    for v in items:
        if v not in valid:
            raise choices_error(what, v, (ALL, *valid))
    return list(dict.fromkeys(items))


def _float_precision(backend: str) -> str:
    return "fp16" if backend == "coreml" else "fp32"


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
               for h in (_choices(heads, tuple(list_models()), "head", (recipe.model.head,)) if heads is not None else [])]
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
) -> RunSummary:
    """Every stage for each model asked for (`heads`: built-in heads, 'all' for the ablation; `models`:
    brought models), into one report. Neither given: the recipe's own model."""
    from .export import BACKENDS

    started = time.perf_counter()
    entries = plan_models(recipe, heads, models)
    heads = [key for key, _ in entries]
    backends = _choices(backends, tuple(BACKENDS), "backend", tuple(BACKENDS))
    methods = _choices(methods, METHODS, "method", METHODS)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a directory")
    if for_apps is not None:
        from .apps import check_app_root

        check_app_root(for_apps)  # refuse before the run, not after it
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        print(line, flush=True)
        with open(out / LOG_FILE, "a") as f:
            f.write(line + "\n")

    book = StageBook(out, recipe, force=force, log=lambda s: None)
    out.mkdir(parents=True, exist_ok=True)
    book.log = log
    log(f"== run {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} recipe {recipe.name}: heads {','.join(heads)}; "
        f"backends {','.join(backends)}; methods {','.join(methods)}")
    per_head = 2 + len(methods) + 2 * len(backends) * (1 + len(methods))
    book.total = len(heads) * per_head + int(peaks)
    ctx = _Context(recipe=recipe, out=out, book=book, threads=threads, runs=runs, warmup=warmup, progress=progress)
    rows: list[dict[str, Any]] = []
    references: dict[str, dict[str, Any]] = {}
    for head, head_recipe in entries:
        head_rows, references[head] = ctx.head(head, head_recipe, backends, methods)
        rows += head_rows
    ctx.cross_backend(rows)
    peak_figures = ctx.peaks() if peaks else None
    if peak_figures:
        for r in rows:
            peak = peak_figures.get(f"{r['backend']} {r['precision']}")
            r["peak_fraction"] = r["gmacs_per_s"] / peak["gmacs_per_s"] if peak and r["gmacs_per_s"] else None
    from .evaluate.report import write_report
    from .export.manifest import tool_versions

    seconds = time.perf_counter() - started
    paths = write_report(out, rows, recipe=recipe.to_dict(), references=references, tools=tool_versions(), peaks=peak_figures,
                         samples=ctx.samples(heads[0], rows), seconds=seconds)
    if for_apps is not None:
        from .apps import install_for_apps

        chosen = apps_artifacts(rows, heads[0], out)
        install_for_apps(chosen, for_apps, entries[0][1], threads=threads)
        log(f"apps: {', '.join(p.name for p in chosen)} -> {for_apps}")
    ran = sum(1 for line in lines if ": ran in " in line)
    reused = sum(1 for line in lines if line.endswith(": reused"))
    log(f"report: {paths['report.md']} ({ran} stages ran, {reused} reused, {seconds:.0f} s)")
    return RunSummary(
        recipe=recipe.name, out=str(out), device=references[heads[0]]["device"], references=references, rows=rows,
        report={k: str(v) for k, v in paths.items()}, stages_run=ran, stages_reused=reused, seconds=seconds, log=lines,
    )


@dataclass
class _Context:
    recipe: Recipe
    out: Path
    book: StageBook
    threads: int | None
    runs: int
    warmup: int
    progress: bool
    _references: dict[str, Any] = field(default_factory=dict)

    def head(self, head: str, recipe: Recipe, backends: list[str], methods: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every stage of one model (`head`: its key, a built-in head or a brought model's slug)."""
        from .export import artifact_name, export, from_checkpoint, from_quantized, manifest_path
        from .quantize.job import quantize_checkpoint
        from .train import FINAL, train

        name = f"{recipe.name}_{head}"
        hdir, book = self.out / head, self.book
        conf = recipe.to_dict()
        ckpt = hdir / "float" / FINAL

        key = f"{head}/float"
        inputs = {"v": STAGE_VERSIONS["float"], **{k: conf[k] for k in ("model", "data", "train")}}
        if recipe.model.weights:  # a brought model's state dict: its content, not only its path
            from .fileio import sha256_file

            inputs["weights_sha256"] = sha256_file(recipe.model.weights)
        resume = book.pending(key, inputs) and (hdir / "float" / "last.pt").exists()
        book.run(key, inputs, [ckpt], lambda: train(recipe, hdir / "float", resume=resume, progress=self.progress))
        float_stamp = book.stamp(key)

        key = f"{head}/reference"
        ref_json = hdir / "reference.json"
        book.run(key, {"v": STAGE_VERSIONS["reference"], "float": float_stamp, "data": conf["data"], "device": _device()},
                 [ref_json, ref_json.with_suffix(".npz")], lambda: self._write_reference(head, recipe, ckpt, ref_json))
        reference = json.loads(ref_json.read_text())

        programs = {}
        for method in methods:
            key = f"{head}/{method}"
            program = hdir / "quant" / f"{name}_{method}_int8.pt2"
            book.run(key, {"v": STAGE_VERSIONS["quantize"], "float": float_stamp, "data": conf["data"], method: conf[method]},
                     [program, program.with_suffix(".json")],
                     lambda m=method: quantize_checkpoint(recipe, ckpt, m, hdir / "quant", name=f"{name}_{m}", progress=self.progress))
            programs[method] = (program, book.stamp(key))

        jobs = []  # (artifact path, method, upstream stamp, export fn)
        float_source = None

        def source_float():
            nonlocal float_source
            float_source = float_source or from_checkpoint(ckpt, recipe, name=name)
            return float_source

        for backend in backends:
            precision = _float_precision(backend)
            jobs.append((hdir / "artifacts" / artifact_name(name, backend, precision), backend, precision, "none", float_stamp,
                         lambda b=backend, p=precision: export(source_float(), b, p, hdir / "artifacts")))
            for method in methods:
                program, stamp = programs[method]
                jobs.append((hdir / "artifacts" / artifact_name(f"{name}_{method}", backend, "int8"), backend, "int8", method, stamp,
                             lambda b=backend, pr=program: export(from_quantized(pr), b, "int8", hdir / "artifacts")))
        rows = []
        for artifact, backend, precision, method, stamp, fn in jobs:
            key = f"{head}/export/{artifact.name}"
            book.run(key, {"v": STAGE_VERSIONS["export"], "source": stamp, "backend": backend, "precision": precision},
                     [artifact, manifest_path(artifact)], fn)
            rows.append(self._evaluate(head, recipe, artifact, book.stamp(key), float_stamp, reference,
                                       dict(backend=backend, precision=precision, method=method)))
        return rows, reference

    # -- stages' bodies ----------------------------------------------------------------------------
    def _reference_logits(self, head: str, recipe: Recipe, ckpt: Path):
        if head not in self._references:
            from .checkpoint import load_model
            from .data import build_dataset
            from .evaluate.accuracy import float_reference

            model, _, _ = load_model(ckpt, recipe)
            self._references[head] = (model, float_reference(model, build_dataset(recipe, "val"), batch_size=recipe.train.batch_size,
                                                             progress=self.progress))
        return self._references[head]

    def _write_reference(self, head: str, recipe: Recipe, ckpt: Path, path: Path) -> None:
        from .fileio import sha256_file
        from .models import describe_model
        from .models.stats import model_stats

        model, ref = self._reference_logits(head, recipe, ckpt)
        stats = model_stats(model)
        payload = {"head": head, "model": describe_model(recipe, model), "device": ref.device, "miou": ref.miou, "pixel_accuracy": ref.pixel_accuracy,
                   "checkpoint": str(ckpt.relative_to(self.out)), "checkpoint_sha256": sha256_file(ckpt),
                   "params": stats.params, "gmacs": stats.macs / 1e9, "images": len(ref.logits)}
        with atomic_path(path.with_suffix(".npz")) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, masks=ref.masks)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=2))

    def _evaluate(self, head: str, recipe: Recipe, artifact: Path, export_stamp: str, float_stamp: str, reference: dict[str, Any],
                  ident: dict[str, str]) -> dict[str, Any]:
        result = self.out / head / "eval" / f"{artifact.name}.json"
        inputs = {"v": STAGE_VERSIONS["eval"], "artifact": export_stamp, "float": float_stamp, "data": recipe.to_dict()["data"],
                  "threads": self.threads, "runs": self.runs, "warmup": self.warmup, "system": platform.system(), "device": _device()}
        self.book.run(f"{head}/eval/{artifact.name}", inputs, [result, result.with_suffix(".npz")],
                      lambda: self._measure(head, recipe, artifact, result, reference))
        return json.loads(result.read_text())

    def _measure(self, head: str, recipe: Recipe, artifact: Path, result: Path, reference: dict[str, Any]) -> None:
        from . import runtime
        from .data import build_dataset
        from .evaluate.accuracy import evaluate
        from .evaluate.latency import measure
        from .export import artifact_size
        from .export.manifest import add_metrics, read_manifest

        manifest = read_manifest(artifact)
        row: dict[str, Any] = {
            "path": str(artifact.relative_to(self.out)), "backend": manifest["backend"], "precision": manifest["precision"],
            "method": manifest["method"], "head": head, "size_bytes": artifact_size(artifact), "gmacs": reference["gmacs"],
        }
        masks = np.zeros((0, 0, 0), np.uint8)
        try:
            runner = runtime.load(artifact, threads=self.threads)
        except runtime.RuntimeMissing as exc:
            row.update(miou=None, miou_drop=None, agreement=None, sqnr_db=None, pixel_accuracy=None, latency_ms=None, load_ms=None,
                       peak_rss_mb=None, gmacs_per_s=None, threads=None, evaluated_by=f"not run: {exc}")
        else:
            _, ref = self._reference_logits(head, recipe, self.out / reference["checkpoint"])
            acc = evaluate(runner, build_dataset(recipe, "val"), ref, batch_size=recipe.train.batch_size, progress=self.progress)
            interpreted = getattr(runner, "reference", False)  # Core ML's program in the MIL reference interpreter
            del runner
            masks = acc.masks
            row.update(miou=acc.miou, miou_drop=acc.miou_drop, agreement=acc.agreement, sqnr_db=acc.sqnr_db,
                       pixel_accuracy=acc.pixel_accuracy, evaluated_by=acc.evaluated_by, reference_device=ref.device)
            if interpreted:  # figures check the program; the interpreter's speed says nothing about Core ML's
                row.update(latency_ms=None, load_ms=None, peak_rss_mb=None, gmacs_per_s=None, threads=None,
                           latency_note=f"not measured: {acc.evaluated_by} checks the program, not Core ML's kernels")
            else:
                lat = measure(artifact, threads=self.threads, runs=self.runs, warmup=self.warmup, profile=artifact.suffix == ".pte")
                row.update(
                    latency_ms={"median": lat.median_ms, "p90": lat.p90_ms, "min": lat.min_ms}, load_ms=lat.load_ms,
                    peak_rss_mb=lat.peak_rss_mb, rss_before_load_mb=lat.rss_before_load_mb, threads=lat.threads, runs=lat.runs,
                    gmacs_per_s=reference["gmacs"] / (lat.median_ms / 1e3), profile=lat.profile,
                )
        row["backend_info"] = manifest.get("backend_info", {})
        with atomic_path(result.with_suffix(".npz")) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, masks=masks)
        with atomic_path(result) as tmp:
            tmp.write_text(json.dumps(row, indent=2))
        add_metrics(artifact, {k: row[k] for k in ("miou", "miou_drop", "agreement", "sqnr_db", "latency_ms", "load_ms",
                                                   "peak_rss_mb", "gmacs_per_s", "threads", "evaluated_by") if k in row})

    def peaks(self) -> dict[str, Any]:
        from .evaluate.latency import PEAK_CHANNELS, PEAK_LAYERS, PEAK_SIZE, runtime_peaks

        path = self.out / "peaks.json"
        inputs = {"v": STAGE_VERSIONS["peaks"], "threads": self.threads, "shape": [PEAK_LAYERS, PEAK_CHANNELS, PEAK_SIZE]}

        def write() -> None:
            figures = runtime_peaks(self.out / "peak", threads=self.threads)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(figures, indent=2))

        self.book.run("runtime-peaks", inputs, [path], write)
        return json.loads(path.read_text())

    def cross_backend(self, rows: list[dict[str, Any]]) -> None:
        """Add `agreement_with` {backend: fraction of val pixels with the same argmax} to each int8
        row: the int8 artifacts of one program, compared with each other across backends."""
        masks = {}
        for r in rows:
            if r["precision"] == "int8" and r["miou"] is not None:
                masks[r["head"], r["method"], r["backend"]] = np.load(self.out / r["head"] / "eval" / f"{Path(r['path']).name}.npz")["masks"]
        for r in rows:
            mine = masks.get((r["head"], r["method"], r["backend"]))
            if mine is not None:
                r["agreement_with"] = {b: float((mine == m).mean()) for (h, meth, b), m in masks.items()
                                       if (h, meth) == (r["head"], r["method"]) and b != r["backend"] and m.shape == mine.shape}

    def samples(self, head: str, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        from .data import build_dataset
        from .evaluate.accuracy import SAMPLE_IMAGES

        recipe = self.recipe  # every model of a run shares its data
        val = build_dataset(recipe, "val")
        k = min(SAMPLE_IMAGES, len(val))
        mean, std = np.asarray(recipe.data.mean).reshape(3, 1, 1), np.asarray(recipe.data.std).reshape(3, 1, 1)
        images, truth = [], []
        for i in range(k):
            image, mask = val[i]
            images.append(np.clip((image.numpy() * std + mean) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0))
            truth.append(mask.numpy())
        ref = json.loads((self.out / head / "reference.json").read_text())
        sample_rows = [(f"float ({ref['device']})", np.load(self.out / head / "reference.npz")["masks"])]
        for r in rows:
            if r["head"] == head and r["miou"] is not None:
                masks = np.load(self.out / head / "eval" / f"{Path(r['path']).name}.npz")["masks"][:k]
                sample_rows.append((f"{r['backend']} {r['precision']}{'' if r['method'] == 'none' else ' ' + r['method']}", masks))
        return {"images": np.stack(images), "ground_truth": np.stack(truth), "colors": [list(c) for c in recipe.class_colors],
                "rows": sample_rows}


def _device() -> str:
    from .evaluate.accuracy import reference_device

    return reference_device().type


def find_reference(artifact: Path, given: str | Path | None = None) -> Path:
    """The float checkpoint an artifact was made from: `given`, or a float.pt of its run whose sha256
    matches the manifest's `source.checkpoint_sha256`."""
    from .errors import AsppEdgeError
    from .export.manifest import read_manifest
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
        row = {"path": str(path), "reference": str(ckpt), "reference_device": ref.device, "reference_miou": ref.miou}
        try:
            runner = runtime.load(path, threads=threads)
        except runtime.RuntimeMissing as exc:
            row.update(evaluated_by=f"not run: {exc}")
        else:
            row.update(evaluate(runner, val, ref, batch_size=ckpt_recipe.train.batch_size, progress=progress).to_dict())
        rows.append(row)
    return rows
