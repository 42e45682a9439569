"""The end-to-end `aspp-edge run`: float training -> PTQ/QAT -> exports -> evaluation -> report.

`plan(...)` lists the stages: the accuracy stages of each model (`pipeline.accuracy`), the latency
stages of their architecture at deploy size when the recipe has a `deploy:` section
(`pipeline.latency.deploy_plan`), then the runtimes' peak throughput. One `StageBook` runs them,
skipping those whose outputs exist and whose inputs (and upstream stamps) are unchanged, and counts
what ran and what was reused. Each stage prints one progress line and appends it to `OUT/run.log`.

Side by side: `heads` (built-in) and `models` (brought: torchvision:NAME, smp:ARCH,
module.path:callable) run in one report, on the same data, with the same quantization and the same
measurement. A brought model's folder and row name is its spec's slug (torchvision-NAME).

Layout: the accuracy stages' (`OUT/<head>/...`), `OUT/report.{json,md}`, `OUT/pareto.png`,
`OUT/samples.png`, and with a `deploy:` section `OUT/deploy/<head>/...` (the latency stages' layout),
reported apart from the accuracy rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..apps import app_files, check_app_root, install_for_apps
from ..config import METHODS, RUN_METHODS, Recipe
from ..errors import ConfigError
from ..stages import Stage
from .accuracy import AccuracyStages, collect, samples, val_truth
from .common import check_unique, now, open_workspace, parse_backends, parse_choices, peaks_stage
from .latency import deploy_plan

LOG_FILE = "run.log"


def apps_artifacts(rows: list[dict[str, Any]], head: str, out: Path) -> tuple[list[Path], list[str]]:
    """For the demo apps: per backend, the int8 artifact of `head` with the highest measured mIoU
    (the float one where no int8 artifact was measured), and a line per backend saying why it won
    (the other int8 artifacts' mIoU beside it, e.g. QAT's where QAT ended worse than PTQ)."""
    chosen: dict[str, dict[str, Any]] = {}
    slots = app_files()  # backends the apps take
    measured = [r for r in rows if r["head"] == head and r["miou"] is not None and r["backend"] in slots]
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


ModelItems = str | dict[str, Any] | list  # what models.parse_models reads: names, specs, mappings, ModelEntry


def plan_models(recipe: Recipe, heads: str | list[str] | None, models: ModelItems | None) -> list[tuple[str, Recipe]]:
    """(key, recipe) per model of the run: the built-in `heads` first, then `models` (brought models,
    or heads; `models.entry` is the grammar). Neither given: the recipe's own model. Every brought
    model is built and checked here (import, factory, output contract, weights), before anything is
    written."""
    from ..models import model_from_recipe, model_key, parse_models

    if heads is None and models is None:
        return [(model_key(recipe.model), recipe)]
    named = parse_models(heads, what="--heads", heads_only=True) + parse_models(models, what="--model")
    seen: set[tuple[str | None, str | None]] = set()
    entries = []
    for e in named:
        if not e.brought and (e.head, e.backbone) in seen:  # a head named twice is one model (as before)
            continue
        seen.add((e.head, e.backbone))
        r = recipe.replace(model=e.model_section())
        entries.append((model_key(r.model), r))
    check_unique([k for k, _ in entries], "run")
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
    models: ModelItems | None = None,
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
    numerics_images: int = 8,
    arm64: str | list[str] | None = None,
) -> RunSummary:
    """Every stage for each model asked for (`heads`: built-in heads, 'all' for the ablation; `models`:
    brought models), into one report. Neither given: the recipe's own model. `methods`: ptq, qat
    (the default, 'all') and the opt-in `mixed` (PTQ with float layers, beside full-int8 ptq;
    `mixed_settings`). `fp16`: also an fp16 artifact from each backend that offers fp16 beside
    another float default (tflite, executorch-vulkan). A recipe with `deploy:` also times each
    model's architecture at the deploy size (`latency.deploy_plan`), reported apart. `numerics_images`:
    val images each int8 artifact's per-layer comparison with its program runs (`evaluate.numerics`; 0: none).
    `arm64`: qemu CPU models (comma-separated) each .pte and .tflite also runs on in its aarch64 runtime
    (`evaluate.arm64`; the environment must be set up: `aspp-edge setup-arm64`)."""
    started = time.perf_counter()
    entries = plan_models(recipe, heads, models)
    backends = parse_backends(backends)  # 'all' and the default: the registry's default set; opt-in backends are named
    methods = parse_choices(methods, RUN_METHODS, "method", METHODS, all_=METHODS)  # 'mixed' is named
    if for_apps is not None:
        check_app_root(for_apps)  # refuse before the run, not after it
    ws = open_workspace(out_dir, recipe.name, LOG_FILE, force=force, echo=True)
    out, book = ws.out, ws.book
    book.log(f"== run {now()} recipe {recipe.name}: heads {','.join(k for k, _ in entries)}; "
             f"backends {','.join(backends)}; methods {','.join(methods)}")
    if numerics_images < 0:
        raise ConfigError(f"--numerics-images must be 0 (no per-layer comparison) or more; got {numerics_images}")
    arm64_cpus = tuple(c for c in (arm64.split(",") if isinstance(arm64, str) else arm64 or []) if c)
    if arm64_cpus:
        from ..errors import choices_error
        from ..runtime.arm64 import find_env

        known = find_env().cpus()  # refuse before the run, not after it
        for cpu in arm64_cpus:
            if cpu not in known:
                raise choices_error("--arm64 CPU model", cpu, known)
    accuracy = AccuracyStages(out=out, threads=threads, runs=runs, warmup=warmup, progress=progress, numerics_images=numerics_images,
                              arm64_cpus=arm64_cpus)
    deploy_stages, deploy_collect = deploy_plan(entries, backends, out, threads=threads) if recipe.deploy is not None else ([], None)
    book.run_plan(plan(entries, backends, methods, accuracy, peaks=peaks, fp16=fp16, deploy=deploy_stages))

    truth = {key: val_truth(r) for key, r in entries} if {"ptq", "qat"} <= set(methods) else None
    rows, references, peak_figures = collect(out, [key for key, _ in entries], accuracy.results, peaks=peaks, truth=truth)
    deploy = deploy_collect(peak_figures) if deploy_collect else None
    from ..evaluate.report import write_report
    from ..formats.manifest import tool_versions

    first = entries[0][0]
    seconds = time.perf_counter() - started
    paths = write_report(out, rows, recipe=recipe.to_dict(), references=references, tools=tool_versions(), peaks=peak_figures,
                         samples=samples(out, recipe, first, rows), seconds=seconds, deploy=deploy)
    if for_apps is not None:
        chosen, reasons = apps_artifacts(rows, first, out)
        install_for_apps(chosen, for_apps, entries[0][1], threads=threads)
        book.log(f"apps: {', '.join(p.name for p in chosen)} -> {for_apps}; the highest val mIoU per backend: {'; '.join(reasons)}")
    book.log(f"report: {paths['report.md']} ({len(book.ran)} stages ran, {len(book.reused)} reused, {seconds:.0f} s)")
    return RunSummary(
        recipe=recipe.name, out=str(out), device=references[first]["device"], references=references, rows=rows,
        report={k: str(v) for k, v in paths.items()}, stages_run=len(book.ran), stages_reused=len(book.reused), seconds=seconds,
        log=ws.lines, deploy=deploy,
    )


def plan(entries: list[tuple[str, Recipe]], backends: list[str], methods: list[str], accuracy: AccuracyStages, *, peaks: bool,
         fp16: bool = False, deploy: list[Stage] | None = None) -> list[Stage]:
    """The run's stages in order: per model float -> reference -> int8 programs -> (export, eval) per
    artifact; then the `deploy` stages (latency.deploy_plan), then the runtimes' peak throughput.
    Nothing is read or written here."""
    stages = [stage for key, recipe in entries for stage in accuracy.model_stages(key, recipe, backends, methods, fp16=fp16)]
    stages += deploy or []
    if peaks:
        stages.append(peaks_stage(accuracy.out, accuracy.threads))
    return stages
