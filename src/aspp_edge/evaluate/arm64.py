"""`aspp-edge check-arm64`: every artifact on the aarch64 builds of its runtime (qemu-user, a phone-class
CPU model) against the same artifact's x86 run and the float model, on the recipe's val images.

A row passes when
- the kernels that ran are the phone's: qemu's translated code in the runtime's XNNPACK library holds
  the instruction class the CPU model offers for the artifact's arithmetic (int8: `sdot` or `smmla`
  where the CPU has dot product, else NEON `smlal`; fp16 inference: half-precision vector arithmetic;
  fp32: NEON `fmla .4s`), so a row cannot pass on a generic fallback path;
- it agrees with the x86 run: argmax agreement >= `AGREE_X86` and logits SQNR >= `SQNR_X86_DB`
  (`FP16_AGREE_X86` / `FP16_SQNR_X86_DB` when XNNPACK's fp16 inference is forced: x86 runs it in fp32);
- it is the model it claims to be: logits SQNR against the float model >= `FLOAT_FLOOR_DB` (a corrupted
  weight runs the same on both machines, and is caught here).
Rows carry no latency: emulated time is not phone time.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AsppEdgeError, choices_error
from ..metrics import logits_sqnr_db, pixel_agreement

AGREE_X86 = 0.99
SQNR_X86_DB = 30.0
FP16_AGREE_X86 = 0.98
FP16_SQNR_X86_DB = 20.0
FLOAT_FLOOR_DB = 10.0
DEFAULT_IMAGES = 4
ARM64_BACKENDS = ("executorch", "tflite")  # the backends whose aarch64 runtimes the environment holds


@dataclass
class Arm64Row:
    artifact: str
    backend: str
    precision: str
    mode: str
    cpu: str
    evaluated_by: str
    runtime: str
    x86_runtime: str
    images: int
    features: list[str]
    kernels: str  # one line: what ran, by ISA class (and XNNPACK microkernel ISAs where named)
    kernels_ok: bool
    agreement_vs_x86: float
    sqnr_vs_x86_db: float
    max_abs_diff_vs_x86: float
    max_steps_vs_x86: int | None  # integer outputs: the largest difference in quantization steps
    identical_to_x86: bool
    agreement_vs_float: float
    sqnr_vs_float_db: float
    x86_agreement_vs_float: float
    x86_sqnr_vs_float_db: float
    nonfinite: int  # inf/nan logits on aarch64 (fp16 overflow)
    max_abs_logit: float
    passed: bool
    failures: list[str] = field(default_factory=list)
    latency_ms: None = None  # never: emulation time is not phone time
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def expected_kernels(precision: str, mode: str, features: list[str]) -> tuple[set[str], str]:
    """The instruction classes that show the phone's path ran, and how to say it."""
    if mode == "xnnpack-fp16":
        if "asimdhp" in features:
            return {"fp16"}, "fp16 vector arithmetic"
        return {"neon-fp32"}, "NEON fp32 (the CPU has no fp16 arithmetic)"
    if precision == "int8":
        if "asimddp" in features or "i8mm" in features:
            return {"dotprod", "i8mm"}, "a dot-product int8 path (sdot / smmla)"
        return {"neon-int8"}, "NEON int8 (smlal)"
    return {"neon-fp32"}, "NEON fp32 (fmla .4s)"


def _kernel_summary(run) -> tuple[dict[str, int], str]:
    total: dict[str, int] = {}
    parts = []
    for k in run.kernels:
        for cls, n in k.isa.items():
            total[cls] = total.get(cls, 0) + n
        if sum(k.isa.values()):
            isas = k.ukernel_isas()
            named = f"; ukernels {len(k.ukernels)}: {', '.join(isas)}" if k.ukernels else ""
            parts.append(f"{k.library}: " + ", ".join(f"{c} {n}" for c, n in k.isa.items()) + named)
    return total, " + ".join(parts) or "no kernel code seen"


def check_row(path: Path, backend: str, precision: str, mode: str, run, x86_raw: list[np.ndarray], to_logits,
              x86_runtime: str, float_logits: np.ndarray) -> Arm64Row:
    """Compare one aarch64 run with the x86 run of the same artifact and with the float model."""
    arm_raw = []
    for got, want in zip(run.outputs, x86_raw):
        if got.nbytes != want.nbytes:
            raise AsppEdgeError(f"{path.name} on aarch64 returned {got.nbytes} bytes; x86 returned {want.nbytes} "
                                f"({want.dtype}{list(want.shape)})")
        arm_raw.append(np.frombuffer(got.tobytes(), dtype=want.dtype).reshape(want.shape))
    arm = np.concatenate([to_logits(r) for r in arm_raw])
    x86 = np.concatenate([to_logits(r) for r in x86_raw])
    integer = np.issubdtype(x86_raw[0].dtype, np.integer)
    steps = int(max(np.abs(a.astype(np.int64) - b.astype(np.int64)).max() for a, b in zip(arm_raw, x86_raw))) if integer else None
    finite = np.isfinite(arm)
    total, kernel_line = _kernel_summary(run)
    if outside := run.details.get("ops_outside"):  # the runtime's builtin kernels ran these: said, not failed
        kernel_line += f"; {run.details['delegate_partitions']} XNNPACK partitions, outside them (builtin kernels): " + ", ".join(
            f"{name} {n}" for name, n in sorted(outside.items()))
    want, want_text = expected_kernels(precision, mode, run.features)
    kernels_ok = any(total.get(c, 0) > 0 for c in want)
    if backend == "tflite" and mode != "builtin" and not run.details.get("delegate_partitions"):
        kernels_ok = False  # the XNNPACK delegate took no partition: everything ran in builtin kernels
    row = Arm64Row(
        artifact=str(path), backend=backend, precision=precision, mode=mode, cpu=run.cpu, evaluated_by=run.evaluated_by,
        runtime=run.runtime, x86_runtime=x86_runtime, images=len(arm_raw), features=run.features, kernels=kernel_line,
        kernels_ok=kernels_ok, agreement_vs_x86=pixel_agreement(arm, x86), sqnr_vs_x86_db=logits_sqnr_db(np.nan_to_num(arm), x86),
        max_abs_diff_vs_x86=float(np.abs(np.nan_to_num(arm) - x86).max()), max_steps_vs_x86=steps,
        identical_to_x86=all(a.tobytes() == b.tobytes() for a, b in zip(arm_raw, x86_raw)),
        agreement_vs_float=pixel_agreement(arm, float_logits), sqnr_vs_float_db=logits_sqnr_db(np.nan_to_num(arm), float_logits),
        x86_agreement_vs_float=pixel_agreement(x86, float_logits), x86_sqnr_vs_float_db=logits_sqnr_db(x86, float_logits),
        nonfinite=int((~finite).sum()), max_abs_logit=float(np.abs(arm[finite]).max()) if finite.any() else math.inf,
        passed=False, detail={"kernels": [k.to_dict() for k in run.kernels], "runtime_log": run.log, **run.details,
                              "expected_kernels": want_text})
    fp16 = mode == "xnnpack-fp16"
    agree_min, sqnr_min = (FP16_AGREE_X86, FP16_SQNR_X86_DB) if fp16 else (AGREE_X86, SQNR_X86_DB)
    if not kernels_ok:
        row.failures.append(f"kernels: no {want_text} seen in the runtime's code ({kernel_line})")
    if row.agreement_vs_x86 < agree_min or row.sqnr_vs_x86_db < sqnr_min:
        row.failures.append(f"vs x86: agreement {row.agreement_vs_x86:.4f} (min {agree_min}), "
                            f"SQNR {row.sqnr_vs_x86_db:.1f} dB (min {sqnr_min})")
    if row.sqnr_vs_float_db < FLOAT_FLOOR_DB:
        row.failures.append(f"vs float: SQNR {row.sqnr_vs_float_db:.1f} dB < {FLOAT_FLOOR_DB} dB (agreement {row.agreement_vs_float:.4f})")
    if row.nonfinite:
        row.failures.append(f"{row.nonfinite} non-finite logits (fp16 overflow)")
    row.passed = not row.failures
    return row


def check_arm64(artifacts: list[str | Path], *, recipe=None, checkpoint: str | Path | None = None, images: int = DEFAULT_IMAGES,
                cpus: tuple[str, ...] | list[str] | None = None, fp16: bool = True, cache: str | Path | None = None,
                progress: bool = True) -> list[Arm64Row]:
    """Each .pte / .tflite on aarch64 under qemu with every CPU model in `cpus`, against its x86 run and the
    float model on `images` val images. `fp16`: float .tflite artifacts also run with XNNPACK's fp16
    inference forced (on a CPU model without fp16 arithmetic that row expects NEON fp32 kernels)."""
    from .. import runtime
    from ..checkpoint import load_model
    from ..console import progress_bar
    from ..formats import backend_for, read_manifest
    from ..runtime import arm64
    from .artifacts import find_reference
    from .numerics import val_images

    paths = [runtime.check_artifact(p) for p in artifacts]
    for p in paths:
        read_manifest(p)
        if (backend := backend_for(p).name) not in ARM64_BACKENDS:  # a Core ML or Vulkan .pte has no aarch64 Linux runtime here
            raise choices_error(f"backend for check-arm64 ({p.name})", backend, ARM64_BACKENDS, cls=AsppEdgeError)
    if images < 1:
        raise AsppEdgeError(f"--images must be at least 1; got {images}")
    env = arm64.find_env(cache)
    cpus = list(cpus or arm64.PHONE_CPUS)
    known = env.cpus()
    for cpu in cpus:
        if cpu not in known:
            raise choices_error("--cpu", cpu, known)
    refs: dict[Path, Any] = {}
    plan = []
    for path in paths:
        manifest = read_manifest(path)
        modes = ["default"]
        if fp16 and path.suffix == ".tflite" and manifest["precision"] != "int8":
            modes.append("xnnpack-fp16")
        plan += [(path, cpu, mode) for cpu in cpus for mode in modes]
    rows = []
    x86_cache: dict[Path, tuple] = {}
    bar = progress_bar(plan, desc="check-arm64", disable=not progress)
    for path, cpu, mode in bar:
        bar.set_postfix_str(f"{path.name} {cpu} {mode}"[-60:])
        if path not in x86_cache:
            ckpt = find_reference(path, checkpoint)
            if ckpt not in refs:
                import torch

                model, ckpt_recipe, _ = load_model(ckpt, recipe)
                imgs = val_images(ckpt_recipe, images)
                with torch.no_grad():
                    refs[ckpt] = (imgs, model.eval()(imgs).numpy())
            imgs, float_logits = refs[ckpt]
            runner = runtime.load(path, threads=1)
            inputs = [runner._to_input(imgs[i : i + 1].numpy()) for i in range(imgs.shape[0])]  # noqa: SLF001
            x86_raw = [runner._run(x) for x in inputs]  # noqa: SLF001
            x86_cache[path] = (runner, inputs, x86_raw, float_logits)
        runner, inputs, x86_raw, float_logits = x86_cache[path]
        run = arm64.run_artifact(env, path, inputs, cpu=cpu, mode=mode)
        rows.append(check_row(path, backend_for(path).name, read_manifest(path)["precision"], mode, run, x86_raw,
                              runner._from_output, runner.evaluated_by, float_logits))  # noqa: SLF001
    return rows


# ----------------------------------------------------------------------------- rendering

def table(rows: list[Arm64Row]) -> str:
    head = ("| artifact | mode | evaluated_by | runtime | agreement vs x86 | SQNR vs x86 dB | max diff (steps) | "
            "agreement vs float (x86) | SQNR vs float dB (x86) | kernels | pass |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        steps = f" ({r.max_steps_vs_x86})" if r.max_steps_vs_x86 is not None else ""
        sq = "inf (identical)" if r.identical_to_x86 else f"{r.sqnr_vs_x86_db:.1f}"
        lines.append(f"| {Path(r.artifact).name} | {r.mode} | {r.evaluated_by} | {r.runtime} | {r.agreement_vs_x86:.4f} | {sq} | "
                     f"{r.max_abs_diff_vs_x86:.3g}{steps} | {r.agreement_vs_float:.4f} ({r.x86_agreement_vs_float:.4f}) | "
                     f"{r.sqnr_vs_float_db:.1f} ({r.x86_sqnr_vs_float_db:.1f}) | {r.kernels} | {'yes' if r.passed else 'NO'} |")
    return "\n".join(lines)


def summary_lines(rows: list[Arm64Row]) -> list[str]:
    out = []
    for r in rows:
        verdict = "pass" if r.passed else "FAIL: " + "; ".join(r.failures)
        same = "bit-identical to x86" if r.identical_to_x86 else f"agreement {r.agreement_vs_x86:.4f}, {r.sqnr_vs_x86_db:.1f} dB vs x86"
        out.append(f"{Path(r.artifact).name} [{r.mode}] {r.evaluated_by}: {same}; vs float {r.sqnr_vs_float_db:.1f} dB "
                   f"(x86 {r.x86_sqnr_vs_float_db:.1f}); kernels {'confirmed' if r.kernels_ok else 'NOT confirmed'}; {verdict}")
    return out


def write_json(rows: list[Arm64Row], path: str | Path, *, cache: str | Path | None = None) -> None:
    """The rows with what made them: provenance, the aarch64 environment's pinned versions and its build record."""
    from ..fileio import write_text_atomic
    from ..runtime.arm64.env import VERSIONS, find_env
    from .report import provenance

    setup = json.loads((find_env(cache).root / "ready.json").read_text())

    write_text_atomic(path, json.dumps({"provenance": provenance(), "arm64_versions": VERSIONS, "setup": setup,
                                        "thresholds": {"agree_x86": AGREE_X86, "sqnr_x86_db": SQNR_X86_DB,
                                                       "fp16_agree_x86": FP16_AGREE_X86, "fp16_sqnr_x86_db": FP16_SQNR_X86_DB,
                                                       "float_floor_db": FLOAT_FLOOR_DB},
                                        "rows": [r.to_dict() for r in rows]}, indent=1))
