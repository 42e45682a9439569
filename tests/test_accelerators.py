"""Artifacts for the phone's accelerators (issue 22): ExecuTorch delegated to Core ML (checked in the
MIL reference interpreter) and to Vulkan (structure only here), TFLite with fp16 weights, and the
half-precision check of the float model.

One trained quick-recipe model (sep_aspp, 64x64, width 0.25, 4 epochs) and its PTQ program serve every
test: agreement is read only where the reference predicts several classes (`_agree`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from aspp_edge import runtime
from aspp_edge.config import PTQConfig
from aspp_edge.errors import AsppEdgeError, ConfigError
from aspp_edge.evaluate.results import EvaluatedBy, Evaluation
from aspp_edge.export import ExportSource, export
from aspp_edge.export.inspect import format_inspection, inspect_artifact
from aspp_edge.formats import BACKENDS, DEFAULT_BACKENDS, backend_for
from aspp_edge.formats.manifest import manifest_path, read_manifest
from aspp_edge.models.half import half_precision_check
from aspp_edge.quantize import quantize

# Issue 22's floors: the Core ML delegate's program against the .mlpackage of the same program, and
# its fp16 program against the float model; the fp16 .tflite against the fp32 one.
DELEGATE_VS_PACKAGE, FP16_VS_FLOAT, TFLITE_FP16_VS_FP32 = 0.999, 0.995, 0.995
MIN_CLASSES = 3  # of the quick recipe's 6, in the reference argmax over the 4 val images
INT8_CROSS_BACKEND = 0.99  # an int8 artifact vs another backend's of the same program (evaluate/report.py's CROSS_MIN_AGREEMENT)


@pytest.fixture(scope="module")
def source(head_models, quick_calib):
    """The quick recipe's sep_aspp trained 4 epochs (shared with test_quantize and test_sensitivity): an
    untrained model predicts one class everywhere, where agreement would hold whatever the export did."""
    recipe = head_models.recipe_for("sep_aspp")
    model = head_models["sep_aspp"].eval()
    q = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib)
    return ExportSource(recipe, model=model, program=q.convert(fold_quantize=False), method="ptq", name="acc")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("accelerators")


@pytest.fixture(scope="module")
def exported(source, out):
    """Each (backend, precision) exported once per module."""
    done = {}

    def get(backend: str, precision: str, **options):
        key = backend, precision, tuple(sorted(options.items()))
        if key not in done:
            done[key] = export(source, backend, precision, out, options=options or None)
        return done[key]

    return get


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    """Argmax agreement; the first array (the reference side) must predict several classes, or
    agreement would be near 1 whatever the other computed."""
    classes = np.unique(a.argmax(1))
    assert len(classes) >= MIN_CLASSES, f"the reference predicts only classes {classes.tolist()}: agreement would say little"
    return float((a.argmax(1) == b.argmax(1)).mean())


def _manifest(path, backend, precision, checked_here):
    m = read_manifest(path)  # validated against the schema
    assert (m["backend"], m["precision"], m["checked_here"]) == (backend, precision, checked_here)
    assert backend_for(path).name == backend  # the .pte's backend comes from its manifest
    info = inspect_artifact(path)
    assert info["manifest"]["backend"] == backend
    text = format_inspection(info)
    assert f"checked here  {checked_here}" in text
    return m


def test_executorch_coreml_fp16_runs_in_the_mil_interpreter(source, exported, val_images):
    path = exported("executorch-coreml", "fp16")
    assert path.name == "acc_executorch-coreml_fp16.pte"
    m = _manifest(path, "executorch-coreml", "fp16", "mil-reference")
    info = m["backend_info"]
    assert (info["delegate"], info["partitions"], info["node_fraction"], info["conv_mac_fraction"]) == ("CoreMLBackend", 1, 1.0, 1.0)
    assert (info["compute_units"], info["minimum_deployment_target"], info["checked_here"]) == ("all", "iOS16", "mil-reference")
    assert info["fp16_check"]["argmax_agreement"] >= FP16_VS_FLOAT
    runner = runtime.load(path)
    assert type(runner).__name__ == "CoreMLDelegateRunner" and runner.evaluated_by == "mil-reference"
    assert EvaluatedBy(runner.evaluated_by).kind is Evaluation.INTERPRETER  # accuracy rows, no latency
    delegate = runner.predict(val_images)
    package = runtime.load(exported("coreml", "fp16")).predict(val_images)
    with torch.no_grad():
        reference = source.model(val_images).numpy()
    assert _agree(delegate, package) >= DELEGATE_VS_PACKAGE, _agree(delegate, package)
    assert _agree(delegate, reference) >= FP16_VS_FLOAT, _agree(delegate, reference)


@pytest.mark.slow
def test_executorch_coreml_int8_agrees_with_the_w8a8_package(exported, val_images):
    path = exported("executorch-coreml", "int8", compute_units="cpu_and_ne")
    m = _manifest(path, "executorch-coreml", "int8", "mil-reference")
    assert (m["backend_info"]["compute_units"], m["backend_info"]["minimum_deployment_target"]) == ("cpu_and_ne", "iOS17")
    assert m["backend_info"]["mil_ops"]["constexpr_affine_dequantize"] > 0
    delegate = runtime.load(path).predict(val_images)
    package = runtime.load(exported("coreml", "int8")).predict(val_images)
    # Two W8A8 fp16 Core ML programs of one int8 program, fed differently: the .mlpackage takes uint8
    # pixels and normalizes inside (fp16), the delegate takes the normalized tensor (a likely cause of
    # the difference, not verified: activations near a rounding edge of the first int8 quantize can
    # land one step apart); measured 0.9935 on the
    # quick recipe (benchmarks/results/run_quick_accelerators_report.md). The floor is the int8
    # cross-backend one (0.99), not the fp16 program's 0.999.
    assert _agree(delegate, package) >= INT8_CROSS_BACKEND, _agree(delegate, package)


def test_tflite_fp16_weights_agree_with_fp32(exported, val_images):
    fp16, fp32 = exported("tflite", "fp16"), exported("tflite", "fp32")
    m = _manifest(fp16, "tflite", "fp16", "runtime")
    info = m["backend_info"]
    assert info["fp16_weight_dequantize"] > 0 and info["qdq_inside"] == [] and "fp16_check" in info
    assert fp16.stat().st_size < 0.7 * fp32.stat().st_size  # float16 weights: about half the bytes
    a, b = runtime.load(fp16).predict(val_images), runtime.load(fp32).predict(val_images)
    assert _agree(a, b) >= TFLITE_FP16_VS_FP32, _agree(a, b)
    assert "fp16 weights (DEQUANTIZE)" in format_inspection(inspect_artifact(fp16))


def test_executorch_vulkan_is_structure_only_here(exported):
    path = exported("executorch-vulkan", "fp32")
    m = _manifest(path, "executorch-vulkan", "fp32", "structure only")
    info = m["backend_info"]
    assert info["delegate"] == "VulkanBackend" and info["node_fraction"] == 1.0 and info["ops_on_cpu"] == {}
    with pytest.raises(runtime.RuntimeMissing, match="needs a Vulkan device"):
        runtime.load(path)
    # what a run's eval stage makes of it: a "not run" row with no figures, not an error and not a number
    from aspp_edge.evaluate.measure import measure_artifact

    result, masks = measure_artifact(path, root=path.parent, head="acc", gmacs=0.1, reference=None, val=None, batch_size=1,
                                     threads=1, runs=1, warmup=0)
    row = result.to_row()
    assert row["evaluated_by"].startswith("not run: needs a Vulkan device") and not EvaluatedBy(row["evaluated_by"]).ran
    assert (row["backend"], row["precision"], row["miou"], row["agreement"], row["latency_ms"]) == ("executorch-vulkan", "fp32", None, None, None)
    assert masks.size == 0


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_executorch_vulkan_fp16_and_int8(exported, precision):
    m = _manifest(exported("executorch-vulkan", precision), "executorch-vulkan", precision, "structure only")
    if precision == "int8":  # the delegate's int8 conv kernels take conv [-> relu] between Q/DQ; ReLU6 convs stay float
        assert m["backend_info"]["int8_conv_kernels"] > 0
    else:
        assert "fp16_check" in m["backend_info"]


def test_bad_requests_are_refused_with_nothing_written(source, tmp_path):
    for backend, precision, options, message in (
        ("executorch-coreml", "fp32", None, "unknown precision for executorch-coreml 'fp32'; valid choices: fp16, int8"),
        ("executorch-vulkan", "bf16", None, "unknown precision for executorch-vulkan 'bf16'; valid choices: fp16, fp32, int8"),
        ("executorch-coreml", "fp16", {"compute_units": "npu"},
         "unknown compute_units for executorch-coreml 'npu'; valid choices: all, cpu_and_gpu, cpu_and_ne, cpu_only"),
        ("executorch-coreml", "fp16", {"threads": "4"}, "unknown option for executorch-coreml 'threads'"),
        ("tflite", "fp16", {"compute_units": "all"}, "unknown option for tflite 'compute_units'"),
        ("executorch-coreml", "int8", {"minimum_deployment_target": "iOS16"}, "need iOS17; valid choices: iOS17, iOS18"),
    ):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            export(source, backend, precision, tmp_path, options=options)
    assert list(tmp_path.iterdir()) == []


def test_pte_backend_comes_from_the_manifest(exported, tmp_path):
    path = exported("executorch-vulkan", "fp32")
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    with pytest.raises(AsppEdgeError, match="written by one of executorch, executorch-coreml, executorch-vulkan; its manifest says which"):
        runtime.load(copy)
    manifest = json.loads(manifest_path(path).read_text())
    manifest_path(copy).write_text(json.dumps({**manifest, "backend": "tflite"}))
    with pytest.raises(AsppEdgeError, match="unknown backend of a .pte manifest 'tflite'"):
        backend_for(copy)
    with pytest.raises(AsppEdgeError, match="not found"):
        runtime.load(tmp_path / "missing.pte")


def test_accelerator_backends_are_opt_in():
    assert DEFAULT_BACKENDS == ("executorch", "coreml", "tflite")
    assert {b.name for b in BACKENDS.values() if not b.default} == {"executorch-coreml", "executorch-vulkan"}
    from aspp_edge.pipeline import parse_choices

    assert parse_choices("all", tuple(BACKENDS), "backend", DEFAULT_BACKENDS, all_=DEFAULT_BACKENDS) == list(DEFAULT_BACKENDS)
    assert parse_choices("tflite,executorch-coreml", tuple(BACKENDS), "backend", DEFAULT_BACKENDS) == ["tflite", "executorch-coreml"]


def test_half_precision_check_flags_overflow_and_lost_accuracy():
    torch.manual_seed(0)
    big = nn.Conv2d(3, 4, 1)
    nn.init.constant_(big.weight, 3e4)  # 3 channels x 3e4 x |x| ~ 1: beyond fp16's 65504
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), big, nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    report = half_precision_check(model, torch.randn(1, 3, 16, 16))
    flagged = {r["layer"]: r["why"] for r in report["flagged"]}
    assert "overflows fp16" in flagged["1"] and "0" not in flagged
    tiny = nn.Sequential(nn.Conv2d(3, 3, 1)).eval()
    nn.init.constant_(tiny[0].weight, 1e-7)
    nn.init.zeros_(tiny[0].bias)
    assert "under fp16's normal range" in half_precision_check(tiny, torch.randn(1, 3, 8, 8))["flagged"][0]["why"]
