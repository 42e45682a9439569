"""`aspp-edge sweep`: refusal of bad input, the stages of one tiny sweep, resume, schema, rendering.

The one real sweep of the default selection is tiny (one model at 32x32, width 0.25, TFLite fp32 +
int8, one timed run: about a minute of CPU, most of it two litert-torch conversions) and shared by
the module; `-m slow` adds the same sweep over all three backends. Latency figures are reported by
the sweep, never asserted here.
"""

from __future__ import annotations

import copy
import json
import platform
from pathlib import Path

import pytest

from aspp_edge.cli import main
from aspp_edge.config import load_recipe
from aspp_edge.data import build_dataset, calibration_dataset
from aspp_edge.errors import ConfigError
from aspp_edge.evaluate.latency_table import OVERHEAD_GMACS, verdicts
from aspp_edge.evaluate.sweep_report import latency_png, markdown, validate
from aspp_edge.pipeline import SweepConfig, sweep

TINY = dict(models=("lraspp",), size=32, width=0.25, head_channels=16, backends=("tflite",), runs=1, warmup=0,
            threads=1, peaks=False)
KEY = "lraspp@mobilenet_v2"


# -- refusal of bad input (no model is built) -------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"models": ("no_such_head",)}, ["'no_such_head'", "sep_aspp", "lraspp", "torchvision:NAME"]),
    ({"models": ("aspp@resnet50",)}, ["'resnet50'", "mobilenet_v2", "mobilenet_v3_large"]),
    ({"models": ("torchvision:no_such_builder",)}, ["'no_such_builder'", "lraspp_mobilenet_v3_large"]),
    ({"backends": ("executorch", "onnx")}, ["'onnx'", "coreml", "executorch", "tflite"]),
    ({"size": 100}, ["size 100", "output stride 16"]),
    ({"size": 48, "output_stride": 8}, None),  # valid: 48 is a multiple of 8
    ({"output_stride": 32}, ["32", "8, 16"]),
    ({"width": 0.0}, ["width 0.0", "> 0"]),
    ({"width": -1.0}, ["width -1.0", "> 0"]),
    ({"classes": 1}, ["classes 1"]),
    ({"models": ("aspp", "aspp@mobilenet_v2")}, ["'aspp@mobilenet_v2'", "twice"]),
    ({"runs": 0}, ["runs 0"]),
])
def test_config_refuses_bad_input(kwargs, words):
    if words is None:
        SweepConfig(**{**TINY, **kwargs})
        return
    with pytest.raises(ConfigError) as exc:
        SweepConfig(**{**TINY, **kwargs})
    message = str(exc.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_models_all_and_backbone():
    cfg = SweepConfig(**{**TINY, "models": "all,sep_aspp@mobilenet_v3_large", "backbone": "mobilenet_v2", "backends": "all"})
    keys = [m.key for m in cfg.parsed_models()]
    assert "sep_aspp@mobilenet_v2" in keys and "lraspp@mobilenet_v2" in keys and keys[-1] == "sep_aspp@mobilenet_v3_large"
    assert cfg.backends == ("executorch", "coreml", "tflite")
    assert cfg.parsed_models()[-1].recipe.model.backbone == "mobilenet_v3_large"


def test_defaults_are_the_deploy_configuration():
    cfg = SweepConfig()
    assert (cfg.size, cfg.width, cfg.classes, cfg.output_stride) == (512, 1.0, 21, 16)
    recipe = cfg.parsed_models()[0].recipe
    assert recipe.num_classes == 21 and recipe.class_names[15] == "person" and recipe.data.resolution == 512
    brought = [m for m in cfg.parsed_models() if m.source]
    assert brought and brought[0].recipe.model.source == "torchvision:lraspp_mobilenet_v3_large"


def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--models", "sep_aspp", "--size", "100", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aspp-edge: error:") and "size 100" in err and len(err.splitlines()) == 1
    assert main(["sweep", "--models", "bogus", "--out", str(out)]) == 2
    assert "'bogus'" in capsys.readouterr().err
    assert not out.exists()


def test_sweep_refuses_a_run_folder(tmp_path):
    (tmp_path / "stages.json").write_text(json.dumps({"recipe": "default", "stages": {}}))
    with pytest.raises(ConfigError, match="'default'"):
        sweep(SweepConfig(**TINY), tmp_path, progress=False)


def test_synthetic_classes_name_outputs_but_train_val_are_refused():
    recipe = load_recipe("quick").replace(data={"classes": [f"c{i}" for i in range(21)]})
    assert recipe.num_classes == 21 and len(recipe.class_colors) == 21
    with pytest.raises(ConfigError, match="21 classes.*labelled with 6"):
        build_dataset(recipe, "train")
    with pytest.raises(ConfigError, match="21 classes"):
        build_dataset(recipe, "val")
    calib, split = calibration_dataset(recipe)
    assert split == "calib" and calib[0][0].shape[-1] == recipe.data.resolution
    assert load_recipe("quick").num_classes == 6  # unset: the scenes' own classes, as before


# -- rendering and schema, on a made-up document (no model built) -----------------------------------

def _doc() -> dict:
    def row(model, backend, precision, ms, gmacs, **extra):
        base = {"model": model, "head": model.split("@")[0], "backbone": "mobilenet_v2", "source": None, "backend": backend,
                "precision": precision, "path": f"{model}/{backend}_{precision}", "gmacs": gmacs, "params": 1000, "size_bytes": 10,
                "graph": {}, "latency_ms": {"median": ms, "p90": ms, "min": ms}, "load_ms": 1.0, "peak_rss_mb": 100.0,
                "gmacs_per_s": gmacs / ms * 1e3, "peak_fraction": None, "threads": 2, "runs": 3, "evaluated_by": "x", "latency_note": None}
        return {**base, **extra}

    rows = []
    for model, gmacs, scale in (("sep_aspp@mobilenet_v2", 5.6, 1.0), ("aspp@mobilenet_v2", 12.0, 1.8)):
        rows += [row(model, "executorch", "fp32", 30 * scale, gmacs), row(model, "executorch", "int8", 12 * scale, gmacs),
                 row(model, "tflite", "fp32", 32 * scale, gmacs), row(model, "tflite", "int8", 11 * scale, gmacs),
                 row(model, "coreml", "fp16", 1, gmacs, latency_ms=None, load_ms=None, peak_rss_mb=None, gmacs_per_s=None,
                     evaluated_by="not run", latency_note="Core ML predicts on macOS only", graph={"mil_ops": {"conv": 3}})]
    rows += [row("lraspp@mobilenet_v2", b, p, 0.3, 0.004) for b in ("executorch", "tflite") for p in ("fp32", "int8")]
    models = {k: {"key": k, "model": {}, "params": 1000, "gmacs": g}
              for k, g in (("sep_aspp@mobilenet_v2", 5.6), ("aspp@mobilenet_v2", 12.0), ("lraspp@mobilenet_v2", 0.004))}
    return {"schema_version": 1, "command": "aspp-edge sweep", "machine": {"platform": "p", "processor": "cpu", "cpu_count": 2},
            "date": "2026-11-30", "versions": {"torch": "2.14.1"}, "config": SweepConfig(**{**TINY, "backends": "all"}).to_dict(),
            "runtime_peaks": {}, "note": "made up", "models": models, "rows": rows}


def test_schema_accepts_a_sweep_and_refuses_a_broken_row():
    doc = _doc()
    validate(doc)
    for breaking in ({"latency_note": None, "latency_ms": None}, {"backend": "onnx"}, {"precision": "int4"}):
        bad = copy.deepcopy(doc)
        bad["rows"][0].update(breaking)
        with pytest.raises(ConfigError, match="sweep.schema.json"):
            validate(bad)
    bad = copy.deepcopy(doc)
    del bad["rows"][0]["gmacs"]
    with pytest.raises(ConfigError, match="gmacs"):
        validate(bad)


def test_markdown_states_ratios_runtimes_separable_speedup_and_overhead(tmp_path):
    doc = _doc()
    md = markdown(doc)
    assert "## Separable vs standard ASPP" in md
    assert "| mobilenet_v2 | executorch fp32 | 2.14x | 1.80x |" in md  # MAC ratio 12/5.6 beside the measured 54/30
    said = "\n".join(verdicts(doc))
    assert "sep_aspp runs 1.80x faster measured, against 2.14x fewer MACs" in said
    big = [v for v in verdicts(doc) if "`aspp@mobilenet_v2`" in v]
    tiny = [v for v in verdicts(doc) if "`lraspp@mobilenet_v2`" in v]
    assert big and all("fixed per-operator costs dominate" not in v for v in big)
    assert tiny and all("fixed per-operator costs dominate" in v for v in tiny)
    assert "ExecuTorch 12.00 ms vs LiteRT 11.00 ms" in said
    assert "Core ML predicts on macOS only (no figures invented)" in said
    latency_png(doc["rows"], tmp_path / "s.png", title="made up")
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[0] > 500


def test_run_verdict_notes_overhead_dominated_rows():
    from aspp_edge.evaluate.report import verdict

    def row(precision, ms, gmacs):
        return {"head": "h", "backend": "tflite", "precision": precision, "method": "none" if precision == "fp32" else "ptq",
                "latency_ms": {"median": ms}, "gmacs": gmacs, "evaluated_by": "x", "miou_drop": 0.0, "agreement": 1.0}

    tiny = verdict([row("fp32", 1.0, 0.01), row("int8", 0.9, 0.01)])
    assert any("fixed per-operator costs dominate" in v for v in tiny)
    big = verdict([row("fp32", 10.0, 5.0), row("int8", 3.0, 5.0)])
    assert not any("fixed per-operator costs dominate" in v for v in big)
    assert OVERHEAD_GMACS == 0.5


def test_int8_verdict_says_what_the_ratio_is_made_of():
    """ETDump names of XNNPACK operators grouped by kind; the verdict gives each kind's int8/fp32 time
    and its share of the int8 time, so "int8 1.05x fp32" comes with its reason."""
    from aspp_edge.evaluate.latency_table import int8_breakdown, op_kind, verdicts

    assert [op_kind(n) for n in ("Convolution (NHWC, QS8, QC8W) DWConv", "Fully Connected (NC, QS8, QC8W) GEMM",
                                 "Convolution (NHWC, F32) IGEMM", "Resize Bilinear (NHWC)", "Transpose (ND, X32)",
                                 "Convert (NC, F32, QS8)", "Add (ND)")] == \
        ["depthwise", "GEMM", "GEMM", "resize", "transpose", "convert", "other"]
    fp32 = {"Fully Connected (NC, F32) GEMM": 6.0, "Convolution (NHWC, F32) IGEMM": 1.0, "Convolution (NHWC, F32) DWConv": 3.0}
    int8 = {"Fully Connected (NC, QS8, QC8W) GEMM": 0.8, "Convolution (NHWC, QS8, QC8W) IGEMM": 0.2,
            "Convolution (NHWC, QS8, QC8W) DWConv": 3.3, "Convert (NC, F32, QS8)": 0.2, "Add (ND)": 0.01}
    text = int8_breakdown({"profile": fp32}, {"profile": int8})
    assert text == ("depthwise 1.10x fp32 (73% of int8 time); GEMM 0.14x fp32 (22% of int8 time); "
                    "convert no fp32 twin (4% of int8 time)"), text
    assert int8_breakdown({"profile": None}, {"profile": int8}) == ""

    def row(backend, precision, ms, profile=None):
        return {"model": "m", "backend": backend, "precision": precision, "latency_ms": {"median": ms}, "profile": profile}

    doc = {"models": {"m": {"gmacs": 5.0}}, "rows": [row("executorch", "fp32", 10.0, fp32), row("executorch", "int8", 4.5, int8),
                                                      row("tflite", "fp32", 10.0), row("tflite", "int8", 5.0)]}
    said = "\n".join(verdicts(doc))
    assert "executorch int8 runs in 0.45x the fp32 latency (above the 0.25x target); per operator kind (ETDump, int8/fp32 time): " \
           "depthwise 1.10x fp32" in said, said
    assert "tflite int8 runs in 0.50x the fp32 latency (above the 0.25x target); LiteRT's Python interpreter exposes no " \
           "per-operator times." in said, said


# -- one tiny sweep, shared ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, sweep(SweepConfig(**TINY), out, progress=False)


def _expected_stages(backends) -> list[str]:
    return ([f"quant/{KEY}"] + [f"{s}/{KEY}/{b}/{p}" for b in backends for p in (("fp16",) if b == "coreml" else ("fp32",)) + ("int8",)
                                for s in ("export", "time")] + ["report"])


def _check_rows(out: Path, backends) -> dict:
    doc = json.loads((out / "sweep.json").read_text())
    validate(doc)
    assert doc["config"]["size"] == 32 and doc["config"]["classes"] == 21
    assert [(r["backend"], r["precision"]) for r in doc["rows"]] == [(b, p) for b in backends
                                                                      for p in (("fp16",) if b == "coreml" else ("fp32",)) + ("int8",)]
    for r in doc["rows"]:
        assert (out / r["path"]).exists() and r["gmacs"] > 0 and r["params"] > 0 and r["size_bytes"] > 0
        manifest = json.loads((out / (r["path"] + ".manifest.json")).read_text())
        assert 21 in manifest["output"]["shape"] and len(manifest["labels"]) == 21
        if r["backend"] != "coreml":
            assert r["latency_ms"]["median"] > 0 and r["load_ms"] > 0 and r["peak_rss_mb"] > 0
    return {(r["backend"], r["precision"]): r for r in doc["rows"]}


def test_sweep_stages_and_outputs(tiny_sweep):
    out, result = tiny_sweep
    assert sorted(result.stages_run) == sorted(_expected_stages(["tflite"])) and result.stages_reused == []
    by = _check_rows(out, ["tflite"])
    # the shared scheme on MobileNetV2 LR-ASPP: integer inside (Q/DQ at the float I/O only), one XNNPACK partition
    assert by["tflite", "int8"]["graph"]["xnnpack"]["partitions"] == 1, by["tflite", "int8"]["graph"]
    assert by["tflite", "int8"]["graph"]["qdq_inside"] == 0, by["tflite", "int8"]["graph"]
    md = (out / "sweep.md").read_text()
    assert f"| `{KEY}` |" in md and "fixed per-operator costs dominate" in md
    assert (out / "sweep.png").stat().st_size > 10_000
    assert "stages ran" in result.summary and (out / "sweep.log").is_file()
    # the int8 program carries its recipe, so `aspp-edge export --quantized` can take it
    summary = json.loads(next((out / "lraspp-mobilenet_v2" / "quant").glob("*_int8.json")).read_text())
    assert summary["recipe"]["data"]["resolution"] == 32 and summary["method"] == "ptq"


def test_sweep_resumes_and_redoes_only_a_deleted_artifact(tiny_sweep):
    out, first = tiny_sweep
    again = sweep(SweepConfig(**TINY), out, progress=False)
    assert again.stages_run == [] and sorted(again.stages_reused) == sorted(first.stages_run)
    artifact = out / next(r["path"] for r in first.rows if r["precision"] == "fp32")
    artifact.unlink()
    redo = sweep(SweepConfig(**TINY), out, progress=False)
    assert redo.stages_run == [f"export/{KEY}/tflite/fp32", f"time/{KEY}/tflite/fp32", "report"]
    assert artifact.is_file()


@pytest.mark.slow
def test_sweep_every_backend(tmp_path):
    backends = ["executorch", "tflite", "coreml"]
    result = sweep(SweepConfig(**{**TINY, "backends": tuple(backends)}), tmp_path, progress=False)
    assert sorted(result.stages_run) == sorted(_expected_stages(backends))
    by = _check_rows(tmp_path, backends)
    assert by["executorch", "int8"]["graph"]["node_fraction"] == 1.0  # fully delegated
    for p in ("fp16", "int8"):
        core = by["coreml", p]
        assert core["graph"]["mil_ops"]
        if platform.system() == "Darwin":
            assert core["latency_ms"]["median"] > 0
        else:  # not timed off macOS, and the row says why
            assert core["latency_ms"] is None and "Core ML predicts on macOS only" in core["latency_note"]
    assert "ExecuTorch/LiteRT int8" in (tmp_path / "sweep.md").read_text()


# -- a run's deploy section: the same architecture timed at deploy size -----------------------------

@pytest.mark.parametrize("deploy, words", [
    ({"resolution": 100}, ["deploy.resolution 100", "output_stride 16"]),
    ({"resolution": 16}, ["deploy.resolution 16", "minimum 32"]),
    ({"width_mult": 0.0}, ["deploy.width_mult 0.0", "> 0"]),
    ({"calib_size": 2}, ["deploy.calib_size 2", ">= 8"]),
    ({"size": 512}, ["'deploy.size'", "resolution"]),
])
def test_deploy_section_refuses_bad_input(deploy, words):
    with pytest.raises(ConfigError) as exc:
        load_recipe("quick").replace(deploy=deploy)
    message = str(exc.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_default_recipe_times_its_architecture_at_512():
    deploy = load_recipe("default").deploy
    assert deploy is not None and deploy.resolution == 512 and load_recipe("quick").deploy is None


def test_run_deploy_plan_builds_the_architecture_at_deploy_size(tmp_path):
    """The deploy section's stages, planned without running them (the end-to-end run is the full tier's
    test below): per backend it offers, export and time fp32 and int8 of the run's architecture at the
    deploy resolution (Core ML: fp16 and int8, on macOS only, where it is timed), after one quantize stage."""
    from aspp_edge.pipeline import plan_models
    from aspp_edge.pipeline.latency import deploy_plan

    recipe = load_recipe("quick").replace(deploy={"resolution": 96, "runs": 1, "warmup": 0})
    stages, collect = deploy_plan(plan_models(recipe, None, None), ["executorch", "coreml", "tflite"], tmp_path, threads=1)
    keys = [s.key for s in stages]
    assert keys[0] == "deploy/quant/sep_aspp" and callable(collect)
    timed = ("executorch", "coreml", "tflite") if platform.system() == "Darwin" else ("executorch", "tflite")
    assert sorted(keys[1:]) == sorted(f"deploy/{s}/sep_aspp/{b}/{p}" for s in ("export", "time") for b in timed
                                      for p in ("fp16" if b == "coreml" else "fp32", "int8"))
    assert all(str(o).startswith(str(tmp_path / "deploy")) for s in stages for o in s.outputs)
    assert not (tmp_path / "deploy").exists()  # planning writes nothing


@pytest.mark.full  # quantize + two exports + two timing processes at 96x96: ~100 s
def test_run_deploy_section_adds_architecture_latency_rows(quick_run, tmp_path):
    """On a copy of the shared quick run (its stages reused), a deploy section at 96x96 adds the
    architecture's ExecuTorch fp32 and int8 rows; the report shows them apart and its verdict states
    int8/fp32 from them, not from the 64x64 accuracy rows; a second run reuses every stage."""
    import shutil

    from aspp_edge.formats.manifest import read_manifest
    from aspp_edge.pipeline import run

    out = tmp_path / "run"
    shutil.copytree(quick_run, out)
    recipe = load_recipe("quick").replace(deploy={"resolution": 96, "runs": 1, "warmup": 0})
    summary = run(recipe, out, methods="ptq", backends="executorch", runs=3, peaks=False, progress=False)
    ran = json.loads((out / "stages.json").read_text())["stages"]
    assert sorted(k for k in ran if k.startswith("deploy/")) == sorted(
        f"deploy/{s}/sep_aspp{t}" for s, t in [("quant", ""), ("export", "/executorch/fp32"), ("export", "/executorch/int8"),
                                                             ("time", "/executorch/fp32"), ("time", "/executorch/int8")])
    doc = summary.deploy
    assert doc is not None and [(r["backend"], r["precision"]) for r in doc["rows"]] == [("executorch", "fp32"), ("executorch", "int8")]
    assert all(r["latency_ms"]["median"] > 0 for r in doc["rows"])
    for r in doc["rows"]:
        assert read_manifest(out / "deploy" / r["path"])["input"]["shape"] == [1, 3, 96, 96]
    # conv MACs scale with the pixel count: (96/64)^2 = 2.25 times the accuracy rows' GMACs, within 0.05
    small = json.loads((out / "sep_aspp" / "reference.json").read_text())["gmacs"]
    assert abs(doc["models"]["sep_aspp"]["gmacs"] / small - 2.25) < 0.05
    report = json.loads((out / "report.json").read_text())
    assert report["deploy"]["rows"][1]["latency_ms"] == doc["rows"][1]["latency_ms"]
    md = (out / "report.md").read_text()
    assert "## Architecture latency at deploy size (96x96, width 0.25, calibrated-only weights)" in md
    verdict = md.split("## Verdict")[1]
    assert "at 96x96 (architecture latency) `sep_aspp`: executorch int8 runs in" in verdict
    assert "- sep_aspp: executorch int8 runs in" not in verdict
    again = run(recipe, out, methods="ptq", backends="executorch", runs=3, peaks=False, progress=False)
    assert again.stages_run == 0
