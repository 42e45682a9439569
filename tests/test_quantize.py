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
from aspp_edge.metrics import evaluate_miou

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


def _mnv3_with_small_variances(recipe: Recipe) -> torch.nn.Module:
    """A tiny LR-ASPP MobileNetV3 (BN eps 1e-3, momentum 0.01) whose BN running variances are spread
    over 1e-4..1, as a trained one's are (each gamma scaled by sqrt(var), so activations stay in
    range): where var is near eps, eps 1e-3 and 1e-5 give outputs up to 3x apart."""
    from aspp_edge.models.factory import model_from_recipe

    torch.manual_seed(0)
    model = model_from_recipe(recipe.replace(model={"head": "lraspp", "backbone": "mobilenet_v3_large", "decoder": "lraspp"}))
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_var.copy_(10 ** torch.empty_like(bn.running_var).uniform_(-4, 0))
            bn.weight.mul_(bn.running_var.sqrt())
            bn.running_mean.copy_(torch.randn_like(bn.running_mean) * 0.01)
    return model.eval()


def test_set_mode_keeps_each_bn_and_dropout_literal(quick_recipe, quick_calib):
    """qat.set_mode switches BN and dropout by their `training` argument only: MobileNetV3's BN keeps
    momentum 0.01 and eps 1e-3 both ways (torchao's move_exported_model_to_eval rebuilds them as 0.1
    and 1e-5), and the program in inference mode computes the float model."""
    from aspp_edge.quantize.ptq import export_dynamic_batch
    from aspp_edge.quantize.qat import BN_TRAINING_ARG, BN_TRAINING_TARGETS, set_mode

    model = _mnv3_with_small_variances(quick_recipe)
    program = export_dynamic_batch(model.train(), quick_calib[0]).module()
    model.eval()

    def bn_args():
        return {tuple(n.args[BN_TRAINING_ARG:BN_TRAINING_ARG + 3]) for n in program.graph.nodes if n.target in BN_TRAINING_TARGETS}

    assert (True, 0.01, 1e-3) in bn_args()
    set_mode(program, bn_training=False, dropout=False)
    assert (False, 0.01, 1e-3) in bn_args() and not any(flag for flag, *_ in bn_args())
    images = quick_calib[0][:4]
    with torch.no_grad():
        assert sqnr_db(model(images), program(images)) > 100.0
    set_mode(program, bn_training=True, dropout=True)
    assert (True, 0.01, 1e-3) in bn_args()


def test_match_template_eps_keeps_the_function_with_torchaos_eps(quick_recipe, quick_calib):
    """The BN reparametrisation QAT starts from: every BN at eps 1e-5 (what torchao's conv + BN
    templates and convert's fold use), running_var moved so the model computes what it did."""
    import copy

    from aspp_edge.quantize.qat import TEMPLATE_BN_EPS, match_template_eps

    model = _mnv3_with_small_variances(quick_recipe)
    moved = copy.deepcopy(model)
    assert match_template_eps(moved) == sum(isinstance(m, torch.nn.BatchNorm2d) and m.eps == 1e-3 for m in model.modules()) > 10
    assert {m.eps for m in moved.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {TEMPLATE_BN_EPS}
    images = quick_calib[0][:4]
    with torch.no_grad():
        assert sqnr_db(model(images), moved(images)) > 100.0
        naive = copy.deepcopy(model)
        for bn in (m for m in naive.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.eps = TEMPLATE_BN_EPS  # what the templates did: the eps alone changed
        assert sqnr_db(model(images), naive(images)) < 40.0  # the change this guards against is visible


@pytest.mark.full
def test_qat_step_zero_is_the_ptq_program_on_mobilenet_v3(quick_recipe, quick_calib):
    """Issue 37: on MobileNetV3 the QAT program before its first step was another function than the
    PTQ program (prepare_qat_pt2e and convert_pt2e rebuild conv + BN with eps 1e-5; on a trained model
    its logits sat 2.5 dB further from the float model than PTQ's). A QAT run whose one step moves
    nothing (LR 1e-12, BN and ranges held, the same observer) must convert to PTQ's program: logits
    within 40 dB of each other, and the same distance from the float model to 0.2 dB."""
    model = _mnv3_with_small_variances(quick_recipe)
    images = _val_images(quick_recipe, 8)
    ptq = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib).convert()
    config = QATConfig(steps=1, batch_size=2, lr=1e-12, freeze_bn_step=0, freeze_observer_step=0, observer="minmax",
                       calib_size=8, select="last")
    qat = quantize(model, config, calibration=quick_calib, train_set=build_dataset(quick_recipe, "train")).convert()
    with torch.no_grad():
        assert sqnr_db(ptq(images), qat(images)) >= 40.0
    ptq_sqnr, qat_sqnr = compare_logits(model, ptq, images)[0], compare_logits(model, qat, images)[0]
    assert abs(ptq_sqnr - qat_sqnr) <= 0.2, (ptq_sqnr, qat_sqnr)


@pytest.mark.full
def test_qat_select_best_never_returns_a_program_worse_than_its_start(quick_recipe, quick_calib):
    """With an LR far too high the program leaves the float model at once: `select: best` returns
    step 0 as PTQ builds it (no check agrees clearly better; the PTQ program, bit for bit), `select:
    last` the damaged last step; both record every check."""
    model = _mnv3_with_small_variances(quick_recipe)
    train_set = build_dataset(quick_recipe, "train")
    base = dict(steps=4, batch_size=4, lr=0.5, freeze_bn_step=0, freeze_observer_step=0, observer="minmax", calib_size=8, checks=2)
    kept = quantize(model, QATConfig(**base), calibration=quick_calib, train_set=train_set)
    best = kept.prepared.meta["qat_selection"]
    last = quantize(model, QATConfig(**base, select="last"), calibration=quick_calib, train_set=train_set).prepared.meta["qat_selection"]
    images = _val_images(quick_recipe, 4)
    ptq = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib).convert()
    with torch.no_grad():
        assert torch.equal(kept.convert()(images), ptq(images))  # QAT's artifacts are then PTQ's
    assert [c["step"] for c in best["checks"]] == [0, 2, 4]
    assert best["step"] == 0 and best["program"] == "ptq" and all(c["gain_low"] <= 0 for c in best["checks"][1:])
    assert "program" not in last and last["step"] == 4 and last["sqnr_db"] < best["sqnr_db"] - 3.0 and last["kl"] > best["kl"], (best, last)


# A dead channel's largest folded depthwise weight over the live channels' median: about 100-400 in
# the default model; on the 4-epoch quick model 300 cost per-tensor PTQ 2.7 of its 21.8 points, 1000 cost 9.0
DEAD_CHANNEL_RATIO = 1000


def _with_dead_channels(model: torch.nn.Module) -> int:
    """Give every MobileNetV2 block with an expansion one dead channel, as training leaves them in the
    default model (in place): the expansion's BN shift puts channel 0 far below zero (ReLU6: 0 on
    every input), the depthwise BN after it has that channel's running statistics at 0 (its input is
    0, so its output is the BN shift), and its folded depthwise weights are DEAD_CHANNEL_RATIO x the
    live channels' (they multiply zeros). The float model stays a float model; per-tensor, the dead
    channel sets the depthwise range. Returns how many blocks changed."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    blocks = 0
    with torch.no_grad():
        for block in (m for m in model.modules() if isinstance(m, InvertedResidual)):
            if len(block.conv) < 4:  # no expansion: the depthwise reads the block's input
                continue
            block.conv[0][1].bias[0] = -1e3
            depthwise, bn = block.conv[1][0], block.conv[1][1]
            bn.running_mean[0], bn.running_var[0] = 0.0, 0.0
            folded = (depthwise.weight * (bn.weight / (bn.running_var + bn.eps).sqrt()).view(-1, 1, 1, 1)).abs().flatten(1).amax(1)
            depthwise.weight[0] *= DEAD_CHANNEL_RATIO * folded[1:].median() / folded[0]  # it multiplies zeros: any weight will do
            blocks += 1
    return blocks


# An int8 artifact against the PyTorch program it was made from, argmax agreement: the .pte and
# .tflite target, and Core ML's lower floor (an fp16 program; both measured in tests/test_export.py)
ARTIFACT_AGREEMENT, COREML_ARTIFACT_AGREEMENT = 0.99, 0.98


@pytest.mark.full
def test_qat_learned_ranges_recover_what_dead_channels_cost_per_tensor_ptq(head_models, quick_recipe, quick_calib, tmp_path):
    """Issue 37's recovery case, small and deterministic: the quick model with the dead channels the
    default model has (`_with_dead_channels`; the sep_aspp head model, 4 epochs) loses most of its
    classes to per-tensor PTQ; QAT with learned weight ranges (what `auto` picks per-tensor) must
    recover at least half of that drop, and more than QAT with the ranges held. Measured (2-core CPU
    machine, one run): float 0.2183, PTQ drop 9.02 points, QAT learned 0.62 (93% recovered), held 8.53
    (5%). The learned program's .pte, .tflite and Core ML package (MIL reference off macOS) run in
    their runtimes and agree with it: the learned scales go through every converter."""
    from aspp_edge import runtime
    from aspp_edge.export import export, from_checkpoint, from_quantized

    recipe = head_models.recipe_for("sep_aspp")
    source = from_checkpoint(head_models.checkpoint("sep_aspp"), recipe, name="dead_channels")
    model = source.model
    assert _with_dead_channels(model) >= 10
    val, train_set = build_dataset(quick_recipe, "val"), build_dataset(quick_recipe, "train")
    float_miou = evaluate_miou(model, val, torch.device("cpu"), 16)
    ptq = quantize(model, PTQConfig(observer="minmax", per_channel=False), calibration=quick_calib).convert()
    drops, programs = {"ptq": 100 * (float_miou - evaluate_miou(ptq, val, torch.device("cpu"), 16))}, {}
    for ranges in ("learned", "held"):
        config = QATConfig(per_channel=False, weight_ranges=ranges, lr=1e-3, steps=150, calib_size=32)
        programs[ranges] = quantize(model, config, calibration=quick_calib[:2], train_set=train_set)
        drops[ranges] = 100 * (float_miou - evaluate_miou(programs[ranges].convert(), val, torch.device("cpu"), 16))
    print(f"float {float_miou:.4f}, drops {drops}")
    assert drops["ptq"] >= 5.0, drops  # a collapse to recover from (else the test could not fail)
    assert drops["learned"] <= 0.5 * drops["ptq"], drops
    assert drops["learned"] < drops["held"], drops

    learned = programs["learned"]
    learned.meta = {"recipe": recipe.to_dict(), "source_checkpoint_sha256": source.checkpoint_sha256}
    source = from_quantized(learned.save(tmp_path, "dead_channels_qat"), source)
    images = _val_images(quick_recipe, 8)
    with torch.no_grad():
        reference = source.program(images).argmax(1).numpy()
    for backend, floor in (("executorch", ARTIFACT_AGREEMENT), ("tflite", ARTIFACT_AGREEMENT), ("coreml", COREML_ARTIFACT_AGREEMENT)):
        logits = runtime.load(export(source, backend, "int8", tmp_path / backend)).predict(images)
        agreement = float((logits.argmax(1) == reference).mean())
        assert agreement >= floor, f"{backend}: agreement {agreement:.4f} with the learned-range program"


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
        (lambda: QATConfig(select="first"), r"unknown qat.select 'first'; valid choices: best, last"),
        (lambda: QATConfig(checks=0), r"qat.checks 0 must be >= 1"),
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


def test_qat_select_best_keeps_step_zero_unless_a_check_agrees_clearly_better():
    """A trained check replaces step 0 only when its classes match the float model's clearly better
    on the held-out images (the mIoU against the float model's argmax; the lower end of its gain, the
    images resampled, above 0, `confidence` shared among the checks); among those the highest wins;
    `select: last` keeps whatever came last. A confidence outside (0, 1) is one ConfigError naming it."""
    import numpy as np

    from aspp_edge.distributed import DistContext
    from aspp_edge.quantize.qat import _Selection

    def logits(wrong: list[int]) -> torch.Tensor:  # the float model: class 0 on the left half of each image, 1 on the right
        out = torch.zeros(32, 2, 10, 10)
        out[:, 0, :, :5], out[:, 1, :, 5:] = 1.0, 1.0
        right = torch.arange(100).view(10, 10)[:, 5:].reshape(-1)
        for i, n in enumerate(wrong):  # the first `wrong[i]` pixels of image i's right half go to class 0
            out[i, 0].view(-1)[right[:n]] = 2.0
        return out

    def run(images_wrong: list[list[int]], **cfg) -> int:
        sel = _Selection(QATConfig(checks=len(images_wrong) - 1, **cfg), ref=logits([0] * 32), batches=[torch.zeros(32, 3, 10, 10)],
                         device="cpu", ctx=DistContext(), on_check=None)
        for step, wrong in enumerate(images_wrong):
            sel.measure(lambda x, w=wrong: logits(w), step)
        return sel.best["row"]["step"]

    start = [int(n) for n in np.random.default_rng(0).integers(0, 12, 32)]  # 0-11 of 50 pixels wrong an image
    fewer = [max(0, n - 4) for n in start]  # 4 fewer on (nearly) every image: clear
    one_fewer = [max(0, n - 1) if i == 0 else n for i, n in enumerate(start)]  # one image a pixel better: not clear
    worse = [n + 2 for n in start]
    assert run([start, one_fewer]) == 0
    assert run([start, worse, fewer, one_fewer]) == 2
    assert run([start, worse], select="last") == 1
    with pytest.raises(ConfigError, match="qat.confidence 1.5"):
        QATConfig(confidence=1.5)


def _weight_scales(converted) -> list[float]:
    """The scale of every weight's quantize node in a converted (not folded) program."""
    return [float(n.args[1]) for n in converted.graph.nodes
            if n.op == "call_function" and "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)
            and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "get_attr"]


def test_learned_weight_ranges_start_at_ptqs_train_and_convert_as_learned(head_models, quick_calib, quick_recipe):
    """`weight_ranges: learned`: every weighted layer's weight fake quant starts (step 0) at the
    per-tensor scale PTQ gives that weight, the loss moves the scales (log-scale steps of at most
    about `range_lr` up: AdamW), and convert quantizes each weight with the scale learned, not the
    observer's. `auto` learns per-tensor ranges only. A bad `weight_ranges` or `range_lr` is one
    ConfigError naming it."""
    from aspp_edge.quantize import QuantizedModel
    from aspp_edge.quantize.qat import qat
    from aspp_edge.quantize.quantizers import LearnedRangeFakeQuantize, quantizable_layers

    model = head_models["sep_aspp"]
    starts: list[torch.Tensor] = []

    def on_check(step, program):
        if step == 0:
            starts.extend(m.log_scale.detach().clone() for m in program.modules() if isinstance(m, LearnedRangeFakeQuantize))

    config = QATConfig(per_channel=False, weight_ranges="learned", range_lr=0.05, lr=1e-4, steps=3, batch_size=4, calib_size=8,
                       select="last", checks=1)
    prepared = qat(model, config, build_dataset(quick_recipe, "train"), quick_calib[:1], on_check=on_check)
    learned = [m for m in prepared.modules() if isinstance(m, LearnedRangeFakeQuantize)]
    assert len(learned) == len(starts) == sum(len(v) for v in quantizable_layers(prepared).values()) >= 10
    ptq_scales = _weight_scales(quantize(model, PTQConfig(per_channel=False), calibration=quick_calib[:1]).convert(fold_quantize=False))
    assert len(ptq_scales) == len(starts)
    for log_scale in starts:
        assert any(abs(float(log_scale.exp()) - w) <= 1e-4 * w for w in ptq_scales), (float(log_scale.exp()), ptq_scales)
    moved = torch.cat([m.log_scale.detach() - s for m, s in zip(learned, starts, strict=True)])
    # three steps of at most range_lr (AdamW) up; down, also the cut to LSQ's initial range
    assert float(moved.abs().max()) > 0.02 and float(moved.max()) <= 3 * 0.05 * 1.01, moved
    converted = _weight_scales(QuantizedModel(prepared, config, quick_calib[0][:1]).convert(fold_quantize=False))
    for m in learned:
        scale = float(m.log_scale.detach().exp())
        assert any(abs(scale - w) <= 1e-6 * scale for w in converted), (scale, converted[:10])
    assert QATConfig(per_channel=False).learns_weight_ranges and not QATConfig().learns_weight_ranges
    with pytest.raises(ConfigError, match="qat.weight_ranges 'lsq'"):
        QATConfig(weight_ranges="lsq")
    with pytest.raises(ConfigError, match="qat.range_lr 0"):
        QATConfig(range_lr=0)


@pytest.mark.full
def test_qat_conv_bn_fuse_and_fold_try_only_the_conv_kinds_present():
    """`present_conv_kinds_only` (torchao's QAT fuse and fold skip conv kinds the graph lacks) changes
    no program: a Conv2d + BN and a ConvTranspose2d + BN prepare and convert to the same graph as
    under torchao as it is, both BNs folded (the transposed kind present is not skipped), and torchao's
    helpers are its own again afterwards."""
    import contextlib
    import copy
    import importlib

    from torch import nn
    from torchao.quantization.pt2e import qat_utils
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from aspp_edge.quantize.quantizers import build_quantizer

    qat_module = importlib.import_module("aspp_edge.quantize.qat")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ConvTranspose2d(8, 8, 2, stride=2), nn.BatchNorm2d(8)).train()
    x = torch.randn(2, 3, 16, 16)
    helpers = qat_utils._fuse_conv_bn_qat_helper, qat_utils._fold_conv_bn_qat_helper  # noqa: SLF001

    def convert(ctx):
        exported = torch.export.export(copy.deepcopy(model), (x,)).module()
        with ctx():
            prepared = prepare_qat_pt2e(exported, build_quantizer(qat=True))
        prepared(x)
        with ctx():
            return convert_pt2e(prepared, fold_quantize=False)

    skipped, full = convert(qat_module.present_conv_kinds_only), convert(contextlib.nullcontext)
    assert (qat_utils._fuse_conv_bn_qat_helper, qat_utils._fold_conv_bn_qat_helper) == helpers  # noqa: SLF001
    assert str(skipped.graph) == str(full.graph)
    targets = {str(n.target) for n in skipped.graph.nodes if n.op == "call_function"}
    assert {"aten.conv2d.default", "aten.conv_transpose2d.input"} <= targets
    assert not any("batch_norm" in t for t in targets)
    with torch.no_grad():
        torch.testing.assert_close(skipped(x), full(x), rtol=0, atol=0)
