"""Quantization: the shared int8 scheme on every head, QAT, saved programs, per-layer report, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from aspp_edge.calibration.calibrate import calibrate, calibration_batches
from aspp_edge.calibration.observers import PercentileObserver
from aspp_edge.calibration.report import layer_report, sqnr_db
from aspp_edge.config import PTQConfig, QATConfig, Recipe
from aspp_edge.data import build_dataset, calibration_dataset
from aspp_edge.errors import CheckpointError, ConfigError
from aspp_edge.models import list_models
from aspp_edge.quantize import load_quantized, quantize
from aspp_edge.quantize.job import compare_logits, quantize_checkpoint
from aspp_edge.train import evaluate_miou, train

PTQ_SQNR_FLOOR_DB = 20.0  # fake-quant logits vs float, every head, quick recipe (issue threshold)
# PTQ-minmax int8 program vs the float model, argmax agreement on 16 val images (target 0.99). Measured
# on the test models (quick recipe, 4 epochs; 32 calib images) of every head and lraspp@mobilenet_v3_large,
# train seeds 0-2 (seed 0 is what the tests train), 24 models: 0.9799-0.9998 (8 of 24 below 0.99, the
# lowest sep_se_aspp seed 0; SQNR >= 29.9 dB). These 4-epoch models cannot meet the target; the floor
# is the lowest measured less 0.005.
PTQ_MIN_AGREEMENT = 0.975
# Quick-run int8 mIoU drop floor (points), set in tests/test_pipeline.py from train seeds 0-4.
INT8_MAX_DROP_POINTS = 0.5
QUANTIZE_PER_TENSOR = torch.ops.quantized_decomposed.quantize_per_tensor.default
DEQUANTIZE_PER_TENSOR = torch.ops.quantized_decomposed.dequantize_per_tensor.default

QAT_SQNR_SLACK_DB = 0.3  # QAT's logits SQNR may end this far below its PTQ starting point (measured -0.10 dB at worst)

def _val_images(recipe: Recipe, n: int = 16) -> torch.Tensor:
    val = build_dataset(recipe, "val")
    return torch.stack([val[i][0] for i in range(n)])


# aspp, sep_aspp and se_aspp share their ops with sep_se_aspp (and sep_aspp is the quick run's head): full tier
@pytest.mark.parametrize("head", [pytest.param(h, marks=pytest.mark.full) if h in ("aspp", "sep_aspp", "se_aspp") else h
                                  for h in list_models()])
def test_ptq_every_head_keeps_logits(head, head_models, quick_recipe, quick_calib):
    model = head_models[head]
    q = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib)
    sqnr, agreement = compare_logits(model, q.convert(), _val_images(quick_recipe))
    assert sqnr >= PTQ_SQNR_FLOOR_DB, f"{head}: {sqnr:.1f} dB"
    assert agreement >= PTQ_MIN_AGREEMENT, f"{head}: agreement {agreement:.4f}"


@pytest.mark.parametrize("head", [pytest.param("aspp", marks=pytest.mark.full), "sep_aspp", "hdc_aspp"])  # aspp: sep_aspp's concat
def test_every_concat_and_resize_shares_one_qparam(head, head_models, quick_calib):
    """Read from the converted graph: a concat's dequantized inputs and its output quantize carry one
    (scale, zero point); so do the input and output of each resize and broadcast."""
    converted = quantize(head_models[head], PTQConfig(), calibration=quick_calib).convert()
    checked = 0
    for node in converted.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == torch.ops.aten.cat.default:
            inputs = list(node.args[0])
        elif node.target in (torch.ops.aten.upsample_bilinear2d.vec, torch.ops.aten.expand.default,
                             torch.ops.aten.adaptive_avg_pool2d.default):
            inputs = [node.args[0]]
        else:
            continue
        assert all(i.target == DEQUANTIZE_PER_TENSOR for i in inputs), f"{node.name} has a float input"
        (user,) = node.users
        assert user.target == QUANTIZE_PER_TENSOR, f"{node.name} output is not quantized"
        qparams = {(float(i.args[1]), int(i.args[2])) for i in inputs} | {(float(user.args[1]), int(user.args[2]))}
        assert len(qparams) == 1, f"{node.name}: {qparams}"
        checked += 1
    assert checked >= 4  # two concats (ASPP, decoder), the broadcast, the pool, the resizes


RELU6 = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)


def _relu6_partitions(converted) -> tuple[int, list[str], list[str]]:
    """(ReLU6 nodes, those whose conv output is quantized before them, those whose output quantize
    spends codes outside [0, 6]: a zero point above the lowest code or a step above 6/255)."""
    count, requantized, wasted = 0, [], []
    for node in converted.graph.nodes:
        if node.op != "call_function" or node.target not in RELU6:
            continue
        count += 1
        if node.args[0].target == DEQUANTIZE_PER_TENSOR:
            requantized.append(node.name)
        (user,) = node.users
        assert user.target == QUANTIZE_PER_TENSOR, f"{node.name} output is not quantized"
        scale, zero_point, qmin = float(user.args[1]), int(user.args[2]), int(user.args[3])
        if zero_point != qmin or scale > 6.0 / 255 * 1.001:
            wasted.append(f"{node.name} scale {scale:.4f} zp {zero_point}")
    return count, requantized, wasted


@pytest.mark.parametrize("method", ["ptq", pytest.param("qat", marks=pytest.mark.full)])  # QAT's prepare: ~45 s
def test_conv_relu6_is_one_partition_with_the_relu6_range(method, head_models, quick_recipe, quick_calib):
    """Every MobileNetV2 ReLU6 follows its conv (+BN) without a requantize in between, and its own
    qparams cover [0, max] within [0, 6], not the conv's +-range."""
    model = head_models["sep_aspp"]
    if method == "ptq":
        q = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib)
    else:
        config = QATConfig(steps=2, batch_size=4, freeze_bn_step=0, freeze_observer_step=0, observer="minmax", calib_size=8)
        q = quantize(model, config, calibration=quick_calib, train_set=build_dataset(quick_recipe, "train"))
    count, requantized, wasted = _relu6_partitions(q.convert(fold_quantize=False))
    assert count >= 10, count  # MobileNetV2 has two ReLU6 per inverted residual block
    assert requantized == [] and wasted == [], (requantized, wasted)


def test_hold_dropout_makes_the_training_program_deterministic(head_models, quick_calib):
    """QAT with distillation trains with dropout off (the teacher's is off): in train mode with BN
    held, the prepared program then gives the same logits twice, close to the eval-mode logits."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from aspp_edge.quantize.ptq import export_dynamic_batch
    from aspp_edge.quantize.qat import freeze_bn_stats, hold_dropout
    from aspp_edge.quantize.quantizers import build_quantizer

    model = head_models["sep_aspp"]
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    prepared = prepare_qat_pt2e(export_dynamic_batch(model.train(), quick_calib[0]).module(), build_quantizer(qat=True))
    model.eval()
    images = quick_calib[0][:4]
    move_exported_model_to_eval(prepared)
    with torch.no_grad():
        reference = prepared(images)
    move_exported_model_to_train(prepared)
    assert freeze_bn_stats(prepared) > 0
    torch.manual_seed(0)
    with torch.no_grad():
        noisy = prepared(images)
    assert not torch.allclose(noisy, reference)  # dropout on: the check below can fail
    assert hold_dropout(prepared) >= 1
    with torch.no_grad():
        first, second = prepared(images), prepared(images)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # Train-mode conv+BN (held statistics) rounds differently from the folded eval program: near
    # it (about 39 dB here), and far nearer than with dropout on (about 24 dB).
    assert sqnr_db(reference, first) >= 33.0 and sqnr_db(reference, first) >= sqnr_db(reference, noisy) + 6.0


def test_observers_all_calibrate(head_models, quick_recipe, quick_calib):
    model, images = head_models["sep_aspp"], _val_images(quick_recipe)
    for observer in ("minmax", "ema", "percentile", "mse"):
        q = quantize(model, PTQConfig(observer=observer), calibration=quick_calib)
        sqnr, _ = compare_logits(model, q.convert(), images)
        assert sqnr >= PTQ_SQNR_FLOOR_DB, f"{observer}: {sqnr:.1f} dB"


def test_percentile_observer_clips_outliers():
    obs = PercentileObserver(dtype=torch.int8, quant_min=-128, quant_max=127, percentile=99.0)
    x = torch.linspace(0, 1, 10001)
    x[0], x[-1] = -100.0, 100.0
    obs(x)
    assert 0.0 <= float(obs.min_val) < 0.02 and 0.98 < float(obs.max_val) <= 1.0


def test_qat_from_the_ptq_ranges_stays_near_them_and_within_the_drop_floor(quick_trained, quick_recipe):
    """QAT on the quick recipe starts from the PTQ-minmax ranges of the same 32 calibration images
    (observer minmax, frozen at step 0) and fine-tunes 12 steps towards the float model's logits
    (distill 1.0). Measured gain in logits SQNR over that starting point: +0.11 to +0.65 dB on train
    seeds 0-4 with the float model trained in the standard layout, -0.10 dB (33.60 -> 33.50) on
    seed 0 once training ran in channels_last (8a767c5: a slightly different checkpoint). So a gain
    is not reliable at 12 steps; the test holds QAT to within QAT_SQNR_SLACK_DB of its start and to
    the int8 drop floor. QAT does not reliably improve mIoU here either: its drop minus PTQ's was
    -0.01, +0.02, 0.00, -0.03 and +0.07 points on seeds 0-4."""
    from aspp_edge.checkpoint import load_model

    model = load_model(quick_trained.checkpoint, quick_recipe)[0]
    calib = calibration_batches(calibration_dataset(quick_recipe)[0], 32, 16)
    val = build_dataset(quick_recipe, "val")
    images = torch.stack([val[i][0] for i in range(len(val))])
    float_miou = evaluate_miou(model, val, torch.device("cpu"), 16)
    ptq = quantize(model, PTQConfig(observer="minmax"), calibration=calib).convert()
    qat = quantize(model, quick_recipe.qat, calibration=calib, train_set=build_dataset(quick_recipe, "train")).convert()
    ptq_sqnr, qat_sqnr = compare_logits(model, ptq, images)[0], compare_logits(model, qat, images)[0]
    qat_drop = 100 * (float_miou - evaluate_miou(qat, val, torch.device("cpu"), 16))
    assert qat_sqnr >= ptq_sqnr - QAT_SQNR_SLACK_DB, (ptq_sqnr, qat_sqnr)
    assert qat_drop <= INT8_MAX_DROP_POINTS, qat_drop


def test_quantize_checkpoint_writes_program_and_reports(tmp_path, quick_trained, quick_recipe):
    out = tmp_path / "q"
    result = quantize_checkpoint(quick_recipe, quick_trained.checkpoint, "ptq", out, progress=False, calib_size=16)
    assert sorted(p.name for p in out.iterdir()) == ["quick_ptq_int8.json", "quick_ptq_int8.layers.json", "quick_ptq_int8.pt2"]
    summary = json.loads((out / "quick_ptq_int8.json").read_text())
    assert summary["method"] == "ptq" and summary["config"]["calib_size"] == 16
    assert summary["qparams"] and all(-128 <= q["zero_point"] <= 127 and q["scale"] > 0 for q in summary["qparams"])
    assert summary["sqnr_db"] == pytest.approx(result.sqnr_db) and result.sqnr_db >= PTQ_SQNR_FLOOR_DB
    layers = json.loads((out / "quick_ptq_int8.layers.json").read_text())
    assert len(layers) > 20 and layers == sorted(layers, key=lambda r: r["sqnr_db"])
    assert summary["calibration_split"] == "calib"
    # The saved program reloads and scores, on the same val images, what the in-memory program
    # scored before it was saved (the summary's figures). The summary comes from the program with
    # its weights folded for ExecuTorch, the saved one keeps them as Q/DQ: float rounding differs,
    # so a few near-tied pixels may flip (measured in make test: SQNR 31.367 vs 31.363 dB).
    from aspp_edge.checkpoint import load_model
    from aspp_edge.quantize.job import SQNR_IMAGES

    program = load_quantized(result.program)
    model = load_model(quick_trained.checkpoint, quick_recipe)[0]
    sqnr, agreement = compare_logits(model, program, _val_images(quick_recipe, SQNR_IMAGES))
    assert sqnr == pytest.approx(summary["sqnr_db"], abs=0.05) and agreement == pytest.approx(summary["agreement"], abs=2e-3)


def test_saved_program_computes_what_the_in_memory_program_computes(tmp_path, quick_trained, quick_recipe, quick_calib):
    """`QuantizedModel.save` -> `load_quantized` gives the logits of `convert()` on images it was not calibrated on."""
    from aspp_edge.checkpoint import load_model

    model = load_model(quick_trained.checkpoint, quick_recipe)[0]
    q = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib[:1])
    images = _val_images(quick_recipe, 4)
    with torch.no_grad():
        in_memory, reloaded = q.convert()(images), load_quantized(q.save(tmp_path, "roundtrip"))(images)
        float_logits = model(images)
    assert not torch.allclose(in_memory, float_logits, atol=1e-3)  # an int8 program, not the float model
    torch.testing.assert_close(reloaded, in_memory, rtol=0, atol=1e-5)


def test_layer_report_matches_layers(head_models, quick_calib):
    q = quantize(head_models["aspp"], PTQConfig(), calibration=quick_calib)
    rows = layer_report(q.prepared, q.convert(), quick_calib[0][:2])
    by_name = {r["tensor"]: r for r in rows}
    assert by_name["x"]["sqnr_db"] > 35  # the input only sees its own rounding
    assert all(r["min"] <= r["max"] for r in rows if r["min"] == r["min"])


def test_configs_round_trip_json():
    for cfg in (PTQConfig(observer="percentile", cle=True, calib_size=32), QATConfig(steps=10, freeze_bn_step=5, freeze_observer_step=8)):
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: PTQConfig(observer="kl"), r"unknown observer 'kl'; valid choices: ema, minmax, mse, percentile"),
        (lambda: PTQConfig(calib_size=4), r"ptq.calib_size 4 is too small; it must be >= 8"),
        (lambda: QATConfig(steps=10, freeze_bn_step=20), r"qat.freeze_bn_step 20 must be between 0 and qat.steps \(10\)"),
        (lambda: QATConfig(steps=10, freeze_bn_step=5, freeze_observer_step=11), r"qat.freeze_observer_step 11"),
        (lambda: PTQConfig.from_dict({"observr": "mse"}), r"unknown recipe key 'ptq.observr'"),
    ],
)
def test_bad_configs(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_calibration_set_errors(quick_recipe):
    calib_set, split = calibration_dataset(quick_recipe)
    with pytest.raises(ConfigError, match=r"calibration set size 2 is too small; it must be >= 8"):
        calibration_batches(calib_set, 2, 2, split=split)
    with pytest.raises(ConfigError, match=r"calibration set size 100000 exceeds the 512 images of the calib split"):
        calibration_batches(calib_set, 100000, 16, split=split)
    with pytest.raises(ConfigError, match="calibration set is empty"):
        calibrate(torch.nn.Identity(), [])


def test_quantize_checkpoint_bad_input(tmp_path, quick_trained, quick_recipe):
    out = tmp_path / "q"
    with pytest.raises(ConfigError, match=r"unknown method 'int4'; valid choices: ptq, qat"):
        quantize_checkpoint(quick_recipe, quick_trained.checkpoint, "int4", out)
    with pytest.raises(ConfigError, match=r"option 'cle' does not apply to method 'qat'"):
        quantize_checkpoint(quick_recipe, quick_trained.checkpoint, "qat", out, cle=True)
    other = quick_recipe.replace(model={"head": "lraspp"})
    with pytest.raises(CheckpointError, match=r"model.head: checkpoint 'sep_aspp', recipe 'lraspp'"):
        quantize_checkpoint(other, quick_trained.checkpoint, "ptq", out)
    with pytest.raises(ConfigError, match=r"calibration set size 9999 exceeds"):
        quantize_checkpoint(quick_recipe, quick_trained.checkpoint, "ptq", out, calib_size=9999)
    assert not out.exists()  # nothing half-written after any failure


@pytest.mark.full
@pytest.mark.distributed
def test_qat_under_torchrun_two_ranks_agree(tmp_path, quick_trained, quick_recipe):
    import os
    import subprocess
    import sys

    import yaml

    recipe = quick_recipe.replace(qat={"steps": 6, "freeze_bn_step": 3, "freeze_observer_step": 4, "calib_size": 8})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "aspp_edge.cli",
           "quantize", "--recipe", str(path), "--checkpoint", str(quick_trained.checkpoint), "--method", "qat",
           "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "quick_qat_int8.json").read_text())
    hashes = summary["rank_weight_sha256"]
    assert summary["world_size"] == 2 and len(hashes) == 2 and hashes[0] == hashes[1]
    assert load_quantized(tmp_path / "out" / "quick_qat_int8.pt2") is not None
