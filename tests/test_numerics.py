"""Per-layer numerics (`aspp-edge compare`): every runtime's intermediate tensors matched to the
program's layers, a corrupted layer named in each runtime, clean artifacts above a floor."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aspp_edge.evaluate import numerics

HEAD = "sep_aspp"
IMAGES = 2
# The layer the corruption tests break: the 8th weighted op, backbone block 3's depthwise conv (the
# backbone is a chain, so it is the 8th conv in every runtime's execution order as well).
TARGET, TARGET_INDEX = "backbone.features.3.conv.1.0", 7
# An uncorrupted int8 artifact of the quick model stays at least this far from its program at every
# layer (measured: 22.6 dB at the worst layer, Core ML's; rounding differences accumulate to ~25 dB).
CLEAN_FLOOR_DB = 15.0


def _artifacts(run: Path) -> Path:
    return run / HEAD / "artifacts"


def _one(run: Path, backend: str, suffix: str) -> Path:
    (path,) = _artifacts(run).glob(f"*_ptq_{backend}_int8{suffix}")
    return path


def _program(run: Path) -> Path:
    (path,) = (run / HEAD / "quant").glob("*_ptq_int8.pt2")
    return path


def _copy(artifact: Path, folder: Path) -> Path:
    """The artifact and its manifest in `folder` (the float checkpoint stays in the run)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / artifact.name
    (shutil.copytree if artifact.is_dir() else shutil.copy)(artifact, target)
    shutil.copy(Path(str(artifact) + ".manifest.json"), folder / (artifact.name + ".manifest.json"))
    return target


def _compare(artifact: Path, run: Path, *, program: Path | None = None, images: int = IMAGES):
    ckpt = run / HEAD / "float" / "float.pt"
    return numerics.compare([artifact], program=program or _program(run), checkpoint=ckpt, images=images, progress=False)[0]


def test_program_points_follow_the_layers(quick_run):
    from aspp_edge.quantize import load_quantized

    program = load_quantized(_program(quick_run))
    points = numerics.program_points(program)
    keys = [k for k, _ in numerics._layer_keys(program)]
    assert keys[TARGET_INDEX] == TARGET
    assert list(points) == keys, "every layer of the all-int8 quick program has an output point"
    nodes = {n.name: n for n in program.graph.nodes}
    for point in points.values():
        q = nodes[point.program_node]
        assert "quantize_per_tensor" in str(q.target) and point.scale > 0 and -128 <= point.zero_point <= 127


@pytest.mark.parametrize("backend,suffix", [("tflite", ".tflite"), ("coreml", ".mlpackage")])
def test_clean_artifact_stays_with_its_program(quick_run, backend, suffix):
    result = _compare(_one(quick_run, backend, suffix), quick_run)
    assert result.unmatched == [], f"layers not found in the {backend} run: {result.unmatched}"
    assert result.leaves_at is None, numerics.table([result])
    first = result.rows[0]
    # the first conv differs by rounding only: at most one step (measured 64 dB LiteRT; 49 dB Core ML,
    # whose image input takes whole pixel values and whose program computes in fp16). Core ML holds
    # the dequantized int8 value in fp16, whose spacing near 255 steps from the zero point is
    # 255 * 2**-11 = 0.125 steps: its bound is one step plus that (1.05 measured on an AVX2 machine's model)
    bound = 1 + (255 * 2**-11 if backend == "coreml" else 0)
    assert first["sqnr_vs_program"] > 45 and first["max_steps"] <= bound, first
    worst = min(r["sqnr_vs_program"] for r in result.rows)
    assert worst >= CLEAN_FLOOR_DB, numerics.table([result])
    assert result.output_sqnr_vs_program > 25


def test_float_artifact_is_compared_with_the_float_model(quick_run):
    (fp32,) = _artifacts(quick_run).glob("*_tflite_fp32.tflite")
    result = numerics.compare([fp32], checkpoint=quick_run / HEAD / "float" / "float.pt", images=IMAGES, progress=False)[0]
    assert result.matched_by.startswith("shape and value") and result.unmatched == [] and result.leaves_at is None
    assert min(r["sqnr_vs_float"] for r in result.rows) > 90  # fp32 kernels: rounding of float32 sums only
    assert all(r["max_steps"] is None for r in result.rows)


def _negate_bytes(blob: bytearray, start: int, size: int) -> None:
    values = np.frombuffer(bytes(blob[start : start + size]), np.int8)
    blob[start : start + size] = np.clip(-values.astype(np.int16), -127, 127).astype(np.int8).tobytes()


def test_corrupted_tflite_layer_is_named(quick_run, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    artifact = _copy(_one(quick_run, "tflite", ".tflite"), tmp_path)
    interp = Interpreter(model_path=str(artifact))
    weighted = [op for op in interp._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    op = weighted[TARGET_INDEX]
    assert op["op_name"] == "DEPTHWISE_CONV_2D"
    weights = interp.get_tensor(int(op["inputs"][1]))
    blob = bytearray(artifact.read_bytes())
    assert blob.count(weights.tobytes()) == 1, "the layer's weights are found once in the file"
    _negate_bytes(blob, blob.find(weights.tobytes()), weights.nbytes)
    artifact.write_bytes(bytes(blob))
    result = _compare(artifact, quick_run)
    assert result.leaves_at == TARGET, numerics.table([result], top=5)
    row = next(r for r in result.rows if r["layer"] == TARGET)
    assert row["sqnr_vs_program"] < row["program_sqnr_vs_float"]


def test_corrupted_coreml_layer_is_named(quick_run, tmp_path):
    from aspp_edge.formats.files import load_mlpackage_spec

    package = _copy(_one(quick_run, "coreml", ".mlpackage"), tmp_path)
    spec = load_mlpackage_spec(package)
    block = spec.mlProgram.functions["main"].block_specializations[spec.mlProgram.functions["main"].opset]
    producers = {op.outputs[0].name: op for op in block.operations}
    convs = [op for op in block.operations if op.type == "conv"]
    weight_op = producers[convs[TARGET_INDEX].inputs["weight"].arguments[0].name]
    value = weight_op.attributes["quantized_data" if "quantized_data" in weight_op.attributes else "val"]
    blob_ref = value.blobFileValue
    weights_file = package / "Data" / "com.apple.CoreML" / "weights" / Path(blob_ref.fileName).name
    blob = bytearray(weights_file.read_bytes())
    size, start = np.frombuffer(bytes(blob[blob_ref.offset + 8 : blob_ref.offset + 24]), "<u8")
    _negate_bytes(blob, int(start), int(size))
    weights_file.write_bytes(bytes(blob))
    result = _compare(package, quick_run)
    assert result.leaves_at == TARGET, numerics.table([result], top=5)


@pytest.mark.full
def test_executorch_debug_copy_names_a_changed_layer(quick_run, tmp_path):
    """The .pte's per-operator debug copy equals the shipped .pte; against a program whose target
    layer's weights were negated, the artifact leaves the program exactly there."""
    from aspp_edge.quantize import load_quantized
    from aspp_edge.quantize.ptq import export_dynamic_batch

    pte = _copy(_one(quick_run, "executorch", ".pte"), tmp_path / "artifacts")
    shutil.copy(_program(quick_run), tmp_path / "artifacts" / _program(quick_run).name)
    clean = _compare(pte, quick_run)
    assert clean.debug_copy_max_diff == 0.0 and clean.unmatched == [] and clean.leaves_at is None
    assert clean.matched_by.startswith("module path")
    assert (tmp_path / "artifacts" / (pte.name + ".debug") / "debug.etrecord").is_file()

    program = load_quantized(_program(quick_run))
    conv = next(n for k, n in numerics._layer_keys(program) if k == TARGET)
    weight = conv.args[1].args[0].args[0]  # conv <- dequantize_per_channel <- quantize_per_channel <- weight
    param = program.get_parameter(weight.target) if weight.target in dict(program.named_parameters()) \
        else program.get_buffer(weight.target)
    with torch.no_grad():
        param.neg_()
    changed = tmp_path / "changed_int8.pt2"
    torch.export.save(export_dynamic_batch(program, torch.zeros(1, 3, 64, 64)), changed)
    result = _compare(pte, quick_run, program=changed)
    assert result.leaves_at == TARGET, numerics.table([result], top=5)


def test_bad_input_gets_one_line(quick_run, tmp_path):
    from aspp_edge.errors import AsppEdgeError

    bare = tmp_path / "bare.tflite"
    shutil.copy(_one(quick_run, "tflite", ".tflite"), bare)
    with pytest.raises(AsppEdgeError, match="has no manifest"):
        numerics.compare([bare], images=IMAGES, progress=False)
    # a program of another model: a two-layer conv net's, against the quick model's artifact
    from aspp_edge.config import load_recipe
    from aspp_edge.quantize.job import calibrated_ptq

    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 1)).eval()
    path = calibrated_ptq(other, load_recipe("quick")).save(tmp_path, "other")
    with pytest.raises(numerics.CompareError, match="not a program of this float model") as info:
        _compare(_one(quick_run, "tflite", ".tflite"), quick_run, program=path)
    assert "\n" not in str(info.value)
    with pytest.raises(numerics.CompareError, match="--images must be at least 1"):
        _compare(_one(quick_run, "tflite", ".tflite"), quick_run, images=0)


def _numerics_run(quick_run, out: Path, backends: str):
    """A copy of the shared run (made without numerics) run again with them: only the numerics stages run."""
    from aspp_edge.config import load_recipe
    from aspp_edge.pipeline import run

    shutil.copytree(quick_run, out)
    summary = run(load_recipe("quick"), out, backends=backends, methods="ptq", runs=3, peaks=False, progress=False,
                  numerics_images=IMAGES)
    ran = {line.split(": ")[0].split("] ")[1] for line in summary.log if line.startswith("[") and ": running" in line}
    return summary, ran


def _check_report(out: Path, backends: set[str]) -> None:
    import json

    report = json.loads((out / "report.json").read_text())
    int8 = [r for r in report["artifacts"] if r["precision"] == "int8"]
    assert {r["backend"] for r in int8} == backends
    for row in int8:
        n = row["numerics"]
        assert n["layers"] == 66 and n["unmatched"] == 0 and n["leaves_at"] is None, n
        assert CLEAN_FLOOR_DB <= n["worst_sqnr_db"] < 60 and n["worst_layer"].startswith(("backbone.", "head.", "decoder.")), n
    text = (out / "report.md").read_text()
    assert "## Where each int8 artifact leaves its program" in text
    assert text.count("| nowhere |") == len(int8)


def test_run_report_says_where_each_int8_artifact_leaves(quick_run, tmp_path):
    """`run --numerics-images N`: one stage per int8 artifact, summarised in report.json and report.md."""
    summary, ran = _numerics_run(quick_run, tmp_path / "run", "tflite,coreml")
    names = [f"quick_{HEAD}_ptq_tflite_int8.tflite", f"quick_{HEAD}_ptq_coreml_int8.mlpackage"]
    assert ran == {f"{HEAD}/numerics/{n}" for n in names}
    _check_report(tmp_path / "run", {"tflite", "coreml"})
    assert all((tmp_path / "run" / HEAD / "numerics" / f"{n}.json").is_file() for n in names)


@pytest.mark.full
def test_run_report_numerics_of_the_pte(quick_run, tmp_path):
    summary, ran = _numerics_run(quick_run, tmp_path / "run", "executorch")
    name = f"quick_{HEAD}_ptq_executorch_int8.pte"
    assert ran == {f"{HEAD}/numerics/{name}"}
    _check_report(tmp_path / "run", {"executorch"})
    assert (tmp_path / "run" / HEAD / "numerics" / f"{name}.debug" / "debug.etrecord").is_file()
