"""Layer sensitivity and mixed precision (issue 21): isolated per-layer sensitivity, keep_float lists and
`auto`, the mixed program in all three artifacts, bad input.

The model: the quick recipe's sep_aspp (64x64, width 0.25, 4 epochs; shared with test_quantize) with
one layer made deliberately sensitive, the way a layer with an outlier weight channel is: input
channel 0 of the classifier is made dead (the previous conv's BN shift for it is -1e4, so its ReLU
output is always 0) and the classifier's weights on that channel are set to 1000 x its largest
weight. The float function ignores those weights (they multiply zeros), but int8 per-channel
weights take their scale from them, and every other weight of the classifier rounds to a few
levels: quantizing the classifier alone ruins the logits, keeping it alone in float recovers them.
"""

from __future__ import annotations

import copy
import json
import platform

import numpy as np
import pytest
import torch

from aspp_edge import runtime
from aspp_edge.config import PTQConfig, QATConfig, Recipe
from aspp_edge.data import build_dataset
from aspp_edge.errors import ConfigError
from aspp_edge.quantize import quantize
from aspp_edge.quantize.sensitivity import PrecisionPlanner, analyze, converted_for_analysis
from aspp_edge.metrics import evaluate_miou

SENSITIVE = "decoder.classifier"  # the layer made sensitive
DEAD_CHANNEL = 0
OUTLIER = 1000.0
MAX_DROP = 1.0  # points of val mIoU: the mixed program must meet it, full int8 must not
# Mixed program artifacts vs each other (argmax agreement on 4 val images): .pte and .tflite at the
# int8 floor (0.99, tests/test_export.py); Core ML W8A8 is an fp16 program, at its own floor (0.98).
INT8_AGREEMENT = 0.99
COREML_AGREEMENT = 0.98


def _make_outlier(model: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(model).eval()
    bn = model.get_submodule("decoder.fuse.1.1.1")
    classifier = model.get_submodule(SENSITIVE)
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(model.get_submodule("decoder.fuse.1.1.2"), torch.nn.ReLU)
    with torch.no_grad():
        bn.bias[DEAD_CHANNEL] = -1e4
        classifier.weight[:, DEAD_CHANNEL] = OUTLIER * classifier.weight.abs().max()
    return model


@pytest.fixture(scope="module")
def outlier_model(head_models):
    return head_models["sep_aspp"], _make_outlier(head_models["sep_aspp"])


@pytest.fixture(scope="module")
def val(quick_recipe):
    return build_dataset(quick_recipe, "val")


@pytest.fixture(scope="module")
def report(outlier_model, quick_calib, val):
    model = outlier_model[1]
    prepared = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib).prepared
    return analyze(model, prepared, torch.cat(quick_calib)[:8], val=val, top=1)


def test_outlier_weights_do_not_change_the_float_function(outlier_model, quick_calib):
    plain, outlier = outlier_model
    dead = copy.deepcopy(plain).eval()
    with torch.no_grad():
        dead.get_submodule("decoder.fuse.1.1.1").bias[DEAD_CHANNEL] = -1e4
        a, b = dead(quick_calib[0][:4]), outlier(quick_calib[0][:4])
    assert torch.allclose(a, b, atol=1e-5 * a.abs().max().item())


def test_switching_every_pair_off_is_the_float_model(outlier_model, quick_calib):
    """The analysis' variants come from one converted program: with every layer and op float it is the
    float model (BN folded), with none it is the int8 program."""
    plain = outlier_model[0]
    q = quantize(plain, PTQConfig(observer="minmax"), calibration=quick_calib)
    planner = PrecisionPlanner(converted_for_analysis(q.prepared))
    images = quick_calib[0][:4]
    with torch.no_grad():
        ref = plain(images)
        all_float = planner.variant(set(planner.layers), ops_int8=False)(images)
        full = planner.variant(set())(images)
        program = q.convert()(images)
    assert (all_float - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert (full - ref).abs().max() > 1e-3 * ref.abs().max()
    assert torch.allclose(full, program, atol=1e-4 * ref.abs().max().item())  # fold/clamp-drop change nothing here


def test_sensitivity_ranks_the_outlier_layer_first(report, outlier_model):
    names = report.names()
    assert names[0] == SENSITIVE, report.table(5)
    layers = dict(outlier_model[1].named_modules())
    assert all(isinstance(layers[n], (torch.nn.Conv2d, torch.nn.Linear)) for n in names)  # names map back to modules
    first, rest = report.layers[0], report.layers[1:]
    assert first.alone_int8_sqnr_db < min(r.alone_int8_sqnr_db for r in rest) - 10, report.table(5)
    assert first.alone_float_sqnr_db > report.full_int8_sqnr_db + 10, report.table(5)  # float alone recovers it
    assert first.alone_int8_miou_drop is not None and first.alone_int8_miou_drop > MAX_DROP
    assert first.alone_float_miou_drop is not None and first.alone_float_miou_drop <= MAX_DROP
    assert report.layers[1].alone_int8_miou_drop is None  # val drops for the top candidates only
    assert report.full_int8_miou_drop > MAX_DROP
    table = report.table()
    assert table.splitlines()[1].split()[1] == SENSITIVE and "full int8" in table.splitlines()[-1]
    # the order keep_float auto tries layers in (what `.sensitivity.json` stores): the outlier first
    doc = report.to_dict()
    assert doc["keep_float_auto_order"][0] == SENSITIVE and sorted(doc["keep_float_auto_order"]) == sorted(names)


def test_run_mixed_method_uses_the_recipe_list_else_auto():
    """`run --methods mixed`: the recipe's ptq.keep_float list where it names layers, else `auto` at
    ptq.max_drop (MIXED_MAX_DROP when unset)."""
    from aspp_edge.config import MIXED_MAX_DROP, load_recipe
    from aspp_edge.pipeline import mixed_settings

    quick = load_recipe("quick")
    assert mixed_settings(quick.replace(ptq={"keep_float": [SENSITIVE]})) == {"keep_float": (SENSITIVE,)}
    assert mixed_settings(quick) == {"keep_float": "auto", "max_drop": MIXED_MAX_DROP, "max_float_layers": quick.ptq.max_float_layers}
    assert mixed_settings(quick.replace(ptq={"keep_float": "auto", "max_drop": 0.3}))["max_drop"] == 0.3


@pytest.mark.full  # the analysis of every layer through the CLI: ~1 minute
def test_cli_sensitivity_writes_the_report_beside_the_program(outlier_model, head_models, tmp_path, monkeypatch):
    """`aspp-edge quantize --sensitivity` on a checkpoint of the outlier model: NAME_int8.sensitivity.json
    beside the program, the outlier ranked first and first in keep_float_auto_order."""
    from aspp_edge.checkpoint import read_checkpoint, save_checkpoint
    from aspp_edge.cli import main
    from aspp_edge.quantize import sensitivity

    monkeypatch.setattr(sensitivity, "SENSITIVITY_IMAGES", 8)  # the outlier is plain on 8 images (see the ranking test)
    payload = read_checkpoint(head_models.checkpoint("sep_aspp"))
    ckpt = save_checkpoint(tmp_path / "outlier.pt", {**payload, "state_dict": outlier_model[1].state_dict()})
    out = tmp_path / "q"
    assert main(["quantize", "--recipe", "quick", "--checkpoint", str(ckpt), "--method", "ptq", "--observer", "minmax",
                 "--sensitivity", "--sensitivity-top", "1", "--out", str(out)]) == 0
    (path,) = out.glob("*_int8.sensitivity.json")
    doc = json.loads(path.read_text())
    assert doc["layers"][0]["layer"] == SENSITIVE and doc["keep_float_auto_order"][0] == SENSITIVE, doc["keep_float_auto_order"][:3]
    assert doc["layers"][0]["alone_int8_miou_drop"] > MAX_DROP and doc["full_int8"]["miou_drop"] > MAX_DROP
    assert path.with_name(path.name.replace(".sensitivity.json", ".pt2")).is_file()


@pytest.mark.full  # QAT's prepare and two steps: ~1 minute
def test_qat_keeps_the_listed_layers_float(outlier_model, quick_calib, quick_recipe, report):
    """QAT with keep_float: the layer stays float in the trained program (no quantized weights for it),
    and the program's logits are as close to the float model's as keeping it float promises."""
    from aspp_edge.metrics import logits_sqnr_db

    model = outlier_model[1]
    config = QATConfig(steps=2, batch_size=4, observer="minmax", calib_size=8, keep_float=(SENSITIVE,))
    q = quantize(model, config, calibration=quick_calib[:1], train_set=build_dataset(quick_recipe, "train"))
    assert q.float_layers == [SENSITIVE]
    program = q.convert(fold_quantize=False)
    per_channel = torch.ops.quantized_decomposed.quantize_per_channel.default
    quantized_weights = {n.args[0].target for n in program.graph.nodes if n.target == per_channel}
    assert quantized_weights and not any(t.replace("_", ".").startswith(SENSITIVE) for t in quantized_weights), quantized_weights
    x = torch.cat(quick_calib)[:8]
    with torch.no_grad():
        db = logits_sqnr_db(program(x).numpy(), model(x).numpy())
    assert db > report.full_int8_sqnr_db + 10, (db, report.full_int8_sqnr_db)  # full int8 is ruined by the outlier


@pytest.mark.full  # analysis, 5 top-candidate val drops, greedy, built program: 91 s (8 images) on a 2-core machine under ~10x load
def test_keep_float_auto_meets_max_drop_where_full_int8_does_not(outlier_model, quick_calib, val, tmp_path, monkeypatch):
    from aspp_edge.quantize import sensitivity

    monkeypatch.setattr(sensitivity, "SENSITIVITY_IMAGES", 8)  # the outlier is plain on 8 images (see the ranking test)
    model = outlier_model[1]
    float_miou = evaluate_miou(model, val, torch.device("cpu"), 16)
    full = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib)
    full_drop = 100 * (float_miou - evaluate_miou(full.convert(), val, torch.device("cpu"), 16))
    assert full_drop > MAX_DROP
    auto = PTQConfig(observer="minmax", keep_float="auto", max_drop=MAX_DROP)
    q = quantize(model, auto, calibration=quick_calib, val_set=val)
    assert q.float_layers == [SENSITIVE], q.selection
    drop = 100 * (float_miou - evaluate_miou(q.convert(), val, torch.device("cpu"), 16))
    assert drop <= MAX_DROP and q.selection["met"], (drop, q.selection)
    # the kept layers are float in the program: no quantized weights for them
    per_channel = torch.ops.quantized_decomposed.quantize_per_channel.default
    quantized_weights = {n.args[0].target for n in q.convert(fold_quantize=False).graph.nodes if n.target == per_channel}
    assert quantized_weights and not any(t.replace("_", ".").startswith(SENSITIVE) for t in quantized_weights), quantized_weights
    # saved: the float layers beside the program
    q.meta = {"recipe": Recipe(name="t").to_dict()}
    pt2 = q.save(tmp_path, "mixed")
    summary = json.loads(pt2.with_suffix(".json").read_text())
    assert summary["float_layers"] == q.float_layers and summary["keep_float_auto"]["met"]


@pytest.fixture(scope="module")
def mixed_artifacts(outlier_model, quick_calib, quick_recipe, tmp_path_factory):
    from aspp_edge.export import export, from_quantized

    model = outlier_model[1]
    out = tmp_path_factory.mktemp("mixed")
    q = quantize(model, PTQConfig(observer="minmax", keep_float=(SENSITIVE,)), calibration=quick_calib)
    q.meta = {"recipe": quick_recipe.to_dict(), "source_checkpoint_sha256": None}
    source = from_quantized(q.save(out, "outlier_ptq"))
    return q, {b: export(source, b, "int8", out) for b in ("executorch", "tflite", "coreml")}


@pytest.mark.full  # three int8 exports of the mixed program: ~85 s
def test_mixed_program_in_all_three_artifacts(mixed_artifacts, val_images):
    from aspp_edge.export.inspect import format_inspection, inspect_artifact
    from aspp_edge.formats.manifest import read_manifest

    q, paths = mixed_artifacts
    with torch.no_grad():
        program = q.convert()(val_images).numpy()
    outputs = {}
    for backend, path in paths.items():
        manifest = read_manifest(path)
        assert manifest["quantization"]["float_layers"] == [SENSITIVE], manifest.get("quantization")
        runner = runtime.load(path)
        outputs[backend] = runner.predict(val_images)
        assert outputs[backend].shape == program.shape
    # .tflite: the float island shows as QUANTIZE/DEQUANTIZE inside the graph, and inspect reports both
    info = read_manifest(paths["tflite"])["backend_info"]
    assert any(s.startswith("DEQUANTIZE") for s in info["qdq_inside"]), info
    text = format_inspection(inspect_artifact(paths["tflite"]))
    assert "float islands" in text and f"float layers  {SENSITIVE}" in text
    # .pte: XNNPACK runs the float convs too (fp32), nothing left outside the delegate
    pte_info = read_manifest(paths["executorch"])["backend_info"]
    assert pte_info["undelegated_ops"] == {}, pte_info["undelegated_ops"]
    argmax = {b: o.argmax(1) for b, o in outputs.items()}
    ref = program.argmax(1)
    for backend in ("executorch", "tflite"):
        assert (argmax[backend] == ref).mean() >= INT8_AGREEMENT, backend
    assert (argmax["executorch"] == argmax["tflite"]).mean() >= INT8_AGREEMENT
    for backend in ("executorch", "tflite"):
        assert (argmax["coreml"] == argmax[backend]).mean() >= COREML_AGREEMENT, backend
    if platform.system() != "Darwin":
        assert runtime.load(paths["coreml"]).evaluated_by == "mil-reference"


# --- bad input: one clear error, nothing written ---------------------------------------------------


def test_unknown_layer_name_lists_the_valid_ones(outlier_model, quick_calib):
    with pytest.raises(ConfigError) as exc:
        quantize(outlier_model[0], PTQConfig(keep_float=("decoder.clasifier",)), calibration=quick_calib)
    msg = str(exc.value)
    assert "unknown layer for keep_float 'decoder.clasifier'" in msg and SENSITIVE in msg and "backbone.features.0.0" in msg


@pytest.mark.parametrize("section, expected", [
    ({"keep_float": "auto"}, "keep_float 'auto' needs ptq.max_drop"),
    ({"keep_float": "auto", "max_drop": -0.1}, "ptq.max_drop -0.1 must be >= 0"),
    ({"keep_float": "auto", "max_drop": 0.1, "max_float_layers": 0}, "ptq.max_float_layers 0 must be >= 1"),
    ({"keep_float": "everything"}, "ptq.keep_float 'everything' must be a list of layer names or 'auto'"),
    ({"keep_float": ["a", "a"]}, "names a layer twice"),
    ({"keep_float": ["a"], "max_drop": 0.1}, "ptq.max_drop applies to ptq.keep_float 'auto' only"),
])
def test_bad_keep_float_settings(section, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        Recipe.from_dict({"name": "t", "ptq": section})


def test_recipe_round_trip_and_qat_section():
    r = Recipe.from_dict({"name": "t", "ptq": {"keep_float": "auto", "max_drop": 0.1},
                          "qat": {"keep_float": ["decoder.classifier"]}})
    assert r.ptq.auto_float and r.ptq.float_layers == () and r.qat.float_layers == ("decoder.classifier",)
    assert Recipe.from_dict(json.loads(r.to_json())) == r
    with pytest.raises(ConfigError, match="qat.max_drop -1"):
        QATConfig(keep_float="auto", max_drop=-1)


def test_auto_without_val_set(outlier_model, quick_calib):
    with pytest.raises(ConfigError, match="needs val_set"):
        quantize(outlier_model[0], PTQConfig(keep_float="auto", max_drop=0.1), calibration=quick_calib)


def test_cli_bad_input_writes_nothing(head_models, tmp_path, capsys):
    from aspp_edge.cli import main

    ckpt = head_models.checkpoint("sep_aspp")
    cases = [
        (["--keep-float", "nope.conv"], "unknown layer for keep_float 'nope.conv'; valid choices: backbone.features.0.0"),
        (["--keep-float", "auto", "--max-drop", "-1"], "ptq.max_drop -1.0 must be >= 0"),
        (["--keep-float", "auto"], "keep_float 'auto' needs ptq.max_drop"),
    ]
    for extra, expected in cases:
        out = tmp_path / "q"
        assert main(["quantize", "--recipe", "quick", "--checkpoint", str(ckpt), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert expected in err, err
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.full  # a run's mixed stages: ~95 s
def test_run_reports_mixed_rows_beside_full_int8(quick_run, tmp_path):
    """`aspp-edge run --methods ptq,mixed` on a copy of the shared quick run (its stages reused): the
    mixed program (the recipe's keep_float list) is quantized, exported and measured beside full-int8
    PTQ, labelled `mixed`, its artifacts agree with each other across backends, and the verdict
    states the trade against full int8 per backend."""
    import shutil

    from aspp_edge.config import load_recipe
    from aspp_edge.formats.manifest import read_manifest
    from aspp_edge.pipeline import run

    out = tmp_path / "run"
    shutil.copytree(quick_run, out)
    recipe = load_recipe("quick").replace(ptq={"keep_float": [SENSITIVE]})
    s = run(recipe, out, methods="ptq,mixed", backends="executorch,tflite", runs=3, peaks=False, progress=False,
            numerics_images=0)  # as the shared run was made: its stages reused
    ran = sorted(line.split("] ", 1)[1].split(":")[0] for line in s.log if line.endswith(" s") and ": ran in " in line)
    names = [f"quick_sep_aspp_mixed_{b}" for b in ("executorch_int8.pte", "tflite_int8.tflite")]
    assert ran == sorted(["sep_aspp/mixed"] + [f"sep_aspp/{k}/{n}" for k in ("export", "eval") for n in names])
    mixed = [r for r in s.rows if r["method"] == "mixed"]
    assert sorted(r["backend"] for r in mixed) == ["executorch", "tflite"]
    for r in mixed:
        assert r["float_layers"] == [SENSITIVE]
        assert read_manifest(out / r["path"])["quantization"]["float_layers"] == [SENSITIVE]
        assert min(r["agreement_with"].values()) >= INT8_AGREEMENT
    full = [r for r in s.rows if r["method"] == "ptq" and r["precision"] == "int8"]
    assert len(full) == 2 and all(read_manifest(out / r["path"])["quantization"]["float_layers"] == [] for r in full)
    md = (out / "report.md").read_text()
    assert "| tflite int8 mixed |" in md
    verdict = md.split("## Verdict")[1]
    assert f"mixed precision keeps 1 layer(s) in float ({SENSITIVE})" in verdict
    assert "tflite mixed vs full-int8 PTQ: drop" in verdict and "median latency" in verdict
