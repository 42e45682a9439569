"""`aspp-edge sweep`: latency of every head/backbone (and brought model) at the deploy configuration.

Accuracy is measured where a model was trained; latency also where phones run it. For each model
of the sweep, at the deploy configuration (default 512x512, width 1.0, 21 classes, output stride
16), the latency stages (`pipeline.latency`: seeded random weights, the shared int8 scheme
calibrated on synthetic images, float and int8 exports for every backend, each artifact timed in a
fresh process), then the runtimes' peak throughput and the report.

Stages, recorded in OUT/stages.json by the same `StageBook` as `run` (an interrupted sweep resumes,
a deleted artifact is exported and timed again on its own): those of `pipeline.latency`, then

    runtime-peaks                      OUT/peaks.json
    report                             OUT/sweep.{json,md,png}

`sweep.json` follows `evaluate/sweep.schema.json` and is validated before it is written.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..errors import ConfigError, choices_error
from ..evaluate.sweep_report import SCHEMA_VERSION, latency_png, markdown, summary_text, validate
from ..fileio import atomic_path, write_text_atomic
from ..models import list_heads, parse_models
from ..stages import Stage
from .common import check_unique, now, open_workspace, parse_backends, peaks_stage, read_peaks
from .latency import LatencyModel, LatencyStages, Timing

REPORT_VERSION = 1
DEFAULT_MODELS = ("sep_aspp", "aspp", "lraspp@mobilenet_v3_large", "torchvision:lraspp_mobilenet_v3_large")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
BOOK_NAME = "sweep"  # stages.json's recipe name: a `run` folder is refused (and a sweep folder by `run`)
LOG_FILE = "sweep.log"


def _items(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    return tuple(dict.fromkeys(v for v in items if v))


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
        from ..config import MIN_CALIB_SIZE
        from ..models.registry import BACKBONES

        object.__setattr__(self, "models", _items(self.models))
        object.__setattr__(self, "backends", tuple(parse_backends(self.backends)))
        if self.backbone not in BACKBONES:
            raise choices_error("backbone", self.backbone, BACKBONES.names())
        if not self.models:
            raise ConfigError(f"no model to sweep; give heads ({', '.join(list_heads())}), head@backbone, 'all' or a brought model spec")
        self.named_models()  # every name checked now
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

    def named_models(self) -> list[tuple[str, str, dict[str, str]]]:
        """(key, folder, model) per model of the sweep (`models.entry` is the grammar): model is
        {"head", "backbone"} or {"source"}."""
        entries = parse_models(self.models, what="models")
        out = [(e.key(self.backbone), e.folder(self.backbone),
                {"source": e.source} if e.brought else {"head": e.head, "backbone": e.backbone or self.backbone}) for e in entries]
        check_unique([key for key, _, _ in out], "sweep")
        return out

    def parsed_models(self) -> list[LatencyModel]:
        """The sweep's models, each with its recipe at the deploy configuration."""
        return [LatencyModel(key, folder, self.recipe_for(folder, **model)) for key, folder, model in self.named_models()]

    def class_names(self) -> tuple[str, ...]:
        return VOC_CLASSES if self.classes == len(VOC_CLASSES) else tuple(f"class_{i}" for i in range(self.classes))

    def timing(self) -> Timing:
        return Timing(self.backends, threads=self.threads, runs=self.runs, warmup=self.warmup)

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

    def recipe_for(self, folder: str, *, head: str | None = None, backbone: str | None = None, source: str | None = None) -> Recipe:
        """The recipe of one model at the deploy configuration (base recipe's data normalization and PTQ scheme)."""
        from ..config import load_recipe

        base = load_recipe(self.recipe)
        data = {"resolution": self.size, "classes": list(self.class_names())}
        ptq = {"calib_size": self.calib_size, "batch_size": min(4, self.calib_size)}
        if source:
            mconf = {"source": source, "args": {}, "weights": None}
        else:
            mconf = {"head": head, "backbone": backbone, "decoder": "lraspp" if head == "lraspp" else "deeplabv3plus",
                     "output_stride": self.output_stride, "width_mult": float(self.width), "head_channels": self.head_channels,
                     "backbone_weights": None, "source": None, "args": {}, "weights": None}
        if base.data.dataset != "synthetic":
            raise ConfigError(f"sweep calibrates on synthetic images; recipe {self.recipe!r} has data.dataset {base.data.dataset!r}")
        return base.replace(name=f"sweep_{folder}", model=mconf, data=data, ptq=ptq)


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


def sweep(config: SweepConfig, out_dir: str | Path, *, progress: bool = True, force: bool = False) -> SweepResult:
    """Build, calibrate, export and time every model of `config` into `out_dir`; resumable stage by stage."""
    from ..console import progress_bar

    started = time.perf_counter()
    models = config.parsed_models()
    ws = open_workspace(out_dir, BOOK_NAME, LOG_FILE, force=force, echo=False)  # refuses a `run` folder before writing
    out, book = ws.out, ws.book
    ws.log(f"== sweep {now()}: {config.command()}")
    stages = LatencyStages(out, config.timing())
    plan = [stage for m in models for stage in stages.model_stages(m)]
    if config.peaks:
        plan.append(peaks_stage(out, config.threads))
    paths = {name: out / name for name in ("sweep.json", "sweep.md", "sweep.png")}
    timed = {f"stamp {s.key}": s.key for s in plan if s.key.startswith("time/") or s.key == "runtime-peaks"}
    plan.append(Stage("report", {"v": REPORT_VERSION, "config": config.to_dict()}, list(paths.values()),
                      lambda: write_report(config, stages, models, paths), upstream=timed))
    book.total = len(plan)
    with progress_bar(plan, desc="sweep", unit="stage", disable=not progress, dynamic_ncols=True) as bar:
        for stage in bar:
            bar.set_description(f"sweep {stage.key}")
            book.run_stage(stage)
    doc = json.loads(paths["sweep.json"].read_text())
    seconds = time.perf_counter() - started
    summary = summary_text(doc, ran=len(book.ran), reused=len(book.reused), seconds=seconds)
    ws.log(f"report: {paths['sweep.md']} ({len(book.ran)} stages ran, {len(book.reused)} reused, {seconds:.0f} s)")
    return SweepResult(out=str(out), rows=doc["rows"], paths={k: str(v) for k, v in paths.items()}, stages_run=book.ran,
                       stages_reused=book.reused, seconds=seconds, summary=summary, log=ws.lines)


def write_report(config: SweepConfig, stages: LatencyStages, models: list[LatencyModel], paths: dict[str, Path]) -> None:
    from ..evaluate.report import provenance

    peaks = read_peaks(stages.out) if config.peaks else {}
    rows = stages.rows(models, peaks)
    doc = {
        "schema_version": SCHEMA_VERSION, **provenance(), "command": config.command(),
        "config": config.to_dict(), "runtime_peaks": peaks,
        "note": "random weights (latency does not depend on trained values); int8: the shared PTQ scheme calibrated on "
                f"{config.calib_size} synthetic images; each artifact timed in its own process; one sweep, figures reported, not asserted",
        "models": stages.models_info(models),
        "rows": rows,
    }
    validate(doc)
    write_text_atomic(paths["sweep.json"], json.dumps(doc, indent=2))
    write_text_atomic(paths["sweep.md"], markdown(doc))
    with atomic_path(paths["sweep.png"]) as tmp:
        c = config
        latency_png(rows, tmp, title=f"{c.size}x{c.size}, width {c.width}, OS{c.output_stride}, {c.classes} classes")

