"""Half-precision check of a float model: run it in fp16 and in fp32 and compare every layer.

GPU delegates (LiteRT's GPU delegate with fp16 weights, ExecuTorch's Vulkan in fp16, Core ML on the
GPU / Neural Engine) hold activations in fp16, whose largest finite value is 65504 and whose
precision is 11 bits. This finds the layers that overflow (a value beyond the fp16 range in the
fp32 run, or a non-finite value in the fp16 run) and the ones that lose accuracy (SQNR of the fp16
activation against the fp32 one below `min_sqnr_db`, including values that underflow fp16's
normal range). Squeeze-excitation blocks are the known case
for GPU delegates: a global mean over a large map, then a gate that multiplies every activation.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.103515625e-05  # below it fp16 values are subnormal: fewer bits, then zero
MIN_SQNR_DB = 30.0  # about 5 bits of an fp16 value's 11: below this a layer has lost accuracy in fp16


def _sqnr(ref: torch.Tensor, test: torch.Tensor) -> float:
    noise = (ref.double() - test.double()).pow(2).sum().item()
    signal = ref.double().pow(2).sum().item()
    if noise == 0:
        return math.inf
    ratio = signal / noise
    return 10 * math.log10(ratio) if ratio > 0 and math.isfinite(ratio) else -math.inf


def _db(value: float) -> float | None:
    """JSON-safe dB: None where not finite (exact match, or nothing left of the signal)."""
    return round(value, 2) if math.isfinite(value) else None


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules and squeeze-excitation blocks (checked as a whole, the known fp16 case)."""
    return {name: m for name, m in model.named_modules()
            if name and (not any(True for _ in m.children()) or "squeeze" in type(m).__name__.lower())}


def _capture(model: nn.Module, names: dict[str, nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    acts: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    # clone: in-place activations follow
    hooks = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.detach().float().clone()))
             for n in names]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return y.float(), {k: v for k, v in acts.items() if isinstance(v, torch.Tensor)}


def half_precision_check(model: nn.Module, images: torch.Tensor, *, min_sqnr_db: float = MIN_SQNR_DB,
                         worst: int = 5) -> dict[str, Any]:
    """The model in fp16 against fp32 on `images` (normalized NCHW): logits SQNR and argmax
    agreement, the layers that overflow or fall below `min_sqnr_db`, and the `worst` layers by SQNR."""
    names = _layers(model)
    m32 = copy.deepcopy(model).float().eval()
    m16 = copy.deepcopy(model).half().eval()
    y32, a32 = _capture(m32, names, images.float())
    y16, a16 = _capture(m16, names, images.half())
    rows = []
    for name in names:
        if name not in a32 or name not in a16 or a32[name].shape != a16[name].shape:
            continue
        ref, test = a32[name], a16[name]
        max_abs = ref.abs().max().item()
        why = []
        if max_abs > FP16_MAX or not torch.isfinite(test).all():
            why.append(f"overflows fp16 (max |x| {max_abs:.4g} in fp32, fp16 range {FP16_MAX:g})")
        sqnr = _sqnr(ref, torch.nan_to_num(test, nan=0.0, posinf=FP16_MAX, neginf=-FP16_MAX))
        if sqnr < min_sqnr_db:
            small = f"; its values lie under fp16's normal range ({FP16_MIN_NORMAL:.3g})" if max_abs < FP16_MIN_NORMAL else ""
            why.append(f"loses accuracy in fp16 (SQNR {sqnr:.1f} dB < {min_sqnr_db:g}{small})")
        rows.append({"layer": name, "type": type(names[name]).__name__, "max_abs": max_abs,
                     "sqnr_db": _db(sqnr), "sqnr": sqnr, "why": "; ".join(why)})
    ranked = sorted(rows, key=lambda r: r["sqnr"])
    return {
        "images": int(images.shape[0]),
        "min_sqnr_db": min_sqnr_db,
        "logits_sqnr_db": _db(_sqnr(y32, torch.nan_to_num(y16))),
        "argmax_agreement": (y32.argmax(1) == y16.argmax(1)).float().mean().item(),
        "layers_checked": len(rows),
        "max_abs_activation": max((r["max_abs"] for r in rows), default=0.0),
        "flagged": [{k: r[k] for k in ("layer", "type", "max_abs", "sqnr_db", "why")} for r in rows if r["why"]],
        "worst": [{k: r[k] for k in ("layer", "type", "sqnr_db")} for r in ranked[:worst]],
    }
