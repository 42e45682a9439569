"""check-arm64: artifacts on the aarch64 runtimes under qemu against their x86 run and the float model.

The fast tests check the pieces that need no aarch64 environment (the missing-environment error, the
instruction classes, the kernel expectations, a row's verdict). The full-tier tests build the
environment with the project's own setup (pinned downloads into the cache, ~35 s and 172 MB the
first time, nothing after) and run the quick model's .pte and .tflite on it: a missing or unbuildable
environment is an error there, never a skip."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from aspp_edge.errors import AsppEdgeError
from aspp_edge.evaluate import arm64
from aspp_edge.runtime.arm64 import kernels
from aspp_edge.runtime.arm64.env import Arm64EnvMissing, find_env

HEAD = "sep_aspp"
# the layer the corruption test negates: backbone block 3's depthwise conv (as tests/test_numerics.py)
TARGET, TARGET_INDEX = "backbone.features.3.conv.1.0", 7


# ----------------------------------------------------------------------------- fast: no aarch64 environment

def test_missing_environment_is_one_line_naming_the_setup_command(tmp_path):
    with pytest.raises(Arm64EnvMissing) as err:
        find_env(tmp_path / "cache")
    msg = str(err.value)
    assert "\n" not in msg and "qemu-aarch64" in msg and f"aspp-edge setup-arm64 --cache {tmp_path / 'cache'}" in msg


def test_instruction_classes_tell_the_int8_and_fp16_paths_apart():
    assert kernels.isa_class("sdot", "v16.4s, v0.16b, v4.4b[0]") == "dotprod"
    assert kernels.isa_class("smmla", "v16.4s, v0.16b, v4.16b") == "i8mm"
    assert kernels.isa_class("smlal", "v16.4s, v0.4h, v4.4h") == "neon-int8"
    assert kernels.isa_class("fmla", "v0.8h, v1.8h, v2.h[3]") == "fp16"
    assert kernels.isa_class("fmla", "v0.4s, v1.4s, v2.s[3]") == "neon-fp32"
    assert kernels.isa_class("fcvtn", "v0.4h, v1.4s") is None  # a conversion is not fp16 arithmetic
    assert kernels.isa_class("ldr", "q0, [x1]") is None
    k = kernels.Kernels("lib.so", "symtab", {}, ["xnn_qs8_qc8w_gemm_minmax_fp32_ukernel_4x16c4__neondot",
                                                 "xnn_f16_gemm_minmax_ukernel_6x16__neonfp16arith_ld64",
                                                 "xnn_qs8_gemm_minmax_ukernel_4x8c8__aarch64_neoni8mm"], 3)
    assert k.ukernel_isas() == ["neondot", "neonfp16arith", "neoni8mm"]


def test_kernels_are_read_from_qemus_translated_code_and_placed_by_the_mappings(tmp_path):
    log = tmp_path / "in_asm.log"
    log.write_text("----------------\nIN: \n"
                   "0x0000005500001000:  4e8494d0  sdot     v16.4s, v6.16b, v4.16b\n"
                   "0x0000005500001004:  4e20c400  smlal    v0.4s, v0.4h, v0.4h\n"
                   "0x0000005500009000:  4e8494d0  sdot     v16.4s, v6.16b, v4.16b\n")  # outside the library
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"not an ELF")
    (k,) = kernels.read_kernels(log, [("5500000000-5500002000", str(lib))], ["libfake.so"])
    assert k.isa == {"dotprod": 1, "neon-int8": 1} and k.symtab == "none" and k.ukernels == []


def test_expected_kernels_follow_the_cpu_features():
    assert arm64.expected_kernels("int8", "default", ["asimddp", "asimdhp"])[0] == {"dotprod", "i8mm"}
    assert arm64.expected_kernels("int8", "default", [])[0] == {"neon-int8"}
    assert arm64.expected_kernels("fp32", "xnnpack-fp16", ["asimdhp"])[0] == {"fp16"}
    assert arm64.expected_kernels("fp32", "default", ["asimdhp"])[0] == {"neon-fp32"}


def _fake_run(outputs, isa, features=("asimddp", "asimdhp")):
    k = kernels.Kernels("libexecutorch_backend_xnnpack.so", "dynsym", isa, [], 0)
    return SimpleNamespace(outputs=outputs, cpu="cortex-a76", runtime="executorch (aarch64)", features=list(features),
                           kernels=[k], log=[], details={}, evaluated_by="qemu-aarch64 (cortex-a76)")


def test_a_row_fails_on_a_generic_kernel_path_and_on_a_wrong_model():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1, 4, 8, 8)).astype(np.float32)
    x86 = [ref + 0.001 * rng.normal(size=ref.shape).astype(np.float32)]
    ident = lambda y: y  # noqa: E731
    good = arm64.check_row(Path("m.pte"), "executorch", "int8", "default", _fake_run([x86[0].copy()], {"dotprod": 9}),
                           x86, ident, "executorch (x86)", ref)
    assert good.passed and good.identical_to_x86 and good.latency_ms is None and good.evaluated_by == "qemu-aarch64 (cortex-a76)"
    fallback = arm64.check_row(Path("m.pte"), "executorch", "int8", "default", _fake_run([x86[0].copy()], {"neon-int8": 9}),
                               x86, ident, "executorch (x86)", ref)
    assert not fallback.passed and fallback.failures[0].startswith("kernels:")
    wrong = -ref  # a broken artifact runs the same on both machines: the float model catches it
    broken = arm64.check_row(Path("m.pte"), "executorch", "int8", "default", _fake_run([wrong.copy()], {"dotprod": 9}),
                             [wrong], ident, "executorch (x86)", ref)
    assert not broken.passed and broken.identical_to_x86 and broken.failures[0].startswith("vs float")


# ----------------------------------------------------------------------------- corrupting a layer's int8 weights

def _negate(blob: bytearray, start: int, size: int) -> None:
    values = np.frombuffer(bytes(blob[start : start + size]), np.int8)
    blob[start : start + size] = np.clip(-values.astype(np.int16), -127, 127).astype(np.int8).tobytes()


def _copy(artifact: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy(artifact, into / artifact.name)
    shutil.copy(f"{artifact}.manifest.json", into / f"{artifact.name}.manifest.json")
    return into / artifact.name


def corrupt_pte(artifact: Path, program: Path, into: Path) -> Path:
    """A copy of an int8 .pte with TARGET's int8 weights negated. XNNPACK keeps a depthwise conv's
    weights as (1, kh, kw, C): the program's weight quantized with its per-channel scales, in that
    layout, occurs once in the file."""
    import torch

    from aspp_edge.quantize import load_quantized

    gm = load_quantized(program)
    tensors = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}
    node = next(n for n in gm.graph.nodes if n.op == "call_function" and "quantize_per_channel" in str(n.target)
                and "dequantize" not in str(n.target) and n.args[0].target == f"{TARGET}.weight")
    w, scale = tensors[node.args[0].target].detach(), tensors[node.args[1].target]
    q = torch.clamp(torch.round(w / scale.view(-1, 1, 1, 1)), -127, 127).to(torch.int8).numpy()
    needle = np.ascontiguousarray(q.transpose(1, 2, 3, 0)).tobytes()
    out = _copy(artifact, into)
    blob = bytearray(out.read_bytes())
    assert blob.count(needle) == 1, "the layer's weights are found once in the .pte"
    _negate(blob, blob.find(needle), len(needle))
    out.write_bytes(bytes(blob))
    return out


def corrupt_tflite(artifact: Path, into: Path) -> Path:
    """A copy of an int8 .tflite with TARGET's int8 weights negated (found through the interpreter)."""
    from ai_edge_litert.interpreter import Interpreter

    out = _copy(artifact, into)
    interp = Interpreter(model_path=str(out))
    weighted = [op for op in interp._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    weights = interp.get_tensor(int(weighted[TARGET_INDEX]["inputs"][1]))
    blob = bytearray(out.read_bytes())
    assert blob.count(weights.tobytes()) == 1, "the layer's weights are found once in the .tflite"
    _negate(blob, blob.find(weights.tobytes()), weights.nbytes)
    out.write_bytes(bytes(blob))
    return out


# ----------------------------------------------------------------------------- full: the aarch64 runtimes

@pytest.fixture(scope="module")
def arm64_env():
    """The environment, built by the project's setup if it is not yet (an error here fails the tests)."""
    from aspp_edge.runtime.arm64 import ensure_env

    env, summary = ensure_env(progress=False)
    return env


@pytest.mark.full
def test_quick_artifacts_on_aarch64_agree_with_x86_on_the_phones_kernels(quick_run, arm64_env):
    art = quick_run / HEAD / "artifacts"
    paths = [next(art.glob("*_ptq_executorch_int8.pte")), next(art.glob("*_ptq_tflite_int8.tflite")), next(art.glob("*_tflite_fp32.tflite"))]
    rows = arm64.check_arm64(paths, images=2, cpus=["cortex-a76"], progress=False)
    assert [(Path(r.artifact).suffix, r.mode) for r in rows] == [(".pte", "default"), (".tflite", "default"),
                                                                  (".tflite", "default"), (".tflite", "xnnpack-fp16")]
    for r in rows:
        assert r.passed, arm64.summary_lines([r])
        assert r.evaluated_by == "qemu-aarch64 (cortex-a76)" and r.latency_ms is None
        assert {"asimddp", "asimdhp"} <= set(r.features)
    pte, tfl_int8, _, fp16 = rows
    assert pte.agreement_vs_x86 >= 0.99 and pte.sqnr_vs_x86_db >= 30
    # the int8 GEMMs ran XNNPACK's dot-product kernels, in each runtime's own XNNPACK
    xnn = next(k for k in pte.detail["kernels"] if k["library"] == "libexecutorch_backend_xnnpack.so")
    assert xnn["isa_instructions"].get("dotprod", 0) > 0
    litert = next(k for k in tfl_int8.detail["kernels"] if k["library"] == "libpywrap_litert_common.so")
    assert "neondot" in litert["ukernel_isas"]
    # forced fp16 inference ran half-precision arithmetic and stayed finite
    assert sum(k["isa_instructions"].get("fp16", 0) for k in fp16.detail["kernels"]) > 0
    assert fp16.nonfinite == 0 and not fp16.identical_to_x86


@pytest.mark.full
def test_a_corrupted_weight_is_caught_on_aarch64(quick_run, arm64_env, tmp_path):
    art = quick_run / HEAD / "artifacts"
    pte = corrupt_pte(next(art.glob("*_ptq_executorch_int8.pte")), next((quick_run / HEAD / "quant").glob("*_ptq_int8.pt2")), tmp_path)
    tfl = corrupt_tflite(next(art.glob("*_ptq_tflite_int8.tflite")), tmp_path)
    rows = arm64.check_arm64([pte, tfl], checkpoint=quick_run / HEAD / "float" / "float.pt", images=2, cpus=["cortex-a76"],
                             progress=False)
    for r in rows:
        assert not r.passed and any(f.startswith("vs float") for f in r.failures), arm64.summary_lines([r])
        assert r.kernels_ok and r.agreement_vs_x86 >= 0.99  # the aarch64 runtime reproduces the broken model


@pytest.mark.full
def test_check_arm64_cli_fails_in_one_line_on_a_broken_artifact(quick_run, arm64_env, tmp_path, capsys):
    from aspp_edge.cli import main

    art = quick_run / HEAD / "artifacts"
    tfl = corrupt_tflite(next(art.glob("*_ptq_tflite_int8.tflite")), tmp_path)
    rc = main(["check-arm64", str(tfl), "--checkpoint", str(quick_run / HEAD / "float" / "float.pt"), "--images", "1",
               "--cpu", "cortex-a76", "--json", str(tmp_path / "rows.json")])
    out, err = capsys.readouterr()
    assert rc == 2 and "qemu-aarch64 (cortex-a76)" in out
    last = err.strip().splitlines()[-1]  # after the progress bar: one line
    assert last.startswith("aspp-edge: error: 1 of 1 aarch64 rows failed: ") and "vs float" in last


def test_run_plans_an_arm64_stage_per_pte_and_tflite_only_when_asked(tmp_path):
    from aspp_edge.config import load_recipe
    from aspp_edge.pipeline.accuracy import AccuracyStages

    recipe = load_recipe("quick")
    common = dict(out=tmp_path, threads=1, runs=1, warmup=0, progress=False, numerics_images=0)
    keys = [s.key for s in AccuracyStages(**common, arm64_cpus=("cortex-a76",)).model_stages(
        HEAD, recipe, ["executorch", "tflite", "coreml"], ["ptq"])]
    arm = sorted(k.rsplit("/", 1)[1] for k in keys if "/arm64/" in k)
    assert arm == ["quick_sep_aspp_executorch_fp32.pte", "quick_sep_aspp_ptq_executorch_int8.pte",
                   "quick_sep_aspp_ptq_tflite_int8.tflite", "quick_sep_aspp_tflite_fp32.tflite"]
    plain = AccuracyStages(**common).model_stages(HEAD, recipe, ["executorch", "tflite"], ["ptq"])
    assert not [s for s in plain if "/arm64/" in s.key]


@pytest.mark.full
def test_run_arm64_adds_the_stages_and_the_report_section(quick_run, arm64_env, tmp_path):
    from aspp_edge.config import load_recipe
    from aspp_edge.pipeline import run

    out = tmp_path / "copy"  # a copy: the shared run stays as the other tests read it
    shutil.copytree(quick_run, out)
    summary = run(load_recipe("quick"), out, methods="ptq", runs=3, peaks=False, progress=False, numerics_images=0,
                  backends="executorch,tflite", arm64="cortex-a76")
    assert summary.stages_run == 4  # one arm64 stage per artifact; everything else reused
    checked = {Path(r["path"]).name: r["arm64"] for r in summary.rows}
    assert all(c and all(x["passed"] and x["cpu"] == "cortex-a76" for x in c) for c in checked.values()), checked
    report = (out / "report.md").read_text()
    assert "## On the phone's instruction set" in report and report.count("qemu-aarch64 (cortex-a76)") == 5
