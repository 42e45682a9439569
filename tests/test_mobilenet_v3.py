"""MobileNetV3's ops in the int8 scheme: the exact graph rewrites and the saturated-clamp removal.

The trained MobileNetV3 export matrix (every runtime, agreement, Q/DQ, delegation) runs in
tests/test_export.py with the `head@mobilenet_v3_large` keys (`-m slow`); here, in `make test`, an
untrained one goes to ExecuTorch and LiteRT int8."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

from aspp_edge import create_model
from aspp_edge.config import PTQConfig, QATConfig
from aspp_edge.quantize import quantize
from aspp_edge.quantize.ptq import export_dynamic_batch
from aspp_edge.quantize.quantizers import UNIT_QSPEC
from aspp_edge.quantize.rewrites import (
    DEQUANTIZE, HARDSIGMOID_TARGETS, HARDSWISH_TARGETS, QUANTIZE, drop_saturated_clamps, hardswish_as_int8_gate, integer_friendly,
)


# The untrained MobileNetV3 LR-ASPP's int8 artifacts vs its PyTorch program, logits SQNR floors: measured
# 69.7 dB (.pte) and 43.7 dB (.tflite: the hardswish gate's rounding) in make test on the 2-core machine,
# 2026-12-03 (seeded model, one run), less about 10% and 5 dB
MNV3_ARTIFACT_SQNR_DB = {"executorch": 60.0, "tflite": 38.0}


class SEBlock(nn.Module):
    """MobileNetV3's pattern: conv + BN + hardswish, squeeze-excitation with a hardsigmoid gate,
    and one hardsigmoid that no conv feeds (it becomes a 1x1 depthwise conv (1/6, 1/2) + clamp)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.Hardswish())
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.out = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        gate = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(y, 1)))))  # torchvision's SE squeeze
        return self.out(y * gate) + nn.functional.hardsigmoid(x.mean(1, keepdim=True))


def _targets(gm) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.fixture()
def block():
    torch.manual_seed(0)
    model = SEBlock().eval()
    with torch.no_grad():  # BN statistics away from the identity, so folding mistakes show
        model.conv[1].running_mean.uniform_(-1, 1)
        model.conv[1].running_var.uniform_(0.5, 2)
    return model


def test_rewrites_compute_the_same_function(block):
    x = torch.randn(2, 3, 16, 16) * 3
    gm = export_dynamic_batch(block, x).module()
    done = integer_friendly(gm)
    assert len(done["hardsigmoid_folded"]) == 1 and len(done["hardsigmoid_as_conv"]) == 1, done
    targets = _targets(gm)
    assert sum(t in HARDSIGMOID_TARGETS for t in targets) == 0  # the one no conv feeds is a conv + clamp
    assert sum(t in HARDSWISH_TARGETS for t in targets) == 1  # hardswish stays for ExecuTorch and Core ML
    with torch.no_grad():
        torch.testing.assert_close(gm(x), block(x), atol=1e-5, rtol=1e-5)


def test_the_gates_are_int8_on_exactly_zero_to_one_and_their_clamps_go(block):
    """Each [0, 1] gate is the conv output quantized with the fixed [0, 1] qparams; the clamp after
    it is removed, and removing it changes no int8 value of the program."""
    calib = [torch.randn(4, 3, 16, 16) * 2 for _ in range(2)]
    q = quantize(block, PTQConfig(observer="minmax"), calibration=calib)
    raw = convert_pt2e(copy.deepcopy(q.prepared), fold_quantize=False)
    clamps = [n for n in raw.graph.nodes if n.target == torch.ops.aten.hardtanh.default]
    assert len(clamps) == 2  # the folded squeeze-excitation gate and the hardsigmoid no conv fed
    for clamp in clamps:
        dq = clamp.args[0]
        assert dq.target == DEQUANTIZE and dq.args[2] == UNIT_QSPEC.zero_point
        assert dq.args[1] == pytest.approx(UNIT_QSPEC.scale, rel=1e-6)  # stored as float32
    cleaned = q.convert(fold_quantize=False)
    assert torch.ops.aten.hardtanh.default not in _targets(cleaned)
    x = torch.randn(3, 3, 16, 16) * 2
    with torch.no_grad():
        assert torch.equal(cleaned(x), raw(x))
    assert drop_saturated_clamps(cleaned) == 0  # nothing left to remove


def test_a_clamp_the_qparams_do_not_cover_stays():
    """A ReLU6 whose qparams span more than [0, 6] would clip values: it is kept."""

    class Wide(nn.Module):
        def forward(self, x):
            return nn.functional.relu6(x) + 0.0

    gm = torch.export.export(Wide(), (torch.randn(1, 4),)).module()
    graph = gm.graph
    (x,) = [n for n in graph.nodes if n.op == "placeholder"]
    relu6 = next(n for n in graph.nodes if n.op == "call_function")
    with graph.inserting_before(relu6):
        q = graph.call_function(QUANTIZE, (x, 0.1, -128, -128, 127, torch.int8))  # spans [0, 25.5]
        dq = graph.call_function(DEQUANTIZE, (q, 0.1, -128, -128, 127, torch.int8))
    relu6.args = (dq, 0.0, 6.0)
    with graph.inserting_after(relu6):
        q2 = graph.call_function(QUANTIZE, (relu6, 0.1, -128, -128, 127, torch.int8))
    relu6.replace_all_uses_with(q2, delete_user_cb=lambda user: user is not q2)
    gm.recompile()
    assert drop_saturated_clamps(gm) == 0


# QAT: the same rewrites before prepare_qat_pt2e; its prepare of MobileNetV3 costs about a minute of CPU
@pytest.mark.parametrize("method", ["ptq", pytest.param("qat", marks=pytest.mark.slow)])
def test_mobilenet_v3_programs_have_no_float_activation_left(method, quick_recipe, quick_calib):
    """The whole MobileNetV3 LR-ASPP int8 program (PTQ and QAT graphs): no hardsigmoid, every
    hardswish an int8 op (dequantize in, one quantize out), every multiply, add and mean between
    quantize/dequantize; for LiteRT the hardswishes become int8 gates (int8 agreement with the
    float model checked on trained models in test_export)."""
    torch.manual_seed(0)
    model = create_model("lraspp", num_classes=quick_recipe.num_classes, backbone="mobilenet_v3_large", decoder="lraspp",
                         width_mult=0.25, head_channels=16, input_size=64).eval()
    if method == "ptq":
        q = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib[:1])
    else:
        from aspp_edge.data import build_dataset

        config = QATConfig(steps=1, batch_size=4, observer="minmax", calib_size=8)
        q = quantize(model, config, calibration=quick_calib[:1], train_set=build_dataset(quick_recipe, "train"))
    program = q.convert(fold_quantize=False)
    targets = _targets(program)
    assert not HARDSIGMOID_TARGETS & set(targets)
    assert torch.ops.aten.hardtanh.default not in targets
    swishes = [n for n in program.graph.nodes if n.target in HARDSWISH_TARGETS]
    assert len(swishes) >= 10 and all(n.args[0].target == DEQUANTIZE and [u.target for u in n.users] == [QUANTIZE] for n in swishes)
    float_ops = [n for n in program.graph.nodes if n.op == "call_function" and n.target in
                 {torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor, torch.ops.aten.mean.dim, torch.ops.aten.adaptive_avg_pool2d.default}
                 and not all(getattr(a, "target", DEQUANTIZE) == DEQUANTIZE for a in n.args if isinstance(a, torch.fx.Node))]
    assert float_ops == [], [n.name for n in float_ops]


def test_inspect_says_which_int8_ops_litert_leaves_outside_xnnpack(quick_recipe, tmp_path):
    """Without the rewrites an int8 HARD_SWISH stays outside LiteRT's XNNPACK delegate (the evidence
    behind the hardswish rewrite; if a LiteRT release delegates it, this test says so), and
    `aspp-edge inspect` names the op and the reason; with them the file is one partition."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from aspp_edge.export import tflite as tfl
    from aspp_edge.export.inspect import format_inspection, inspect_artifact
    from aspp_edge.quantize.quantizers import build_quantizer
    from aspp_edge.runtime.litert import xnnpack_delegation

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 32, 32)
    recipe = quick_recipe.replace(data={"resolution": 32})
    paths = {}
    for rewrite in (False, True):
        prepared = prepare_pt2e(export_dynamic_batch(model, x).module(), build_quantizer())
        prepared(x)
        program = convert_pt2e(prepared, fold_quantize=False)
        if rewrite:
            assert len(hardswish_as_int8_gate(program)) == 1
        paths[rewrite] = tmp_path / f"rewrite_{rewrite}.tflite"
        paths[rewrite].write_bytes(tfl.to_float_io(tfl.convert(program, x[:1], recipe, int8=True)))
    before, after = xnnpack_delegation(paths[False]), xnnpack_delegation(paths[True])
    assert before["ops_outside"] == {"HARD_SWISH": 1}, f"LiteRT's XNNPACK delegate now takes int8 HARD_SWISH? {before}"
    assert after == {"partitions": 1, "ops_outside": {}, "why": {}}, after
    text = format_inspection(inspect_artifact(paths[False]))
    assert "ops outside: HARD_SWISH x1" in text and "runs HARD_SWISH in float only" in text, text


def test_litert_hardswish_gate_is_integer_and_close_to_the_program(block):
    """The .tflite's form of an int8 hardswish: a [0, 1] int8 gate (dwconv 1x1: 1/6, 1/2) times x,
    with the hardswish's output qparams; it differs from the program by the gate's rounding only."""
    calib = [torch.randn(4, 3, 16, 16) * 2 for _ in range(2)]
    model = nn.Sequential(block.conv, nn.Conv2d(8, 4, 1)).eval()  # conv + BN + hardswish -> conv
    program = quantize(model, PTQConfig(observer="minmax"), calibration=calib).convert(fold_quantize=False)
    gated = copy.deepcopy(program)
    (name,) = hardswish_as_int8_gate(gated)
    assert not HARDSWISH_TARGETS & set(_targets(gated))
    mul = next(n for n in gated.graph.nodes if n.name == name)
    (out_q,) = mul.users
    swish = next(n for n in program.graph.nodes if n.target in HARDSWISH_TARGETS)
    (swish_q,) = swish.users
    assert out_q.target == QUANTIZE and out_q.args[1:] == swish_q.args[1:]  # the hardswish output's qparams kept
    gate = mul.args[1]
    assert gate.target == DEQUANTIZE and gate.args[2] == UNIT_QSPEC.zero_point
    x = torch.randn(4, 3, 16, 16) * 2
    with torch.no_grad():
        ref, out = program(x), gated(x)
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean())
    assert sqnr >= 30, f"{sqnr:.1f} dB"


def test_mobilenet_v3_int8_is_one_xnnpack_graph_in_executorch_and_litert(quick_recipe, quick_calib, tmp_path):
    """The MobileNetV3 LR-ASPP int8 program (untrained, seeded: the structure does not need training)
    exported to .pte and .tflite: the .pte fully delegated to XNNPACK, the .tflite integer inside
    (Q/DQ at the float I/O only) and one XNNPACK partition with nothing left to LiteRT's builtin
    kernels, and both computing the program (logits SQNR floors MNV3_ARTIFACT_SQNR_DB; trained models' argmax agreement
    is checked by the slow matrix)."""
    from aspp_edge import runtime
    from aspp_edge.export import ExportSource, export
    from aspp_edge.metrics import logits_sqnr_db
    from aspp_edge.runtime.litert import xnnpack_delegation

    torch.manual_seed(0)
    recipe = quick_recipe.replace(model={"head": "lraspp", "backbone": "mobilenet_v3_large", "decoder": "lraspp",
                                         "width_mult": 0.25, "head_channels": 16})
    model = create_model("lraspp", **recipe.model_kwargs()).eval()
    program = quantize(model, PTQConfig(observer="minmax"), calibration=quick_calib[:1]).convert(fold_quantize=False)
    source = ExportSource(recipe, model=model, program=program, method="ptq", name="mnv3")
    images = torch.cat(quick_calib)[:4]
    with torch.no_grad():
        want = program(images).numpy()
    for backend in ("executorch", "tflite"):
        path = export(source, backend, "int8", tmp_path)
        got = runtime.load(path).predict(images.numpy())
        print(f"{backend} int8 vs the program: logits SQNR {logits_sqnr_db(got, want):.1f} dB")
        assert logits_sqnr_db(got, want) >= MNV3_ARTIFACT_SQNR_DB[backend], (backend, logits_sqnr_db(got, want))
        info = runtime.load(path).manifest["backend_info"]
        if backend == "executorch":
            assert info["conv_mac_fraction"] == 1.0 and info["undelegated_ops"] == {}, info
        else:
            assert info["qdq_inside"] == [], info["qdq_inside"]
            assert xnnpack_delegation(path) == {"partitions": 1, "ops_outside": {}, "why": {}}
