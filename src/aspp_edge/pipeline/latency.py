"""The latency stages, per model at a deploy configuration: the float model with seeded random
weights (latency does not depend on trained values) -> PTQ with the shared int8 scheme calibrated on
the recipe's images -> per backend, float and int8 exports -> each artifact timed in a fresh process
(`evaluate.latency.measure`: median, p90, min, load time, peak RSS, GMAC/s; ExecuTorch's ETDump per
operator kind). Core ML packages get size and MIL op counts; their latency is null off macOS, with
the reason.

`aspp-edge sweep` runs these stages for its models; `aspp-edge run` runs them for its own models'
architecture when the recipe has a `deploy:` section (`deploy_plan`). Stage keys (after `prefix`):

    quant/<model>                      OUT/<folder>/quant/<name>_ptq_int8.{pt2,json} + OUT/<folder>/model.json
    export/<model>/<backend>/<prec>    OUT/<folder>/artifacts/<artifact> + manifest
    time/<model>/<backend>/<prec>      OUT/<folder>/latency/<artifact>.json (one row)
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Recipe
from ..fileio import write_text_atomic
from ..formats import artifact_name, artifact_size, get_backend, manifest_path
from ..stages import Stage
from .common import add_peak_fraction

SEED = 0  # float weights: seeded, so every rebuild is the same model
STAGE_VERSIONS = {"quant": 1, "export": 1, "time": 2}  # time 2: blocks, the fastest block's median
# Each artifact is timed in PROCESSES fresh processes and the fastest counts: the ratios these rows give
# (int8/fp32, ExecuTorch/LiteRT) compare processes that a 2-core VM's slow state can otherwise split
# (2026-12-05, the default model at 512: ExecuTorch fp32 took 13.2-13.5 ms in 7 processes and 25.6-27.4
# ms, its 1-thread speed, in 4 others, timed one after another).
PROCESSES = 3
DEPLOY_DIR = "deploy"


@dataclass(frozen=True)
class LatencyModel:
    """One model to time: `key` as the user names it (sep_aspp@mobilenet_v2, torchvision:NAME, or a
    run's model key), `folder` its file-name-safe form, `recipe` its configuration at deploy size."""

    key: str
    folder: str
    recipe: Recipe

    @property
    def source(self) -> str | None:
        return self.recipe.model.source

    @property
    def head(self) -> str | None:
        return None if self.source else self.recipe.model.head

    @property
    def backbone(self) -> str | None:
        return None if self.source else self.recipe.model.backbone

    @property
    def name(self) -> str:
        return f"{self.folder}_{self.recipe.data.resolution}"


@dataclass(frozen=True)
class Timing:
    """Where and how each artifact is timed."""

    backends: tuple[str, ...]
    threads: int | None = None  # runtime threads (None: all cores)
    runs: int = 20
    warmup: int = 3


def at_deploy_size(recipe: Recipe, resolution: int, calib_size: int, *, name: str, model: dict[str, Any] | None = None) -> Recipe:
    """`recipe` for timing its architecture at `resolution`: full-int8 PTQ calibrated on `calib_size`
    images (no float layers), no deploy section of its own; `model`: overrides of the model section."""
    return recipe.replace(name=name, model=model or {}, data={"resolution": resolution}, deploy=None,
                          ptq={"calib_size": calib_size, "batch_size": min(4, calib_size), "keep_float": [], "max_drop": None,
                               "max_float_layers": None})


class LatencyStages:
    """The latency stages of some models into `out` (keys prefixed by `prefix`: a run's "deploy/"), and their bodies."""

    def __init__(self, out: Path, timing: Timing, *, prefix: str = "") -> None:
        self.out, self.timing, self.prefix = out, timing, prefix
        self._float: dict[str, Any] = {}

    def float_model(self, m: LatencyModel):
        """The float model with seeded random weights: the same tensors on every rebuild."""
        if m.key not in self._float:
            import torch

            from ..models import model_from_recipe

            torch.manual_seed(SEED)
            self._float[m.key] = model_from_recipe(m.recipe).eval()
        return self._float[m.key]

    def artifacts(self, m: LatencyModel) -> list[tuple[str, str, Path]]:
        """(backend, precision, artifact path) of one model, in plan order: per backend, float then int8."""
        out = []
        for backend in self.timing.backends:
            for precision in (get_backend(backend).float_precision, "int8"):
                stem = f"{m.name}_ptq" if precision == "int8" else m.name
                out.append((backend, precision, self.out / m.folder / "artifacts" / artifact_name(stem, backend, precision)))
        return out

    def model_stages(self, m: LatencyModel) -> list[Stage]:
        """Quantize once, then export and time each artifact. Nothing is read or written here."""
        conf, mdir, t = m.recipe.to_dict(), self.out / m.folder, self.timing
        program, model_json = mdir / "quant" / f"{m.name}_ptq_int8.pt2", mdir / "model.json"
        model_inputs = {"model": conf["model"], "data": conf["data"], "seed": SEED}
        quant_key = f"{self.prefix}quant/{m.key}"
        stages = [Stage(quant_key, {"v": STAGE_VERSIONS["quant"], **model_inputs, "ptq": conf["ptq"]},
                        [program, program.with_suffix(".json"), model_json], lambda: self.quantize(m, program, model_json))]
        for backend, precision, artifact in self.artifacts(m):
            export_key, key = (f"{self.prefix}{stage}/{m.key}/{backend}/{precision}" for stage in ("export", "time"))
            export_inputs = {"v": STAGE_VERSIONS["export"], "backend": backend, "precision": precision}
            if precision != "int8":  # the float model is rebuilt from its seeded configuration
                export_inputs["source"] = model_inputs
            row_path = mdir / "latency" / f"{artifact.name}.json"
            stages += [
                Stage(export_key, export_inputs, [artifact, manifest_path(artifact)],
                      lambda b=backend, p=precision: self.export(m, program, b, p),
                      upstream={"source": quant_key} if precision == "int8" else {}),
                Stage(key, {"v": STAGE_VERSIONS["time"], "threads": t.threads, "runs": t.runs, "warmup": t.warmup, "processes": PROCESSES,
                            "system": platform.system()},
                      [row_path], lambda a=artifact, r=row_path: self.time(m, a, model_json, r),
                      upstream={"artifact": export_key, "model": quant_key}),
            ]
        return stages

    def quantize(self, m: LatencyModel, program: Path, model_json: Path) -> None:
        from ..models import describe_model
        from ..models.stats import model_stats
        from ..quantize.job import calibrated_ptq

        model = self.float_model(m)
        stats = model_stats(model)
        q = calibrated_ptq(model, m.recipe)
        q.meta["weights"] = f"random (torch.manual_seed({SEED}))"
        q.save(program.parent, program.name.removesuffix("_int8.pt2"))
        write_text_atomic(model_json, json.dumps({
            "key": m.key, "model": describe_model(m.recipe, model), "params": stats.params, "gmacs": stats.macs / 1e9,
            "head_params": stats.head_params, "head_gmacs": None if stats.head_macs is None else stats.head_macs / 1e9,
        }, indent=2))

    def export(self, m: LatencyModel, program: Path, backend: str, precision: str) -> Path:
        from ..export import ExportSource, export, from_quantized

        if precision == "int8":
            source = from_quantized(program)
        else:
            source = ExportSource(m.recipe, model=self.float_model(m), name=m.name)
        return export(source, backend, precision, self.out / m.folder / "artifacts")

    def time(self, m: LatencyModel, artifact: Path, model_json: Path, row_path: Path) -> None:
        from ..formats.manifest import read_manifest

        t = self.timing
        model = json.loads(model_json.read_text())
        manifest = read_manifest(artifact)
        backend, precision = manifest["backend"], manifest["precision"]
        info = manifest.get("backend_info", {})
        row: dict[str, Any] = {
            "model": m.key, "head": m.head, "backbone": m.backbone, "source": m.source, "backend": backend, "precision": precision,
            "path": str(artifact.relative_to(self.out)), "gmacs": model["gmacs"], "params": model["params"],
            "size_bytes": artifact_size(artifact),
        }
        b = get_backend(backend)
        row["graph"] = b.graph_facts(artifact, info)
        if not b.timed_here():
            row.update(latency_ms=None, load_ms=None, peak_rss_mb=None, rss_before_load_mb=None, gmacs_per_s=None, threads=None,
                       runs=None, evaluated_by="not run", latency_note=b.not_timed_note())
        else:
            from ..evaluate.latency import measure

            # ExecuTorch: ETDump per XNNPACK operator, so the verdict can say what int8/fp32 is made of
            lat = measure(artifact, threads=t.threads, runs=t.runs, warmup=t.warmup, profile=b.per_op_profile, processes=PROCESSES)
            row.update(latency_ms={"median": lat.median_ms, "p90": lat.p90_ms, "min": lat.min_ms, "blocks": lat.block_medians_ms,
                                   "processes": lat.process_medians_ms}, load_ms=lat.load_ms,
                       peak_rss_mb=lat.peak_rss_mb, rss_before_load_mb=lat.rss_before_load_mb,
                       gmacs_per_s=model["gmacs"] / (lat.median_ms / 1e3), threads=lat.threads, runs=lat.runs,
                       evaluated_by=lat.evaluated_by, latency_note=None, profile=lat.profile or None)
        write_text_atomic(row_path, json.dumps(row, indent=2))

    def rows(self, models: list[LatencyModel], peaks: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The timed rows of `models`, in plan order, with their fraction of the runtime's peak (`peaks`: peaks.json)."""
        rows = [json.loads((self.out / m.folder / "latency" / f"{artifact.name}.json").read_text())
                for m in models for _, _, artifact in self.artifacts(m)]
        add_peak_fraction(rows, peaks)
        return rows

    def models_info(self, models: list[LatencyModel]) -> dict[str, Any]:
        return {m.key: json.loads((self.out / m.folder / "model.json").read_text()) for m in models}


def deploy_plan(entries: list[tuple[str, Recipe]], backends: list[str], out: Path, *, threads: int | None):
    """A run's `deploy:` section: (stages, collect), where the stages build, calibrate, export and
    time each entry's architecture at the deploy size into OUT/deploy/<key>/ (keys `deploy/...`),
    and `collect(peaks)` returns the section's doc {"config", "models", "rows", "note"} once they ran.

    `entries`: the run's (key, recipe) pairs, each recipe with its `deploy` set. The architecture is
    the recipe's model (head, backbone, decoder, output stride, classes, head channels; a brought
    model's spec and arguments, not its weights) at `deploy.resolution` and `deploy.width_mult`."""
    first = entries[0][1]
    deploy = first.deploy
    width = float(deploy.width_mult or first.model.width_mult)
    models = [LatencyModel(key, key, at_deploy_size(recipe, deploy.resolution, deploy.calib_size, name=f"{recipe.name}_{DEPLOY_DIR}",
                                                    model={"weights": None} if recipe.model.source else {"width_mult": width}))
              for key, recipe in entries]
    # The run's backends of the default set that this machine times: opt-in ones such as executorch-vulkan add
    # minutes and are timed by `sweep`; one not timed here (Core ML off macOS) would only repeat, at deploy size,
    # the size and graph facts its accuracy rows already give (`sweep` still builds it).
    defaults = [b for b in backends if get_backend(b).default]
    untimed = [b for b in defaults if not get_backend(b).timed_here()]
    timing = Timing(tuple(b for b in defaults if b not in untimed), threads=threads, runs=deploy.runs, warmup=deploy.warmup)
    stages_ = LatencyStages(out / DEPLOY_DIR, timing, prefix=f"{DEPLOY_DIR}/")
    config = {"size": deploy.resolution, "width": width, "classes": first.num_classes, "output_stride": first.model.output_stride,
              "backends": list(timing.backends), "threads": threads, "runs": deploy.runs, "warmup": deploy.warmup,
              "head_channels": first.model.head_channels, "calib_size": deploy.calib_size}

    def collect(peaks: dict[str, Any] | None) -> dict[str, Any]:
        return {"config": config, "models": stages_.models_info(models), "rows": stages_.rows(models, peaks),
                "note": f"the run's models at {deploy.resolution}x{deploy.resolution}, width {width}, with seeded "
                        f"random weights and the shared int8 scheme calibrated on {deploy.calib_size} images (latency does not depend "
                        "on trained values); each artifact timed in its own process"
                        + "".join(f"; {b} is not built at this size ({get_backend(b).not_timed_why}, so it is not timed on "
                                  f"{platform.system()}; the accuracy rows give its size)" for b in untimed)}

    return [stage for m in models for stage in stages_.model_stages(m)], collect
