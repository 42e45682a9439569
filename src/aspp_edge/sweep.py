"""`aspp-edge sweep`: latency of every head/backbone (and brought model) at the deploy configuration.

Accuracy is measured where a model was trained; latency also where phones run it. For each model
of the sweep, at the deploy configuration (default 512x512, width 1.0, 21 classes, output stride
16): the float model with seeded random weights (latency does not depend on the trained values),
PTQ with the shared int8 scheme calibrated on synthetic images (images only: no labels, no
training), fp32 (Core ML fp16) and int8 exports for every backend, and each artifact timed in a
fresh process by `evaluate.latency.measure` (median, p90, min, load time, peak RSS, GMAC/s and its
fraction of the runtime's 1x1-convolution peak). Core ML packages get size and MIL op counts; their
latency is null off macOS, with the reason.

Stages, recorded in OUT/stages.json by the same `StageBook` as `run` (an interrupted sweep resumes,
a deleted artifact is exported and timed again on its own):

    quant/<model>                      OUT/<model>/quant/<name>_ptq_int8.{pt2,json} + OUT/<model>/model.json
    export/<model>/<backend>/<prec>    OUT/<model>/artifacts/<artifact> + manifest
    time/<model>/<backend>/<prec>      OUT/<model>/latency/<artifact>.json (one row)
    runtime-peaks                      OUT/peaks.json
    report                             OUT/sweep.{json,md,png}

`sweep.json` follows `sweep.schema.json` (beside this file) and is validated before it is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import shlex
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ConfigError, choices_error
from .evaluate.latency_table import OVERHEAD_GMACS, per_model_table, rows_table, separable_table, verdicts
from .evaluate.plotting import log_axes, place_labels
from .fileio import write_text_atomic
from .formats import BACKENDS, DEFAULT_BACKENDS, artifact_name, artifact_size, get_backend, manifest_path
from .stages import Stage, StageBook

ALL = "all"
SEED = 0  # float weights: seeded, so every rebuild is the same model
SCHEMA_PATH = Path(__file__).with_name("sweep.schema.json")
SCHEMA_VERSION = 1
STAGE_VERSIONS = {"quant": 1, "export": 1, "time": 1, "peaks": 1, "report": 1}
DEFAULT_MODELS = ("sep_aspp", "aspp", "lraspp@mobilenet_v3_large", "torchvision:lraspp_mobilenet_v3_large")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
BOOK_NAME = "sweep"  # stages.json's recipe name: a `run` folder is refused (and a sweep folder by `run`)


def _items(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    return tuple(dict.fromkeys(v for v in items if v))


@dataclass(frozen=True)
class SweepModel:
    """One model of the sweep: a built-in head on a backbone, or a brought model's spec."""

    key: str  # as the user names it: sep_aspp@mobilenet_v2, torchvision:lraspp_mobilenet_v3_large
    folder: str  # file-name-safe: sep_aspp-mobilenet_v2, torchvision-lraspp_mobilenet_v3_large
    head: str | None = None
    backbone: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and at which deploy configuration. Validated here: every bad value is a one-line
    ConfigError naming it and the valid choices, before anything is built or written."""

    models: tuple[str, ...] = DEFAULT_MODELS  # head, head@backbone, 'all', or torchvision:NAME / smp:ARCH / module:callable
    backbone: str = "mobilenet_v2"  # for heads given without @backbone
    size: int = 512
    width: float = 1.0
    classes: int = 21
    output_stride: int = 16
    backends: tuple[str, ...] = ("executorch", "tflite", "coreml")
    threads: int | None = None  # runtime threads (default: all cores)
    runs: int = 20
    warmup: int = 3
    head_channels: int | None = None  # None: each head's own default (small values for tests)
    calib_size: int = 8  # calibration images: activation ranges only (latency does not depend on them)
    recipe: str = "default"  # the base recipe: normalization, synthetic data seed, PTQ observer
    peaks: bool = True  # time the runtimes' 1x1-convolution peak (GMAC/s fraction)

    def __post_init__(self) -> None:
        from .config import MIN_CALIB_SIZE
        from .models import list_models
        from .models.registry import BACKBONES

        object.__setattr__(self, "models", _items(self.models))
        object.__setattr__(self, "backends", _items(self.backends))
        if self.backbone not in BACKBONES:
            raise choices_error("backbone", self.backbone, BACKBONES.names())
        if not self.models:
            raise ConfigError(f"no model to sweep; give heads ({', '.join(list_models())}), head@backbone, 'all' or a brought model spec")
        self.parsed_models()  # every name checked now
        if not self.backends:
            raise choices_error("backend", "", (ALL, *BACKENDS))
        if self.backends == (ALL,):  # the registry's default set; opt-in backends are named
            object.__setattr__(self, "backends", DEFAULT_BACKENDS)
        for b in self.backends:
            if b not in BACKENDS:
                raise choices_error("backend", b, (ALL, *BACKENDS))
        if self.output_stride not in (8, 16):
            raise ConfigError(f"output stride {self.output_stride!r} is not supported; valid choices: 8, 16")
        if self.size < 2 * self.output_stride or self.size % self.output_stride:
            raise ConfigError(f"size {self.size!r} must be a multiple of the output stride {self.output_stride} and at least "
                              f"{2 * self.output_stride}")
        if not (isinstance(self.width, (int, float)) and math.isfinite(self.width) and self.width > 0):
            raise ConfigError(f"width {self.width!r} must be > 0 (1.0: the full MobileNet)")
        if self.classes < 2:
            raise ConfigError(f"classes {self.classes!r} must be >= 2")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads {self.threads!r} must be >= 1 (or unset: all cores)")
        if self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"runs {self.runs!r} must be >= 1 and warmup {self.warmup!r} >= 0")
        if self.head_channels is not None and self.head_channels < 1:
            raise ConfigError(f"head channels {self.head_channels!r} must be >= 1")
        if self.calib_size < MIN_CALIB_SIZE:
            raise ConfigError(f"calib size {self.calib_size!r} is too small; it must be >= {MIN_CALIB_SIZE}")

    def parsed_models(self) -> list[SweepModel]:
        from .models import list_models
        from .models.brought import SOURCE_FORMS, parse_spec, slug
        from .models.registry import BACKBONES

        heads = list_models()
        out: list[SweepModel] = []
        for item in self.models:
            if item == ALL:
                out += [SweepModel(f"{h}@{self.backbone}", f"{h}-{self.backbone}", h, self.backbone) for h in heads]
                continue
            if ":" in item:  # a brought model
                parse_spec(item)
                out.append(SweepModel(item, slug(item), source=item))
                continue
            head, _, backbone = item.partition("@")
            backbone = backbone or self.backbone
            if head not in heads:
                raise ConfigError(f"unknown head {head!r} in models {item!r}; valid choices: {', '.join([ALL, *heads])}, "
                                  f"head@backbone, or a brought model ({', '.join(SOURCE_FORMS)})")
            if backbone not in BACKBONES:
                raise choices_error(f"backbone in models {item!r}:", backbone, BACKBONES.names())
            out.append(SweepModel(f"{head}@{backbone}", f"{head}-{backbone}", head, backbone))
        keys = [m.key for m in out]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup:
            raise ConfigError(f"model {dup!r} is asked for twice in one sweep")
        return out

    def class_names(self) -> tuple[str, ...]:
        return VOC_CLASSES if self.classes == len(VOC_CLASSES) else tuple(f"class_{i}" for i in range(self.classes))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"], d["backends"] = list(self.models), list(self.backends)
        return d

    def command(self) -> str:
        """The `aspp-edge sweep` command line that asks for this configuration."""
        args = ["aspp-edge", "sweep", "--models", ",".join(self.models), "--backbone", self.backbone, "--size", str(self.size),
                "--width", str(self.width), "--classes", str(self.classes), "--output-stride", str(self.output_stride),
                "--backends", ",".join(self.backends), "--runs", str(self.runs), "--warmup", str(self.warmup),
                "--calib-size", str(self.calib_size), "--recipe", self.recipe]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.head_channels is not None:
            args += ["--head-channels", str(self.head_channels)]
        if not self.peaks:
            args.append("--no-peaks")
        return " ".join(shlex.quote(a) for a in args)

    def recipe_for(self, model: SweepModel):
        """The recipe of one model at the deploy configuration (base recipe's data normalization and PTQ scheme)."""
        from .config import load_recipe

        base = load_recipe(self.recipe)
        data = {"resolution": self.size, "classes": list(self.class_names())}
        ptq = {"calib_size": self.calib_size, "batch_size": min(4, self.calib_size)}
        if model.source:
            mconf = {"source": model.source, "args": {}, "weights": None}
        else:
            mconf = {"head": model.head, "backbone": model.backbone, "decoder": "lraspp" if model.head == "lraspp" else "deeplabv3plus",
                     "output_stride": self.output_stride, "width_mult": float(self.width), "head_channels": self.head_channels,
                     "backbone_weights": None, "source": None, "args": {}, "weights": None}
        if base.data.dataset != "synthetic":
            raise ConfigError(f"sweep calibrates on synthetic images; recipe {self.recipe!r} has data.dataset {base.data.dataset!r}")
        return base.replace(name=f"sweep_{model.folder}", model=mconf, data=data, ptq=ptq)


@dataclass
class SweepResult:
    out: str
    rows: list[dict[str, Any]]
    paths: dict[str, str]
    stages_run: list[str]
    stages_reused: list[str]
    seconds: float
    summary: str = ""
    log: list[str] = field(default_factory=list)


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate(doc: dict[str, Any], where: str = "sweep.json") -> None:
    import jsonschema

    try:
        jsonschema.validate(doc, schema())
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ConfigError(f"{where} does not follow sweep.schema.json at {path}: {exc.message}") from exc


def sweep(config: SweepConfig, out_dir: str | Path, *, progress: bool = True, force: bool = False) -> SweepResult:
    """Build, calibrate, export and time every model of `config` into `out_dir`; resumable stage by stage."""
    from .console import progress_bar

    started = time.perf_counter()
    models = config.parsed_models()
    recipes = {m.key: config.recipe_for(m) for m in models}
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a directory")
    lines: list[str] = []
    book = StageBook(out, BOOK_NAME, force=force)  # refuses a `run` folder before writing
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        lines.append(line)
        with open(out / "sweep.log", "a") as f:
            f.write(line + "\n")

    book.log, book.chatter = log, out / "sweep.log"
    log(f"== sweep {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}: {config.command()}")

    ctx = _Sweep(config, out)
    plan = [stage for m in models for stage in ctx.model_stages(m, recipes[m.key])]
    peaks_path = out / "peaks.json"
    if config.peaks:
        from .evaluate.latency import PEAK_CHANNELS, PEAK_LAYERS, PEAK_SIZE

        plan.append(Stage("runtime-peaks", {"v": STAGE_VERSIONS["peaks"], "threads": config.threads,
                                            "shape": [PEAK_LAYERS, PEAK_CHANNELS, PEAK_SIZE], "system": platform.system()},
                          [peaks_path], lambda: ctx.write_peaks(peaks_path)))
    paths = {name: out / name for name in ("sweep.json", "sweep.md", "sweep.png")}
    timed = {f"stamp {s.key}": s.key for s in plan if s.key.startswith("time/") or s.key == "runtime-peaks"}
    plan.append(Stage("report", {"v": STAGE_VERSIONS["report"], "config": config.to_dict()}, list(paths.values()),
                      lambda: ctx.write_report(models, paths, peaks_path if config.peaks else None), upstream=timed))
    book.total = len(plan)
    with progress_bar(plan, desc="sweep", unit="stage", disable=not progress, dynamic_ncols=True) as bar:
        for stage in bar:
            bar.set_description(f"sweep {stage.key}")
            book.run_stage(stage)
    ran, reused = book.ran, book.reused
    doc = json.loads(paths["sweep.json"].read_text())
    seconds = time.perf_counter() - started
    summary = summary_text(doc, ran=len(ran), reused=len(reused), seconds=seconds)
    log(f"report: {paths['sweep.md']} ({len(ran)} stages ran, {len(reused)} reused, {seconds:.0f} s)")
    return SweepResult(out=str(out), rows=doc["rows"], paths={k: str(v) for k, v in paths.items()}, stages_run=ran,
                       stages_reused=reused, seconds=seconds, summary=summary, log=lines)


DEPLOY_BACKENDS = ("executorch", "tflite", "coreml")  # what a run's deploy section times (opt-in backends: not)
DEPLOY_DIR = "deploy"


def at_deploy_size(recipe, resolution: int, calib_size: int, *, name: str, model: dict[str, Any] | None = None):
    """`recipe` for timing its architecture at `resolution`: full-int8 PTQ calibrated on `calib_size`
    images (no float layers), no deploy section of its own; `model`: overrides of the model section."""
    return recipe.replace(name=name, model=model or {}, data={"resolution": resolution}, deploy=None,
                          ptq={"calib_size": calib_size, "batch_size": min(4, calib_size), "keep_float": [], "max_drop": None,
                               "max_float_layers": None})


def deploy_plan(entries: list[tuple[str, Any]], backends: list[str], out: Path, *, threads: int | None):
    """A run's `deploy:` section: (stages, collect), where the stages build, calibrate, export and
    time each entry's architecture at the deploy size into OUT/deploy/<key>/ (keys `deploy/...`),
    and `collect(peaks)` returns the section's doc {"config", "models", "rows", "note"} once they ran.

    `entries`: the run's (key, recipe) pairs, each recipe with its `deploy` set. The architecture is
    the recipe's model (head, backbone, decoder, output stride, classes, head channels; a brought
    model's spec and arguments, not its weights) at `deploy.resolution` and `deploy.width_mult`."""
    deploy = entries[0][1].deploy
    backends = [b for b in backends if b in DEPLOY_BACKENDS]
    width = deploy.width_mult or entries[0][1].model.width_mult
    models, recipes = [], {}
    for key, recipe in entries:
        if recipe.model.source:
            models.append(SweepModel(key, key, source=recipe.model.source))
            model = {"weights": None}
        else:
            models.append(SweepModel(key, key, head=recipe.model.head, backbone=recipe.model.backbone))
            model = {"width_mult": float(width)}
        recipes[key] = at_deploy_size(recipe, deploy.resolution, deploy.calib_size, name=f"{recipe.name}_{DEPLOY_DIR}", model=model)
    first = entries[0][1]
    config = SweepConfig(models=tuple(m.source or f"{m.head}@{m.backbone}" for m in models), backbone=first.model.backbone,
                         size=deploy.resolution, width=float(width), classes=first.num_classes, output_stride=first.model.output_stride,
                         backends=tuple(backends), threads=threads, runs=deploy.runs, warmup=deploy.warmup,
                         head_channels=first.model.head_channels, calib_size=deploy.calib_size, recipe=first.name, peaks=False)
    ctx = _Sweep(config, out / DEPLOY_DIR, prefix=f"{DEPLOY_DIR}/")
    stages = [stage for m in models for stage in ctx.model_stages(m, recipes[m.key])]

    def collect(peaks: dict[str, Any] | None) -> dict[str, Any]:
        return {"config": {k: v for k, v in config.to_dict().items() if k not in ("models", "recipe", "peaks", "backbone")},
                "models": ctx.models_info(models), "rows": ctx.rows(models, peaks),
                "note": f"the run's models at {deploy.resolution}x{deploy.resolution}, width {width}, with seeded "
                        f"random weights and the shared int8 scheme calibrated on {deploy.calib_size} images (latency does not depend "
                        "on trained values); each artifact timed in its own process"}

    return stages, collect


class _Sweep:
    """The stages' bodies."""

    def __init__(self, config: SweepConfig, out: Path, *, prefix: str = "") -> None:
        self.config, self.out, self.prefix = config, out, prefix  # prefix: of every stage key (a run's "deploy/")
        self._float: dict[str, Any] = {}

    def float_model(self, m: SweepModel, recipe):
        """The float model with seeded random weights: the same tensors on every rebuild."""
        if m.key not in self._float:
            import torch

            from .models import model_from_recipe

            torch.manual_seed(SEED)
            self._float[m.key] = model_from_recipe(recipe).eval()
        return self._float[m.key]

    def name(self, m: SweepModel) -> str:
        return f"{m.folder}_{self.config.size}"

    def model_stages(self, m: SweepModel, recipe) -> list[Stage]:

        cfg, mdir = self.config, self.out / m.folder
        conf = recipe.to_dict()
        name = self.name(m)
        program = mdir / "quant" / f"{name}_ptq_int8.pt2"
        model_json = mdir / "model.json"
        model_inputs = {"model": conf["model"], "data": conf["data"], "seed": SEED}
        quant_key = f"{self.prefix}quant/{m.key}"
        stages = [Stage(quant_key, {"v": STAGE_VERSIONS["quant"], **model_inputs, "ptq": conf["ptq"]},
                        [program, program.with_suffix(".json"), model_json], lambda: self.quantize(m, recipe, program, model_json))]
        for backend in cfg.backends:
            for precision in (get_backend(backend).float_precision, "int8"):
                stem = f"{name}_ptq" if precision == "int8" else name
                artifact = mdir / "artifacts" / artifact_name(stem, backend, precision)
                export_key, key = (f"{self.prefix}{stage}/{m.key}/{backend}/{precision}" for stage in ("export", "time"))
                export_inputs = {"v": STAGE_VERSIONS["export"], "backend": backend, "precision": precision}
                if precision != "int8":  # the float model is rebuilt from its seeded configuration
                    export_inputs["source"] = model_inputs
                row_path = mdir / "latency" / f"{artifact.name}.json"
                stages += [
                    Stage(export_key, export_inputs, [artifact, manifest_path(artifact)],
                          lambda b=backend, p=precision: self.export(m, recipe, program, b, p),
                          upstream={"source": quant_key} if precision == "int8" else {}),
                    Stage(key, {"v": STAGE_VERSIONS["time"], "threads": cfg.threads, "runs": cfg.runs, "warmup": cfg.warmup,
                                "system": platform.system()},
                          [row_path], lambda a=artifact, r=row_path: self.time(m, a, model_json, r),
                          upstream={"artifact": export_key, "model": quant_key}),
                ]
        return stages

    def quantize(self, m: SweepModel, recipe, program: Path, model_json: Path) -> None:
        from .calibration.calibrate import calibration_batches
        from .data import calibration_dataset
        from .models import describe_model
        from .models.stats import model_stats
        from .quantize import quantize

        model = self.float_model(m, recipe)
        stats = model_stats(model)
        calib_set, split = calibration_dataset(recipe)
        calib = calibration_batches(calib_set, recipe.ptq.calib_size, recipe.ptq.batch_size, seed=recipe.ptq.seed, split=split)
        q = quantize(model, recipe.ptq, calibration=calib)
        q.meta = {"recipe": recipe.to_dict(), "calibration_split": split, "weights": f"random (torch.manual_seed({SEED}))"}
        q.save(program.parent, program.name.removesuffix("_int8.pt2"))
        write_text_atomic(model_json, json.dumps({
            "key": m.key, "model": describe_model(recipe, model), "params": stats.params, "gmacs": stats.macs / 1e9,
            "head_params": stats.head_params, "head_gmacs": None if stats.head_macs is None else stats.head_macs / 1e9,
        }, indent=2))

    def export(self, m: SweepModel, recipe, program: Path, backend: str, precision: str) -> Path:
        from .export import ExportSource, export, from_quantized

        if precision == "int8":
            source = from_quantized(program)
        else:
            source = ExportSource(recipe, model=self.float_model(m, recipe), name=self.name(m))
        return export(source, backend, precision, self.out / m.folder / "artifacts")

    def time(self, m: SweepModel, artifact: Path, model_json: Path, row_path: Path) -> None:
        from .formats.manifest import read_manifest

        cfg = self.config
        model = json.loads(model_json.read_text())
        manifest = read_manifest(artifact)
        backend, precision = manifest["backend"], manifest["precision"]
        info = manifest.get("backend_info", {})
        row: dict[str, Any] = {
            "model": m.key, "head": m.head, "backbone": m.backbone, "source": m.source, "backend": backend, "precision": precision,
            "path": str(artifact.relative_to(self.out)), "gmacs": model["gmacs"], "params": model["params"],
            "size_bytes": artifact_size(artifact),
        }
        graph: dict[str, Any] = {}
        if backend == "executorch":
            graph = {k: info.get(k) for k in ("node_fraction", "conv_mac_fraction", "partitions", "undelegated_ops")}
        elif backend == "tflite":
            from .runtime.litert import xnnpack_delegation

            graph = {"qdq_inside": len(info.get("qdq_inside", [])), "xnnpack": xnnpack_delegation(artifact)}
        else:
            from .export.coreml import mlpackage_summary

            graph = {"mil_ops": mlpackage_summary(artifact)["ops"]}
        row["graph"] = graph
        if backend == "coreml" and platform.system() != "Darwin":
            row.update(latency_ms=None, load_ms=None, peak_rss_mb=None, rss_before_load_mb=None, gmacs_per_s=None, threads=None,
                       runs=None, evaluated_by="not run", latency_note=f"Core ML predicts on macOS only; not timed on {platform.system()} "
                       "(size and MIL op counts only)")
        else:
            from .evaluate.latency import measure

            # .pte: ExecuTorch's ETDump per XNNPACK operator, so the verdict can say what int8/fp32 is made of
            lat = measure(artifact, threads=cfg.threads, runs=cfg.runs, warmup=cfg.warmup, profile=artifact.suffix == ".pte")
            row.update(latency_ms={"median": lat.median_ms, "p90": lat.p90_ms, "min": lat.min_ms}, load_ms=lat.load_ms,
                       peak_rss_mb=lat.peak_rss_mb, rss_before_load_mb=lat.rss_before_load_mb,
                       gmacs_per_s=model["gmacs"] / (lat.median_ms / 1e3), threads=lat.threads, runs=lat.runs,
                       evaluated_by=lat.evaluated_by, latency_note=None, profile=lat.profile or None)
        write_text_atomic(row_path, json.dumps(row, indent=2))

    def write_peaks(self, path: Path) -> None:
        from .evaluate.latency import runtime_peaks

        write_text_atomic(path, json.dumps(runtime_peaks(self.out / "peak", threads=self.config.threads), indent=2))

    def rows(self, models: list[SweepModel], peaks: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The timed rows of `models`, in plan order, with their fraction of the runtime's peak (`peaks`: peaks.json)."""
        rows = []
        for m in models:
            name = self.name(m)
            for backend in self.config.backends:
                for precision in (get_backend(backend).float_precision, "int8"):
                    stem = f"{name}_ptq" if precision == "int8" else name
                    row = json.loads((self.out / m.folder / "latency" / f"{artifact_name(stem, backend, precision)}.json").read_text())
                    peak = (peaks or {}).get(f"{backend} {precision}")
                    row["peak_fraction"] = row["gmacs_per_s"] / peak["gmacs_per_s"] if peak and row["gmacs_per_s"] else None
                    rows.append(row)
        return rows

    def models_info(self, models: list[SweepModel]) -> dict[str, Any]:
        return {m.key: json.loads((self.out / m.folder / "model.json").read_text()) for m in models}

    def write_report(self, models: list[SweepModel], paths: dict[str, Path], peaks_path: Path | None) -> None:
        from .evaluate.report import provenance
        from .fileio import atomic_path

        cfg = self.config
        peaks = json.loads(peaks_path.read_text()) if peaks_path else {}
        rows = self.rows(models, peaks)
        doc = {
            "schema_version": SCHEMA_VERSION, **provenance(), "command": cfg.command(),
            "config": cfg.to_dict(), "runtime_peaks": peaks,
            "note": "random weights (latency does not depend on trained values); int8: the shared PTQ scheme calibrated on "
                    f"{cfg.calib_size} synthetic images; each artifact timed in its own process; one sweep, figures reported, not asserted",
            "models": self.models_info(models),
            "rows": rows,
        }
        validate(doc)
        write_text_atomic(paths["sweep.json"], json.dumps(doc, indent=2))
        write_text_atomic(paths["sweep.md"], markdown(doc))
        with atomic_path(paths["sweep.png"]) as tmp:
            latency_png(rows, tmp, title=f"{cfg.size}x{cfg.size}, width {cfg.width}, OS{cfg.output_stride}, {cfg.classes} classes")


# -- rendering -------------------------------------------------------------------------------------

def markdown(doc: dict[str, Any]) -> str:
    c, m = doc["config"], doc["machine"]
    lines = [
        f"# aspp-edge sweep: {c['size']}x{c['size']}, width {c['width']}, output stride {c['output_stride']}, {c['classes']} classes", "",
        f"- command: `{doc['command']}`",
        f"- machine: {m['processor']}, {m['cpu_count']} cores, {m['platform']}; date {doc['date']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in doc['versions'].items())}",
        f"- {doc['note']}; {c['runs']} timed runs after {c['warmup']} warm-up, threads {c['threads'] or 'all cores'}",
        f"- models under {OVERHEAD_GMACS} GMACs are dominated by fixed per-operator costs: their ratios say little about deploy size", "",
        "## Per model", "",
    ] + per_model_table(doc) + ["", "## Every artifact", ""] + rows_table(doc["rows"]) + [""]
    sep = separable_table(doc)
    if sep:
        lines += ["## Separable vs standard ASPP (same backbone)", ""] + sep + [""]
    if doc["runtime_peaks"]:
        lines += ["## Runtime throughput reference (four 256->256 1x1 convolutions at 64x64)", "",
                  "| runtime | GMAC/s | median ms | threads |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['gmacs_per_s']:.1f} | {v['median_ms']:.3f} | {v['threads']} |" for k, v in doc["runtime_peaks"].items()]
        lines.append("")
    lines += ["## Verdict", ""] + verdicts(doc) + [""]
    return "\n".join(lines)


def summary_text(doc: dict[str, Any], *, ran: int, reused: int, seconds: float) -> str:
    """One screen: the per-model table and the verdicts."""
    c = doc["config"]
    return "\n".join([f"sweep {c['size']}x{c['size']}, width {c['width']}, OS{c['output_stride']}, {c['classes']} classes: "
                      f"{len(doc['models'])} models, {len(doc['rows'])} artifacts; {ran} stages ran, {reused} reused, {seconds:.0f} s", ""]
                     + per_model_table(doc) + [""] + verdicts(doc))


def latency_png(rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """Median latency vs GMACs, one marker per backend/precision, each model labelled once (no label overlaps another or a marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.get("latency_ms")]
    markers = {"executorch": "o", "tflite": "s", "coreml": "^"}
    colors = {"fp32": "tab:blue", "fp16": "tab:cyan", "int8": "tab:red"}
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=110)
    for (backend, precision) in dict.fromkeys((r["backend"], r["precision"]) for r in timed):
        pts = [r for r in timed if (r["backend"], r["precision"]) == (backend, precision)]
        ax.scatter([r["gmacs"] for r in pts], [r["latency_ms"]["median"] for r in pts], marker=markers.get(backend, "o"),
                   color=colors.get(precision, "k"), s=46, zorder=3, label=f"{backend} {precision}")
    if timed:
        log_axes(ax)
        ax.legend(fontsize=8, loc="upper left")
    ax.set(xlabel="GMACs per image", ylabel="median latency (ms, each artifact in its own process)")
    untimed = sorted({f"{r['backend']} {r['precision']}" for r in rows if not r.get("latency_ms")})
    ax.set_title(f"Latency vs GMACs ({title})" + (f"\nnot timed here: {', '.join(untimed)}" if untimed else ""), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    # one label per model, beside its slowest artifact (the points of one model share its GMACs)
    slowest = {}
    for r in timed:
        if r["model"] not in slowest or r["latency_ms"]["median"] > slowest[r["model"]]["latency_ms"]["median"]:
            slowest[r["model"]] = r
    place_labels(ax, [(r["gmacs"], r["latency_ms"]["median"], key) for key, r in slowest.items()])
    fig.savefig(path, format="png")
    plt.close(fig)
