"""Architecture latency rows: tables and verdicts shared by `aspp-edge sweep` and a run's `deploy:` section.

A row (one artifact timed in its own process) has `model`, `backend`, `precision`, `gmacs`,
`params`, `size_bytes`, `latency_ms` {median, p90, min} (None where it was not timed, with
`latency_note`), `load_ms`, `peak_rss_mb`, `gmacs_per_s`, `peak_fraction`, `graph` and
`evaluated_by`. A doc is {"config": {"backends": [...], ...}, "models": {key: {gmacs, params}}, "rows": [...]}.
"""

from __future__ import annotations

import math
from typing import Any

from ..formats import get_backend

INT8_MAX_LATENCY_RATIO = 0.25  # int8 median / fp32 median of the same runtime
OVERHEAD_GMACS = 0.5  # below this, fixed per-operator costs dominate latency: ratios measured there say little about deploy size


def overhead_note(gmacs: float | None) -> str:
    """The note a latency verdict carries when its model is under OVERHEAD_GMACS (empty otherwise)."""
    if gmacs is None or gmacs >= OVERHEAD_GMACS:
        return ""
    return (f" (measured at {gmacs:.3g} GMACs, under {OVERHEAD_GMACS}: fixed per-operator costs dominate, so this ratio says "
            "little about deploy size; `aspp-edge sweep` measures it there)")


def _median(row: dict[str, Any] | None) -> float | None:
    return (row.get("latency_ms") or {}).get("median") if row else None


def _f(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _index(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["model"], r["backend"], r["precision"]): r for r in rows}


def timed_backends(rows: list[dict[str, Any]], backends: list[str] | None = None) -> list[str]:
    """The backends (in `backends`' order, else the rows') with at least one timed row."""
    order = backends or list(dict.fromkeys(r["backend"] for r in rows))
    timed = {r["backend"] for r in rows if r.get("latency_ms")}
    return [b for b in order if b in timed]


# XNNPACK operator names (ETDump events of a .pte) -> the kinds a verdict speaks of, first match wins
OP_KINDS = (("DWConv", "depthwise"), ("GEMM", "GEMM"), ("Resize", "resize"), ("Transpose", "transpose"), ("Convert", "convert"))


def op_kind(name: str) -> str:
    """`Convolution (NHWC, QS8, QC8W) DWConv` -> depthwise; `Fully Connected (NC, QS8, QC8W) GEMM` and
    `Convolution (NHWC, F32) IGEMM` -> GEMM; resize, transpose, convert; anything else -> other."""
    return next((kind for token, kind in OP_KINDS if token in name), "other")


def kind_ms(profile: dict[str, float] | None) -> dict[str, float]:
    """ms per operator kind (op_kind) of one profiled run."""
    out: dict[str, float] = {}
    for name, ms in (profile or {}).items():
        kind = op_kind(name)
        out[kind] = out.get(kind, 0.0) + ms
    return out


def int8_breakdown(fp32: dict[str, Any] | None, int8: dict[str, Any] | None) -> str:
    """What an int8/fp32 latency ratio is made of, from the two rows' per-operator profiles: each
    kind's int8/fp32 time and its share of the int8 time, largest share first ("" without profiles)."""
    a, b = kind_ms((fp32 or {}).get("profile")), kind_ms((int8 or {}).get("profile"))
    total = sum(b.values())
    if not a or not total:
        return ""
    parts = []
    for kind in sorted(b, key=lambda k: -b[k]):
        if b[kind] < 0.02 * total:
            continue
        speed = f"{b[kind] / a[kind]:.2f}x fp32" if a.get(kind) else "no fp32 twin"
        parts.append(f"{kind} {speed} ({100 * b[kind] / total:.0f}% of int8 time)")
    return "; ".join(parts)


def graph_text(row: dict[str, Any]) -> str:
    return get_backend(row["backend"]).graph_line(row.get("graph") or {})


def per_model_table(doc: dict[str, Any]) -> list[str]:
    rows, backends = doc["rows"], doc["config"]["backends"]
    by = _index(rows)
    timed = timed_backends(rows, backends)
    untimed = [b for b in backends if b not in timed]
    both = "executorch" in timed and "tflite" in timed  # the two CPU runtimes, compared by name
    head = ["model", "GMACs", "params (M)"]
    for b in timed:
        fp = get_backend(b).float_precision
        head += [f"{b} {fp} ms", f"{b} int8 ms", f"{b} int8/{fp}"]
    if both:
        head += ["ExecuTorch/LiteRT fp32", "ExecuTorch/LiteRT int8"]
    head += [f"{b} {get_backend(b).float_precision} / int8 MB" for b in untimed]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, info in doc["models"].items():
        cells = [f"`{key}`", f"{info['gmacs']:.3f}", f"{info['params'] / 1e6:.2f}"]
        for b in timed:
            f, q = _median(by.get((key, b, get_backend(b).float_precision))), _median(by.get((key, b, "int8")))
            cells += [_f(f, ".2f"), _f(q, ".2f"), _f(_ratio(q, f), ".2f")]
        if both:
            for p in ("fp32", "int8"):
                cells.append(_f(_ratio(_median(by.get((key, "executorch", p))), _median(by.get((key, "tflite", p)))), ".2f"))
        for b in untimed:
            f, q = by.get((key, b, get_backend(b).float_precision)), by.get((key, b, "int8"))
            cells.append(f"{_f(f and f['size_bytes'] / 1e6, '.2f')} / {_f(q and q['size_bytes'] / 1e6, '.2f')}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | artifact | MB | median ms | p90 ms | min ms | load ms | peak RSS MB | GMAC/s | % of peak | graph | evaluated by |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r.get("latency_ms") or {}
        frac = r.get("peak_fraction")
        lines.append(
            f"| `{r['model']}` | {r['backend']} {r['precision']} | {r['size_bytes'] / 1e6:.2f} | {_f(lat.get('median'), '.2f')} "
            f"| {_f(lat.get('p90'), '.2f')} | {_f(lat.get('min'), '.2f')} | {_f(r.get('load_ms'), '.0f')} "
            f"| {_f(r.get('peak_rss_mb'), '.0f')} "
            f"| {_f(r.get('gmacs_per_s'), '.1f')} | {_f(frac and 100 * frac, '.0f')} | {graph_text(r)} "
            f"| {r['evaluated_by'] if r.get('latency_ms') else r.get('latency_note') or r['evaluated_by']} |"
        )
    return lines


def separable_pairs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(sep_aspp@B, aspp@B) for every backbone B where both were swept."""
    keys = set(doc["models"])
    return [(f"sep_aspp@{b}", f"aspp@{b}") for b in sorted({r["backbone"] for r in doc["rows"] if r.get("backbone")})
            if f"sep_aspp@{b}" in keys and f"aspp@{b}" in keys]


def separable_table(doc: dict[str, Any]) -> list[str]:
    by = _index(doc["rows"])
    lines = []
    for sep, std in separable_pairs(doc):
        mac = doc["models"][std]["gmacs"] / doc["models"][sep]["gmacs"]
        for b in doc["config"]["backends"]:
            for p in (get_backend(b).float_precision, "int8"):
                speed = _ratio(_median(by.get((std, b, p))), _median(by.get((sep, b, p))))
                if speed is not None:
                    lines.append(f"| {sep.split('@')[1]} | {b} {p} | {mac:.2f}x | {speed:.2f}x |")
    head = ["| backbone | artifact | MAC ratio aspp/sep_aspp | measured speedup (aspp ms / sep_aspp ms) |", "|---|---|---|---|"]
    return head + lines if lines else []


def verdicts(doc: dict[str, Any]) -> list[str]:
    """Sentences stated against the measured figures: int8/fp32 per runtime, ExecuTorch vs LiteRT,
    separable vs standard. Rows of models under OVERHEAD_GMACS carry the overhead note."""
    by, out = _index(doc["rows"]), []
    timed = timed_backends(doc["rows"], doc.get("config", {}).get("backends"))
    for key, info in doc["models"].items():
        note = overhead_note(info["gmacs"])
        for b in timed:
            fp = get_backend(b).float_precision
            ratio = _ratio(_median(by.get((key, b, "int8"))), _median(by.get((key, b, fp))))
            if ratio is not None:
                made_of = int8_breakdown(by.get((key, b, fp)), by.get((key, b, "int8")))
                out.append(f"- `{key}`: {b} int8 runs in {ratio:.2f}x the {fp} latency "
                           f"({'within' if ratio <= INT8_MAX_LATENCY_RATIO else 'above'} the {INT8_MAX_LATENCY_RATIO}x target){note}"
                           + (f"; per operator kind (ETDump, int8/{fp} time): {made_of}" if made_of else
                              f"; {get_backend(b).no_profile_why}" if get_backend(b).no_profile_why else "")
                           + ".")
        for p in ("fp32", "int8"):
            a, b_ = _median(by.get((key, "executorch", p))), _median(by.get((key, "tflite", p)))
            if a is not None and b_:
                faster = "ExecuTorch" if a < b_ else "LiteRT"
                out.append(f"- `{key}`: {p} ExecuTorch {a:.2f} ms vs LiteRT {b_:.2f} ms median "
                           f"({faster} {max(a, b_) / min(a, b_):.2f}x faster){note}.")
    for sep, std in separable_pairs(doc):
        mac = doc["models"][std]["gmacs"] / doc["models"][sep]["gmacs"]
        for b in timed:
            for p in (get_backend(b).float_precision, "int8"):
                speed = _ratio(_median(by.get((std, b, p))), _median(by.get((sep, b, p))))
                if speed is not None:
                    out.append(f"- separable vs standard ASPP on {sep.split('@')[1]}, {b} {p}: sep_aspp runs {speed:.2f}x faster "
                               f"measured, against {mac:.2f}x fewer MACs{overhead_note(doc['models'][sep]['gmacs'])}.")
    untimed = sorted({r["latency_note"] for r in doc["rows"] if not r.get("latency_ms") and r.get("latency_note")})
    return out + [f"- {n} (no figures invented)." for n in untimed]
