"""Export: every head to ExecuTorch, TFLite and Core ML, loaded back in its runtime and compared."""

from __future__ import annotations

import json
import platform
import sys

import numpy as np
import pytest
import torch

from aspp_edge.calibration.report import sqnr_db
from aspp_edge.config import PTQConfig
from aspp_edge.data import build_dataset
from aspp_edge.errors import AsppEdgeError, ConfigError
from aspp_edge.export import ExportSource, artifact_sha256, export, from_checkpoint, from_quantized
from aspp_edge.export.coreml import PREVIEW_PARAMS, PREVIEW_TYPE, mlpackage_summary
from aspp_edge.export.inspect import format_inspection, inspect_artifact
from aspp_edge.formats.manifest import ManifestError, manifest_path, read_manifest, validate_manifest
from aspp_edge.export.tflite import read_metadata, tflite_summary
from aspp_edge.models import list_models
from aspp_edge.quantize import quantize
from aspp_edge import runtime
from aspp_edge.runtime.litert import xnnpack_delegation

FP32_MAX_ABS = 1e-3  # fp32 artifact logits vs PyTorch float (issue threshold)
# int8 artifact vs the PyTorch int8 program it was made from, argmax agreement on the 4 val images
# below (target 0.99) and logits SQNR. Measured on this file's test models (quick recipe, 4 epochs,
# PTQ-minmax on 32 calib images) for lraspp, sep_aspp, sep_se_aspp and lraspp@mobilenet_v3_large,
# train seeds 0-2 (seed 0 is what the tests train), 12 models: .pte 0.9901-1.0, .tflite 0.9910-1.0,
# .pte vs .tflite 0.9973-1.0, SQNR >= 33.0 dB. The .pte/.tflite floor is the target.
INT8_AGREEMENT, INT8_SQNR_DB = 0.99, 25.0
# Core ML W8A8 is an fp16 program (fp16 scales, weights, biases and tensors between ops; README,
# "Why Core ML W8A8 agrees less"), so it sits below the integer kernels by construction: on the same
# 12 models 0.9828-0.9999 against the program (sep_aspp seed 0 lowest; the same program converted
# with FLOAT32 compute: 0.9964-1.0) and 0.9839-0.9999 against the .pte, SQNR >= 29.3 dB. Its floor
# is 0.98, the lowest measured less 0.003, below the 0.99 target for that reason.
COREML_INT8_AGREEMENT = 0.98
# Core ML packages (issue 6), run by Core ML on macOS and by the MIL reference interpreter elsewhere
COREML_FP16_AGREEMENT = 0.995
# and its logits' SQNR against the float model: fp16 rounding alone stays near 60 dB (64 dB in the
# quick run); argmax agreement alone can miss a wrong program on a tiny model whose masks are mostly
# one class (a dropped dilation kept 0.9952 agreement on one machine's model)
COREML_FP16_SQNR_DB = 40
SE_HEADS = {"se_aspp", "sep_se_aspp", "lraspp"}
# Heads whose trained export matrix runs here in `make test`: LR-ASPP (sigmoid gate + its own
# decoder). The default head, sep_aspp (depthwise-separable atrous), has its six trained artifacts
# checked by the shared `aspp-edge run --recipe quick` (tests/test_pipeline.py) and its Core ML
# conversion by test_mil; every other head's Core ML conversion is checked in test_mil too. The
# other heads' matrices are marked slow (`pytest -m slow`), to keep `make test` well under 10
# minutes: one head's six exports cost about two minutes of CPU.
# MobileNetV3 (`head@backbone`): the trained matrix runs with `-m slow` (about ten CPU minutes on
# 2 cores under load); `make test` exports an untrained MobileNetV3 LR-ASPP's int8 program to
# ExecuTorch and LiteRT and checks delegation and agreement (tests/test_mobilenet_v3.py).
CORE_HEADS = ("lraspp",)
MNV3_HEADS = ("lraspp@mobilenet_v3_large", "sep_aspp@mobilenet_v3_large")
HEAD = "lraspp"  # the trained head the single-artifact tests below use (its exports are shared with the matrix)


def _heads():
    return [h if h in CORE_HEADS else pytest.param(h, marks=pytest.mark.slow) for h in (*list_models(), *MNV3_HEADS)]


class Sources:
    """Per head, on first use: the trained quick model + its PTQ program saved and loaded back."""

    def __init__(self, heads, calib, root) -> None:
        self.heads, self.calib, self.root, self._cache = heads, calib, root, {}

    def __getitem__(self, head: str) -> ExportSource:
        if head not in self._cache:
            recipe = self.heads.recipe_for(head)
            ckpt = self.heads.checkpoint(head)
            source = from_checkpoint(ckpt, recipe, name=f"quick_{head.replace('@', '_')}")
            q = quantize(source.model, PTQConfig(observer="minmax"), calibration=self.calib)
            q.meta = {"recipe": recipe.to_dict(), "source_checkpoint_sha256": source.checkpoint_sha256}
            pt2 = q.save(self.root / head, f"quick_{head.replace('@', '_')}_ptq")
            self._cache[head] = from_quantized(pt2, source)
        return self._cache[head]


@pytest.fixture(scope="session")
def sources(head_models, quick_calib, tmp_path_factory):
    return Sources(head_models, quick_calib, tmp_path_factory.mktemp("programs"))


class Artifacts:
    """Each (head, backend, precision) exported once per session into one folder; tests that
    change a file work on a copy."""

    def __init__(self, sources, root) -> None:
        self.sources, self.root, self._cache = sources, root, {}

    def __call__(self, head: str, backend: str, precision: str):
        key = head, backend, precision
        if key not in self._cache:
            self._cache[key] = export(self.sources[head], backend, precision, self.root / head)
        return self._cache[key]

    def copy(self, head: str, backend: str, precision: str, dest):
        import shutil

        src = self(head, backend, precision)
        shutil.copy2(manifest_path(src), manifest_path(dest / src.name))
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / src.name)
        return dest / src.name


@pytest.fixture(scope="session")
def artifacts(sources, tmp_path_factory):
    return Artifacts(sources, tmp_path_factory.mktemp("artifacts"))


def _check_manifest(path, backend, precision):
    manifest = read_manifest(path)
    assert manifest["sha256"] == artifact_sha256(path)
    assert (manifest["backend"], manifest["precision"]) == (backend, precision)
    assert len(manifest["labels"]) == len(manifest["colors"]) == manifest["model"]["num_classes"]
    return manifest


@pytest.mark.parametrize("head", _heads())
def test_every_backend_every_head(head, sources, artifacts, val_images):
    """One head's six artifacts, each run in its runtime (Core ML: MIL reference interpreter off
    macOS) and compared with PyTorch and with each other. One test per head keeps the head's
    training, PTQ and exports on one xdist worker."""
    source = sources[head]
    with torch.no_grad():
        float_logits = source.model(val_images).numpy()
        int8_logits = source.program(val_images).numpy()
    outputs = {}
    for backend in ("executorch", "tflite"):
        for precision in ("fp32", "int8"):
            path = artifacts(head, backend, precision)
            manifest = _check_manifest(path, backend, precision)
            logits = runtime.load(path).predict(val_images)
            assert logits.shape == float_logits.shape
            outputs[backend, precision] = logits
            if precision == "fp32":
                err = np.abs(logits - float_logits).max()
                assert err <= FP32_MAX_ABS, f"{head} {backend} fp32: max abs logit error {err:.2e}"
                continue
            agreement = (logits.argmax(1) == int8_logits.argmax(1)).mean()
            sqnr = sqnr_db(torch.from_numpy(int8_logits), torch.from_numpy(logits))
            assert agreement >= INT8_AGREEMENT and sqnr >= INT8_SQNR_DB, f"{head} {backend} int8: {agreement:.4f}, {sqnr:.1f} dB"
            info = manifest["backend_info"]
            if backend == "executorch":
                assert info["conv_mac_fraction"] == 1.0 and info["conv_macs_total"] > 0, info
                assert info["undelegated_ops"] == {}, info["undelegated_ops"]
            else:
                # the whole graph is int8: Q/DQ only at the float I/O, none inside, SE heads included
                assert info["qdq_inside"] == [], info["qdq_inside"]
                assert [s.split()[0] for s in info["qdq_at_io"]] == ["QUANTIZE", "DEQUANTIZE"]
                # and LiteRT's XNNPACK delegate takes all of it: one partition, nothing left to builtin kernels
                xnnpack = xnnpack_delegation(path)
                assert (xnnpack["partitions"], xnnpack["ops_outside"]) == (1, {}), xnnpack
                if head in SE_HEADS:
                    assert info["ops"].get("LOGISTIC", 0) >= 1  # the gate runs as int8 LOGISTIC
    a, b = outputs["executorch", "int8"].argmax(1), outputs["tflite", "int8"].argmax(1)
    assert (a == b).mean() >= INT8_AGREEMENT

    for precision in ("fp16", "int8"):
        path = artifacts(head, "coreml", precision)
        _check_coreml_package(path, source, precision)
        runner = runtime.load(path)
        if platform.system() == "Darwin":
            assert runner.evaluated_by.startswith("coreml-runtime")
        else:
            assert runner.evaluated_by == "mil-reference"
        logits = runner.predict(val_images)
        assert logits.shape == float_logits.shape
        if precision == "fp16":  # issue 6: fp16 program vs PyTorch float, agreement >= 0.995
            agreement, sqnr, ok = _fp16_check(logits, float_logits)
            assert ok, f"{head} coreml fp16: agreement {agreement:.4f}, {sqnr:.1f} dB"
            continue
        # issue 6: W8A8 vs the PyTorch int8 program (agreement, SQNR) and vs the .tflite/.pte of that program
        agreement = (logits.argmax(1) == int8_logits.argmax(1)).mean()
        sqnr = sqnr_db(torch.from_numpy(int8_logits), torch.from_numpy(logits))
        # an fp16 program: its own measured floor (COREML_INT8_AGREEMENT, beside INT8_AGREEMENT above)
        assert agreement >= COREML_INT8_AGREEMENT and sqnr >= INT8_SQNR_DB, f"{head} coreml int8: {agreement:.4f}, {sqnr:.1f} dB"
        for backend in ("executorch", "tflite"):
            other = (logits.argmax(1) == outputs[backend, "int8"].argmax(1)).mean()
            assert other >= COREML_INT8_AGREEMENT, f"{head} coreml int8 vs {backend} int8: agreement {other:.4f}"


def _fp16_check(logits, float_logits):
    """(agreement, SQNR dB, passes) of an fp16 program's logits against the float model's."""
    agreement = (logits.argmax(1) == float_logits.argmax(1)).mean()
    sqnr = sqnr_db(torch.from_numpy(np.asarray(float_logits)), torch.from_numpy(np.asarray(logits)))
    return agreement, sqnr, agreement >= COREML_FP16_AGREEMENT and sqnr >= COREML_FP16_SQNR_DB


def _check_coreml_package(path, source, precision):
    """The package as apps see it: image input, preview metadata, the W8A8 ops where asked."""
    import coremltools as ct

    manifest = _check_manifest(path, "coreml", precision)
    assert manifest["input"]["kind"] == "image" and manifest["input"]["normalization"]["applied_by"] == "model"
    spec = ct.utils.load_spec(str(path))  # loads back on Linux
    (inp,), (out,) = spec.description.input, spec.description.output
    assert inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
    assert (inp.type.imageType.width, inp.type.imageType.height) == (64, 64)
    assert out.name == "logits"
    meta = spec.description.metadata.userDefined
    assert meta[PREVIEW_TYPE] == "imageSegmenter"
    assert json.loads(meta[PREVIEW_PARAMS])["labels"] == list(source.recipe.class_names)
    assert json.loads(meta["aspp_edge.normalization"])["mean"] == list(source.recipe.data.mean)
    ops = mlpackage_summary(path)["ops"]
    assert ops.get("conv", 0) > 0
    assert "mil-reference  runs every op of this program" in format_inspection(inspect_artifact(path))
    if precision == "int8":
        assert ops.get("constexpr_affine_dequantize", 0) > 0 and ops.get("quantize", 0) > 0, ops
    else:
        assert "quantize" not in ops


def test_coreml_image_preprocessing_is_the_recipe_normalization(quick_recipe):
    """ImageType scale/bias plus the model's leading per-channel factor reproduce (p/255 - mean)/std."""
    from aspp_edge.export.coreml import image_preprocessing

    scale, bias, factor = image_preprocessing(quick_recipe)
    pixels = torch.randint(0, 256, (1, 3, 8, 8)).float()
    mean = torch.tensor(quick_recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(quick_recipe.data.std).view(1, 3, 1, 1)
    core_ml = (scale * pixels + torch.tensor(bias).view(1, 3, 1, 1)) * torch.tensor(factor).view(1, 3, 1, 1)
    torch.testing.assert_close(core_ml, (pixels / 255 - mean) / std, rtol=1e-5, atol=1e-5)


def test_scalar_normalization_plus_model_affine_is_the_recipe_normalization(quick_recipe):
    """MediaPipe's one-mean/one-std input, completed by the model's leading affine, is exact."""
    from aspp_edge.export.preprocess import scalar_normalization

    norm, scale, bias = scalar_normalization(quick_recipe)
    pixels = torch.randint(0, 256, (1, 3, 8, 8)).float()
    u = (pixels * norm["pixel_scale"] - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    x = u * torch.tensor(scale).view(1, 3, 1, 1) + torch.tensor(bias).view(1, 3, 1, 1)
    mean = torch.tensor(quick_recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(quick_recipe.data.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (pixels / 255 - mean) / std, rtol=1e-5, atol=1e-5)


def test_tflite_metadata_and_mediapipe_image_segmenter(artifacts, quick_recipe):
    """The int8 .tflite with our metadata runs in MediaPipe Tasks' ImageSegmenter (the real client
    of Android/iOS apps using MediaPipe) and its category mask matches our runner's argmax."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageSegmenter, ImageSegmenterOptions

    path = artifacts(HEAD, "tflite", "int8")
    meta, files = read_metadata(path)
    assert files["labels.txt"].split() == list(quick_recipe.class_names)
    assert meta["input"]["mean"] == meta["input"]["std"] == [127.5]  # one mean/std; the per-channel rest is in the model
    assert meta["activation"] == "SOFTMAX"

    val = build_dataset(quick_recipe, "val")
    runner = runtime.load(path)
    options = ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(path)), output_category_mask=True)
    agreements = []
    with ImageSegmenter.create_from_options(options) as segmenter:
        for i in range(4):
            raw, _ = val.raw(i)
            mask = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(raw))).category_mask
            ours = runner.predict(val[i][0][None]).argmax(1)[0]
            agreements.append((mask.numpy_view().squeeze() == ours).mean())
    assert np.mean(agreements) >= 0.99, agreements


def test_tflite_nchw_with_int8_io(sources, val_images, tmp_path):
    source = sources[HEAD]
    path = export(source, "tflite", "int8", tmp_path, layout="NCHW", io_dtype="int8")
    manifest = read_manifest(path)
    assert manifest["input"]["layout"] == "NCHW" and manifest["input"]["dtype"] == "int8"
    assert manifest["input"]["quantization"]["dtype"] == "int8" and manifest["output"]["quantization"] is not None
    summary = tflite_summary(path)
    assert summary["qdq_at_io"] == [] and summary["qdq_inside"] == []
    text = format_inspection(inspect_artifact(path))
    assert "Q/DQ inside   0" in text and "labels.txt" in text
    assert summary["inputs"][0]["shape"] == [1, 3, 64, 64]
    with torch.no_grad():
        reference = source.program(val_images).numpy()
    logits = runtime.load(path).predict(val_images)  # the runner (de)quantizes from the manifest
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= INT8_AGREEMENT


def test_failed_export_leaves_nothing(sources, tmp_path, monkeypatch):
    monkeypatch.setenv("ASPP_EDGE_FAIL_AT", "before-rename")
    for backend, precision in (("executorch", "fp32"), ("coreml", "fp16")):
        with pytest.raises(AsppEdgeError, match="on purpose"):
            export(sources[HEAD], backend, precision, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_manifest_schema_rejects_bad_manifests(artifacts, tmp_path):
    path = artifacts.copy(HEAD, "executorch", "fp32", tmp_path)
    manifest = read_manifest(path)
    validate_manifest(manifest)
    for broken in ({**manifest, "precision": "int4"}, {k: v for k, v in manifest.items() if k != "sha256"},
                   {**manifest, "input": {**manifest["input"], "layout": "CHWN"}}):
        with pytest.raises(ManifestError, match="not valid"):
            validate_manifest(broken)
    manifest_path(path).write_text("{not json")
    with pytest.raises(ManifestError, match="not JSON"):
        runtime.load(path)


def test_bad_export_requests(sources, quick_recipe, tmp_path):
    source = sources[HEAD]
    with pytest.raises(ConfigError, match="unknown backend 'onnx'; valid choices: coreml, executorch, executorch-coreml, executorch-vulkan, tflite"):
        export(source, "onnx", "fp32", tmp_path)
    with pytest.raises(ConfigError, match="unknown precision for executorch 'fp16'; valid choices: fp32, int8"):
        export(source, "executorch", "fp16", tmp_path)
    float_only = ExportSource(quick_recipe, model=source.model)
    with pytest.raises(ConfigError, match="int8 export needs a quantized program"):
        export(float_only, "tflite", "int8", tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AsppEdgeError, match="cannot be created"):
        export(source, "executorch", "fp32", blocker / "out")
    assert list(tmp_path.iterdir()) == [blocker]


def test_truncated_and_foreign_files_are_named(artifacts, tmp_path):
    good = artifacts(HEAD, "tflite", "fp32")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(data[: len(data) // 3])
    manifest_path(truncated).write_text(manifest_path(good).read_text())
    with pytest.raises(AsppEdgeError, match="truncated.tflite"):
        runtime.load(truncated)
    with pytest.raises(AsppEdgeError, match="truncated or corrupt TFLite"):
        inspect_artifact(truncated)
    for name, expected in (("foreign.pte", "not an ExecuTorch program"), ("foreign.tflite", "not a TFLite model")):
        (tmp_path / name).write_bytes(b"PK\x03\x04 not a model at all")
        with pytest.raises(AsppEdgeError, match=expected):
            runtime.load(tmp_path / name)
        with pytest.raises(AsppEdgeError, match=expected):
            inspect_artifact(tmp_path / name)
    (tmp_path / "foreign.mlpackage").mkdir()
    with pytest.raises(AsppEdgeError, match="not a Core ML package"):
        inspect_artifact(tmp_path / "foreign.mlpackage")
    with pytest.raises(AsppEdgeError, match="unknown artifact type '.onnx'"):
        runtime.load(tmp_path / "model.onnx")


def test_missing_runtime_names_the_pip_line(artifacts, monkeypatch):
    path = artifacts(HEAD, "tflite", "fp32")
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(runtime.RuntimeMissing, match="pip install ai-edge-litert==2.3.0"):
        runtime.load(path)


def test_cli_export_and_inspect(head_models, tmp_path, capsys):
    from aspp_edge.cli import main

    ckpt = head_models.checkpoint(HEAD)
    assert main(["export", "--checkpoint", str(ckpt), "--backend", "executorch", "--precision", "fp32", "--out", str(tmp_path)]) == 0
    artifact = tmp_path / "quick_executorch_fp32.pte"
    assert artifact.is_file() and manifest_path(artifact).is_file()
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "non-delegated ops  (none)" in out and "100.0% of conv MACs" in out
    assert main(["export", "--checkpoint", str(ckpt), "--backend", "executorch", "--precision", "int8", "--out", str(tmp_path)]) == 2
    assert "int8 export needs a quantized program" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--backend", "caffe", "--out", str(tmp_path)]) == 2
    assert "unknown backend 'caffe'" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothing.tflite")]) == 2


def test_executorch_runner_sizes_the_threadpool(artifacts, val_images):
    from executorch.extension.pybindings import portable_lib

    path = artifacts(HEAD, "executorch", "fp32")
    before = portable_lib._threadpool_get_thread_count()
    try:
        one = runtime.load(path, threads=1)
        assert portable_lib._threadpool_get_thread_count() == 1 and one.threads == 1
        two = runtime.load(path, threads=2)
        assert portable_lib._threadpool_get_thread_count() == 2
        # `one` was loaded on the pool `two` replaced: it reloads on a 1-thread pool instead of crashing
        np.testing.assert_allclose(one.predict(val_images[:1]), two.predict(val_images[:1]), atol=1e-5)
    finally:
        portable_lib._unsafe_reset_threadpool(before)


def _corrupt_dilation(package) -> int:
    """Rewrite every dilated conv of a package's program with dilation 1 (and the padding that keeps
    its shape): a plausible conversion bug (a converter that drops the dilation attribute drops it
    everywhere). One conv alone was not always enough: on a tiny model its branch can be nearly
    unused, leaving the agreement above the floor (0.9968 in one run). Returns the largest dilation
    it replaced."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    block = spec.mlProgram.functions["main"].block_specializations[spec.mlProgram.functions["main"].opset]
    consts = {op.outputs[0].name: op for op in block.operations if op.type == "const"}
    was = 1
    for op in block.operations:
        if op.type != "conv":
            continue
        dil = consts[op.inputs["dilations"].arguments[0].name].attributes["val"].immediateValue.tensor.ints.values
        if max(dil) > 1:
            was = max(was, *dil)
            dil[:] = [1, 1]
            pad = consts[op.inputs["pad"].arguments[0].name].attributes["val"].immediateValue.tensor.ints.values
            pad[:] = [1, 1, 1, 1]
    if was == 1:
        raise AssertionError("no dilated conv in the program")
    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(spec.SerializeToString())
    return was


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the MIL reference interpreter (Core ML would run it on macOS)")
def test_corrupted_coreml_program_is_caught(sources, artifacts, val_images, tmp_path):
    """A wrong dilation written into a copy of the shipped package fails the fp16 comparison that the
    original passes: the check can fail."""
    path = artifacts(HEAD, "coreml", "fp16")
    with torch.no_grad():
        float_logits = sources[HEAD].model(val_images).numpy()
    good = _fp16_check(runtime.load(path).predict(val_images), float_logits)
    copy = artifacts.copy(HEAD, "coreml", "fp16", tmp_path)
    assert _corrupt_dilation(copy) > 1
    bad = _fp16_check(runtime.load(copy).predict(val_images), float_logits)
    assert good[2] and not bad[2], (good, bad)


def test_conv_mac_fraction_is_unknown_without_counted_convs():
    """A graph with no conv MACs to count reports the delegated conv-MAC fraction as unknown (None), not 1.0."""
    from aspp_edge.export.executorch import to_pte

    class Gate(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    _, info = to_pte(Gate().eval(), torch.randn(1, 3, 8, 8))
    assert info["conv_macs_total"] == 0 and info["conv_mac_fraction"] is None and info["nodes_delegated"] > 0, info
    _, info = to_pte(torch.nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8))
    assert info["conv_macs_total"] == 4 * 6 * 6 * 3 * 3 * 3 and info["conv_mac_fraction"] == 1.0, info


def test_shared_provenance_writes_the_same_pte_and_restores_torch():
    """export() lowers inside `shared_provenance` (node histories shared, not deep-copied: a third of
    the XNNPACK lowering time); the .pte is byte for byte what the plain lowering writes, and torch's
    NodeSource is itself again afterwards, even when the lowering fails."""
    from torch.fx import traceback as fx_traceback

    from aspp_edge.export.common import folded, shared_provenance
    from aspp_edge.export.executorch import to_pte

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    program = folded(quantize(model, PTQConfig(observer="minmax"), calibration=[x]).convert(fold_quantize=False))
    original = fx_traceback.NodeSource.__init__
    plain, _ = to_pte(program, x[:1])
    with shared_provenance():
        assert fx_traceback.NodeSource.__init__ is not original
        shared, info = to_pte(program, x[:1])
    assert shared == plain and info["partitions"] == 1
    assert fx_traceback.NodeSource.__init__ is original
    with pytest.raises(RuntimeError, match="boom"), shared_provenance():
        raise RuntimeError("boom")
    assert fx_traceback.NodeSource.__init__ is original
