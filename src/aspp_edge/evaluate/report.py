"""The run's report: report.json, report.md (table + verdict), pareto.png and samples.png.

Rows are `ArtifactResult.to_row()` (evaluate/results.py), one per artifact (`ROW_FIELDS`); an
artifact its runtime cannot run on this machine has `evaluated_by = "not run: <reason>"` and None
for every measured figure.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from ..config import METHODS
from ..fileio import atomic_path
from .latency_table import INT8_MAX_LATENCY_RATIO, OVERHEAD_GMACS, overhead_note, per_model_table, rows_table  # noqa: F401
from .latency_table import verdicts as deploy_verdicts
from .plotting import PRECISION_COLORS, log_axes, marker, place_labels
from .results import MIL_REFERENCE as INTERPRETED
from .results import evaluated_by

ROW_FIELDS = (
    "path", "backend", "precision", "method", "head", "miou", "miou_drop", "agreement", "minority_agreement", "sqnr_db", "latency_ms",
    "load_ms", "size_bytes", "peak_rss_mb", "gmacs", "gmacs_per_s", "evaluated_by",
)
# Targets the verdict states against the measured figures: what a deployed int8 model must keep of
# its float reference (drop, argmax agreement), and what int8 must buy in speed to be worth it.
QAT_MAX_DROP = 0.3  # points
QAT_MIN_AGREEMENT = 0.99
COREML_FP16_MIN_AGREEMENT = 0.995  # Core ML fp16 vs the float model: fp16 rounding alone, no quantization
CROSS_MIN_AGREEMENT = 0.99  # an int8 artifact vs the other backends' int8 artifacts of the same program (same qparams)


def machine() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(), "machine": platform.machine(), "processor": _cpu_name(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "cuda": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }


def machine_line(m: dict[str, Any] | None = None) -> str:
    """The machine (`machine()` unless given) in one line, for the headers of recorded results."""
    m = m or machine()
    return f"{m['processor']}, {m['cpu_count']} cores, {m['platform']}" + (f", GPU {m['gpu']}" if m["gpu"] else ", no GPU")


def git_describe() -> str | None:
    """`git describe --always --dirty` of the checkout this package runs from (None outside one): a
    result made from uncommitted code says `-dirty`."""
    import subprocess

    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """What made a recorded result, stored inside it: the command line, the code's `git describe`,
    the UTC date, the machine and the pinned tools' versions."""
    import shlex
    import sys

    from ..formats.manifest import tool_versions

    argv = sys.argv if sys.argv and sys.argv[0] else ["python"]
    prog = ["python", argv[0]] if argv[0].endswith(".py") else [Path(argv[0]).name]  # a script, or a console entry point
    return {"command": " ".join(shlex.quote(a) for a in [*prog, *argv[1:]]), "git": git_describe(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(), "versions": tool_versions()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ran(row: dict[str, Any]) -> bool:
    return evaluated_by(row).ran


def label(row: dict[str, Any], with_head: bool = False) -> str:
    method = "" if row["method"] == "none" else f" {row['method']}"
    return f"{row['head'] + ' ' if with_head else ''}{row['backend']} {row['precision']}{method}"


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


UNINFORMATIVE = "(uninformative)"  # beside an agreement or drop measured against a one-class reference


def reference_line(head: str, ref: dict[str, Any]) -> str:
    """Is the reference any good: its mIoU, the classes it predicts and its majority class's share."""
    line = f"{head}: mIoU {ref['miou']:.4f} on {ref['device']}"
    if "predicted_classes" in ref:
        line += (f", predicts {ref['predicted_classes']} of {ref['classes']} classes, the most frequent ({ref['majority_class']}) "
                 f"on {100 * ref['majority_share']:.1f}% of val pixels")
    return line


def uninformative_notes(references: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per model whose reference makes agreement and drop say nothing."""
    return [f"{head}: {ref['note']}." for head, ref in references.items() if ref.get("note")]


def _marked(row: dict[str, Any], key: str, spec: str) -> str:
    text = _fmt(row.get(key), spec)
    return f"{text} {UNINFORMATIVE}" if row.get("accuracy_note") and text != "-" else text


def table(rows: list[dict[str, Any]], *, with_head: bool) -> list[str]:
    """The accuracy and latency table; agreement and drop measured against a one-class reference
    say so in their cells. 'non-majority agreement': agreement over the pixels where the reference
    predicts a class other than its most frequent one."""
    lines = [
        "| artifact | mIoU | drop (pts) | agreement | non-majority agreement | SQNR dB | median ms | p90 ms | load ms | MB "
        "| peak RSS MB | GMAC/s | evaluated by |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r.get("latency_ms") or {}
        lines.append(
            f"| {label(r, with_head)} | {_fmt(r['miou'], '.4f')} | {_marked(r, 'miou_drop', '.2f')} | {_marked(r, 'agreement', '.4f')} "
            f"| {_fmt(r.get('minority_agreement'), '.4f')} | {_fmt(r['sqnr_db'], '.1f')} | {_fmt(lat.get('median'), '.3f')} "
            f"| {_fmt(lat.get('p90'), '.3f')} "
            f"| {_fmt(r['load_ms'], '.0f')} | {r['size_bytes'] / 1e6:.2f} | {_fmt(r['peak_rss_mb'], '.0f')} "
            f"| {_fmt(r['gmacs_per_s'], '.1f')} | {r['evaluated_by']} |"
        )
    return lines


def cross_backend_table(rows: list[dict[str, Any]], *, with_head: bool) -> list[str]:
    """One line per pair of int8 artifacts made from the same program (rows' `agreement_with`)."""
    lines, seen = [], set()
    for r in rows:
        for other, value in sorted((r.get("agreement_with") or {}).items()):
            key = (r["head"], r["method"], frozenset((r["backend"], other)))
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"| {r['head'] + ' ' if with_head else ''}{r['method']} | {r['backend']} vs {other} | {value:.4f} |")
    return ["| program | artifacts | agreement |", "|---|---|---|"] + lines if lines else []


def _chance(diff: dict[str, Any] | None) -> str:
    """QAT's mIoU minus PTQ's with the interval resampling the val images gives it (`qat_vs_ptq`), and
    whether that interval holds 0: a gap the split's size cannot tell from chance."""
    if not diff:
        return ""
    lo, hi = diff["interval_points"]
    return (f"; QAT - PTQ mIoU {diff['difference_points']:+.2f} points, {diff['level']:.0%} interval {lo:+.2f} to {hi:+.2f} "
            f"over the {diff['images']} val images resampled{': within chance' if lo <= 0 <= hi else ''}")


def _qat_against_ptq(head: str, mine: list[dict[str, Any]], note: str | None) -> list[str]:
    """Per backend with both int8 programs: whether QAT ended worse than PTQ, on mIoU drop (on SQNR
    where the reference is uninformative). The worse one is named, never left to be inferred."""
    worse, held = [], []
    for backend in dict.fromkeys(r["backend"] for r in mine):
        pair = {r["method"]: r for r in mine if r["backend"] == backend and r["precision"] == "int8" and r["method"] in ("ptq", "qat")}
        if len(pair) < 2:
            continue
        ptq, qat = pair["ptq"], pair["qat"]
        if note:
            figures = f"SQNR {qat['sqnr_db']:.1f} vs {ptq['sqnr_db']:.1f} dB"
            bad = qat["sqnr_db"] < ptq["sqnr_db"]
        else:
            same = qat.get("qat_program") == "ptq"  # QAT returned its step 0, PTQ's program: the same masks, no interval to give
            figures = (f"drop {qat['miou_drop']:.2f} vs {ptq['miou_drop']:.2f} points"
                       + ("; QAT kept its start, PTQ's program: no check was clearly closer to the float model" if same
                          else _chance(qat.get("qat_vs_ptq"))))
            bad = qat["miou_drop"] > ptq["miou_drop"]
        (worse if bad else held).append(f"{backend} ({figures})")
    if worse:
        return [f"- {head}: QAT ends worse than PTQ on {', '.join(worse)}: ship the PTQ artifact there "
                f"(`--for-apps` installs the higher-mIoU int8 artifact per backend)."]
    return [f"- {head}: QAT is no worse than PTQ on any backend: {', '.join(held)}."] if held else []


def verdict(rows: list[dict[str, Any]], deploy: dict[str, Any] | None = None) -> list[str]:
    """One sentence per target, stated against the figures (never a bare pass/fail). Where `deploy`
    (the run's architecture latency at deploy size) times a head, its int8/fp32 and ExecuTorch vs
    LiteRT sentences come from those rows, not from the accuracy rows' small-size latencies."""
    out = []
    at_deploy = {r["model"] for r in (deploy or {}).get("rows", []) if r.get("latency_ms")}
    for head in dict.fromkeys(r["head"] for r in rows):
        mine = [r for r in rows if r["head"] == head and ran(r)]
        qat = [r for r in mine if r["method"] == "qat"]
        note = next((r["accuracy_note"] for r in mine if r.get("accuracy_note")), None)
        if qat and note:  # never "meets" on agreement or drop against a one-class reference
            worst_sqnr = min(qat, key=lambda r: r["sqnr_db"])
            out.append(f"- {head}: QAT int8 is not judged on drop or agreement: {note} (lowest int8 QAT SQNR "
                       f"{worst_sqnr['sqnr_db']:.1f} dB, {worst_sqnr['backend']}).")
        elif qat:
            worst_drop = max(qat, key=lambda r: r["miou_drop"])
            worst_agree = min(qat, key=lambda r: r["agreement"])
            ok = worst_drop["miou_drop"] <= QAT_MAX_DROP and worst_agree["agreement"] >= QAT_MIN_AGREEMENT
            out.append(
                f"- {head}: QAT int8 {'meets' if ok else 'misses'} the targets (drop <= {QAT_MAX_DROP} points, agreement >= "
                f"{QAT_MIN_AGREEMENT}) on every backend that ran: worst drop {worst_drop['miou_drop']:.2f} points "
                f"({worst_drop['backend']}), lowest agreement {worst_agree['agreement']:.4f} ({worst_agree['backend']})."
            )
        out += _qat_against_ptq(head, mine, note)
        out += _mixed_trade(head, mine)
        for backend in dict.fromkeys(r["backend"] for r in mine if head not in at_deploy):
            fp = [r for r in mine if r["backend"] == backend and r["precision"] in ("fp32", "fp16")]
            q = [r for r in mine if r["backend"] == backend and r["precision"] == "int8" and r["method"] != "mixed"]
            if fp and q and fp[0]["latency_ms"] and q[0]["latency_ms"]:
                ratio = min(r["latency_ms"]["median"] for r in q) / fp[0]["latency_ms"]["median"]
                out.append(
                    f"- {head}: {backend} int8 runs in {ratio:.2f}x the {fp[0]['precision']} latency "
                    f"({'within' if ratio <= INT8_MAX_LATENCY_RATIO else 'above'} the {INT8_MAX_LATENCY_RATIO}x target)"
                    f"{overhead_note(fp[0].get('gmacs'))}."
                )
        for r in (r for r in mine if r["backend"] == "coreml"):
            if note and (r["precision"] == "fp16" or r.get("agreement_with")):
                out.append(f"- {head}: Core ML {r['precision']} {'' if r['method'] == 'none' else r['method'] + ' '}({r['evaluated_by']}) "
                           f"is not judged on agreement: {note} (SQNR {r['sqnr_db']:.1f} dB).")
            elif r["precision"] == "fp16":
                out.append(f"- {head}: Core ML fp16 ({r['evaluated_by']}) agrees with the float model on {r['agreement']:.4f} of pixels "
                           f"({'meets' if r['agreement'] >= COREML_FP16_MIN_AGREEMENT else 'misses'} "
                           f"the {COREML_FP16_MIN_AGREEMENT} target).")
            elif r.get("agreement_with"):
                worst = min(r["agreement_with"].values())
                pairs = ", ".join(f"{b} {v:.4f}" for b, v in sorted(r["agreement_with"].items()))
                out.append(f"- {head}: Core ML int8 {r['method']} ({r['evaluated_by']}) "
                           f"vs the other int8 artifacts of its program: {pairs} "
                           f"({'meets' if worst >= CROSS_MIN_AGREEMENT else 'misses'} the {CROSS_MIN_AGREEMENT} target).")
        for method in METHODS:
            et = [r for r in mine if (r["backend"], r["precision"], r["method"]) == ("executorch", "int8", method)]
            tfl = [r for r in mine if (r["backend"], r["precision"], r["method"]) == ("tflite", "int8", method)]
            if et and tfl and et[0]["latency_ms"] and tfl[0]["latency_ms"] and head not in at_deploy:
                a, b = et[0]["latency_ms"]["median"], tfl[0]["latency_ms"]["median"]
                out.append(f"- {head}: {method} int8 ExecuTorch {a:.3f} ms vs LiteRT {b:.3f} ms median "
                           f"({'ExecuTorch not slower' if a <= b else f'ExecuTorch {a / b:.2f}x slower'})"
                           f"{overhead_note(et[0].get('gmacs'))}.")
    if at_deploy:
        size = deploy["config"]["size"]
        out += [line.replace("- `", f"- at {size}x{size} (architecture latency) `", 1) for line in deploy_verdicts(deploy)]
    not_run = sorted({r["evaluated_by"] for r in rows if not ran(r)})
    out += [f"- {reason} (no figures invented)." for reason in not_run if f"- {reason} (no figures invented)." not in out]
    return out


def _mixed_trade(head: str, mine: list[dict[str, Any]]) -> list[str]:
    """The run's `mixed` rows against full-int8 PTQ: the layers kept in float, and per backend what
    they buy in drop and cost in latency and size."""
    mixed = [r for r in mine if r["method"] == "mixed"]
    if not mixed:
        return []
    layers = mixed[0].get("float_layers") or []
    out = [f"- {head}: mixed precision keeps {len(layers)} layer(s) in float ({', '.join(layers) or 'none'})."]
    note = mixed[0].get("accuracy_note")
    for r in mixed:
        full = next((p for p in mine if (p["backend"], p["precision"], p["method"]) == (r["backend"], "int8", "ptq")), None)
        if full is None:
            continue
        cost = ""
        if r.get("latency_ms") and full.get("latency_ms"):
            delta = r["latency_ms"]["median"] - full["latency_ms"]["median"]
            cost = (f", median latency {delta:+.3f} ms ({r['latency_ms']['median']:.3f} vs {full['latency_ms']['median']:.3f})"
                    f"{overhead_note(r.get('gmacs'))}")
        figures = (f"SQNR {r['sqnr_db']:.1f} vs {full['sqnr_db']:.1f} dB (drop and agreement say nothing: {note})" if note else
                   f"drop {r['miou_drop']:.2f} vs {full['miou_drop']:.2f} points, "
                   f"agreement {r['agreement']:.4f} vs {full['agreement']:.4f}")
        out.append(f"- {head}: {r['backend']} mixed vs full-int8 PTQ: {figures}, size {r['size_bytes'] / 1e6:.2f} vs "
                   f"{full['size_bytes'] / 1e6:.2f} MB{cost}.")
    return out


def write_report(out_dir: str | Path, rows: list[dict[str, Any]], *, recipe: dict[str, Any], references: dict[str, dict[str, Any]],
                 tools: dict[str, str], peaks: dict[str, Any] | None, samples: dict[str, Any] | None, seconds: float | None = None,
                 deploy: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write report.json, report.md, pareto.png and samples.png into `out_dir`; returns their paths.
    `deploy`: the recipe's deploy section (sweep.deploy_plan's doc), reported apart from the accuracy rows."""
    out = Path(out_dir)
    main_head = recipe["model"]["head"]
    made = provenance()
    report = {
        "recipe": recipe, "reference": references.get(main_head) or next(iter(references.values())),
        "references": references, "machine": made["machine"], "tools": tools, "runtime_peaks": peaks or {},
        "artifacts": rows, "deploy": deploy, "seconds": seconds, "created": made["date"],
        "command": made["command"], "git": made["git"],
    }
    paths = {name: out / name for name in ("report.json", "report.md", "pareto.png", "samples.png")}
    with atomic_path(paths["report.json"]) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=_json_default))
    with atomic_path(paths["report.md"]) as tmp:
        tmp.write_text(markdown(report))
    with atomic_path(paths["pareto.png"]) as tmp:
        pareto_png(rows, references, tmp)
    if samples is not None:
        with atomic_path(paths["samples.png"]) as tmp:
            samples_png(samples, tmp)
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def data_line(recipe: dict[str, Any]) -> str:
    """`Data: voc (21 classes: background, aeroplane, ... tvmonitor), 512x512 (resize square).`"""
    from ..config import Recipe

    r = Recipe.from_dict(recipe)
    d, names = r.data, r.class_names
    shown = ", ".join(names) if len(names) <= 24 else ", ".join(names[:20]) + f", ... {names[-1]}"
    where = f" at `{d.root}`" if d.root else ""
    return (f"Data: `{d.dataset}`{where}, {len(names)} classes ({shown}); {d.resolution}x{d.resolution} "
            f"(resize {d.resize}), normalised with mean {list(d.mean)} and std {list(d.std)}.")


def markdown(report: dict[str, Any]) -> str:
    rows, refs, m = report["artifacts"], report["references"], report["machine"]
    heads = list(dict.fromkeys(r["head"] for r in rows)) or list(refs)
    lines = [
        f"# aspp-edge report: recipe `{report['recipe']['name']}`", "",
        f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['platform']}; GPU: {m['gpu'] or 'none'}.",
        f"Made by `{report.get('command') or 'unknown command'}` at code {report.get('git') or 'unknown'} on {report['created']}; "
        + ", ".join(f"{k} {v}" for k, v in report.get("tools", {}).items()) + ".",
        "Float reference " + "; ".join(reference_line(h, refs[h]) for h in heads if h in refs) + ".",
        "Latency: median/p90 of timed runs after warm-up, each artifact in its own process, all cores unless stated; "
        "reported, not asserted. Agreement and SQNR are against the float reference's logits on the val split.",
    ]
    notes = uninformative_notes({h: refs[h] for h in heads if h in refs})
    if notes:
        lines += [f"**Agreement and mIoU drop are uninformative {UNINFORMATIVE}** for " + " ".join(notes)]
    described = [(h, refs[h]["model"]) for h in heads if h in refs and refs[h].get("model")]
    lines.append(data_line(report["recipe"]))
    started = [(h, m["pretrained"]) for h, m in described if m.get("pretrained")]
    if started:
        from ..formats.manifest import describe_pretrained

        lines.append("Started from: " + "; ".join(f"`{h}`: {describe_pretrained(p)}" for h, p in started) + ".")
    if any("source" in m for _, m in described):  # brought models beside ours: say what each one is
        from ..formats.manifest import describe_model_section

        lines.append("Models (same data, same int8 scheme, same measurement): "
                     + "; ".join(f"`{h}`: {describe_model_section(m)}" for h, m in described) + ".")
    if any(evaluated_by(r).interpreted for r in rows):
        lines.append(f"Rows evaluated by `{INTERPRETED}` ran the Core ML package's ML Program in aspp-edge's numpy MIL interpreter "
                     "(Core ML predicts only on macOS): their figures check the program as shipped (ops, padding and dilation, "
                     "resize modes, quantization parameters, the image input's preprocessing), not Apple's kernels or the Neural "
                     "Engine, and no latency is reported for them.")
    lines.append("")
    for head in heads:
        if len(heads) > 1:
            lines += [f"## {head}", ""]
        lines += table([r for r in rows if r["head"] == head], with_head=False) + [""]
    if len(heads) > 1:
        lines += ["## Ablation (every head x method x backend)", ""] + table(rows, with_head=True) + [""]
    cross = cross_backend_table(rows, with_head=len(heads) > 1)
    if cross:
        lines += ["## int8 artifacts of one program, backend against backend (argmax agreement on the val split)", ""] + cross + [""]
    lines += numerics_section(rows, with_head=len(heads) > 1)
    lines += islands_section(rows, with_head=len(heads) > 1)
    lines += arm64_section(rows, with_head=len(heads) > 1)
    if report["runtime_peaks"]:
        lines += ["## Runtime throughput reference (four 256->256 1x1 convolutions at 64x64)", "",
                  "| runtime | GMAC/s | median ms | threads |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['gmacs_per_s']:.1f} | {v['median_ms']:.3f} | {v['threads']} |" for k, v in report["runtime_peaks"].items()]
        lines.append("")
    profiled = [r for r in rows if r.get("profile")]
    if profiled:
        lines += ["## Where ExecuTorch's time goes (XNNPACK operators, ETDump, median of 3 runs)", ""]
        for r in profiled:
            total = sum(r["profile"].values()) or 1.0
            top = ", ".join(f"{k} {v:.3f} ms ({100 * v / total:.0f}%)" for k, v in list(r["profile"].items())[:4])
            lines.append(f"- {label(r, len(heads) > 1)}: {top}")
        lines.append("")
    deploy = report.get("deploy")
    if deploy:
        c = deploy["config"]
        lines += [f"## Architecture latency at deploy size ({c['size']}x{c['size']}, width {c['width']}, calibrated-only weights)", "",
                  f"The same architectures as the rows above, not the trained models: {deploy['note']}; {c['runs']} timed runs after "
                  f"{c['warmup']} warm-up. Accuracy is measured above, at the recipe's size.", ""]
        lines += per_model_table(deploy) + [""] + rows_table(deploy["rows"]) + [""]
    lines += ["## Verdict", ""] + verdict(rows, deploy) + [""]
    return "\n".join(lines)


def islands_section(rows: list[dict[str, Any]], *, with_head: bool) -> list[str]:
    """What each int8 artifact's runtime keeps in float, by layer and why (`quantize/islands.py`)."""
    listed = [r for r in rows if "float_islands" in r]
    if not listed:
        return []
    lines = ["## Float islands in the int8 artifacts (by layer; `quantize/islands.py`)", ""]
    for r in listed:
        islands = r["float_islands"]
        if not islands:
            lines.append(f"- {label(r, with_head)}: none, integer end to end")
            continue
        by_op: dict[tuple[str, str], list[str]] = {}
        for i in islands:
            by_op.setdefault((i["op"], i["why"]), []).append(i["layer"])
        for (op, why), layers in by_op.items():
            shown = ", ".join(f"`{layer}`" for layer in layers[:6]) + (f" (+{len(layers) - 6} more)" if len(layers) > 6 else "")
            lines.append(f"- {label(r, with_head)}: {op} at {shown}: {why}")
    return lines + [""]


def numerics_section(rows: list[dict[str, Any]], *, with_head: bool) -> list[str]:
    """Where each int8 artifact drifts from its program, layer by layer (the run's numerics stages)."""
    found = [r for r in rows if r.get("numerics")]
    if not found:
        return []
    lines = ["## Where each int8 artifact leaves its program (per-layer numerics, `aspp-edge compare`)", "",
             "Each layer's output in the artifact's own runtime against the int8 PyTorch program, on val images "
             "(`evaluate/numerics.py` says how tensors are matched and when an artifact *leaves* its program: a fall of more "
             "than 10 dB at one layer, to within 10 dB of the program's own quantization error).", "",
             "| artifact | worst layer (dB vs program) | leaves its program at | output dB vs program | layers matched | matched by |",
             "|---|---|---|---|---|---|"]
    for r in found:
        n = r["numerics"]
        worst = f"{n['worst_layer']} ({n['worst_sqnr_db']:.1f})" if n["worst_layer"] else "-"
        matched = f"{n['layers']}" + (f" ({n['unmatched']} not found)" if n["unmatched"] else "")
        out_db = n["output_sqnr_vs_program_db"]
        out_db = out_db if isinstance(out_db, str) else f"{out_db:.1f}"
        lines.append(f"| {label(r, with_head)} | {worst} | {n['leaves_at'] or 'nowhere'} | {out_db} | {matched} | {n['matched_by']} |")
    return lines + [""]


def arm64_section(rows: list[dict[str, Any]], *, with_head: bool) -> list[str]:
    """Each .pte / .tflite on its aarch64 runtime under qemu against its x86 run (the run's arm64 stages)."""
    found = [r for r in rows if r.get("arm64")]
    if not found:
        return []
    lines = ["## On the phone's instruction set (aarch64 runtimes under qemu, `aspp-edge check-arm64`)", "",
             "Each artifact in the aarch64 build of its runtime, under qemu-user with a phone-class CPU model, against the same "
             "artifact's x86 run and the float model on val images; the kernels column is the code qemu executed in the runtime's "
             "libraries (`evaluate/arm64.py`). No latency: emulated time is not phone time.", "",
             "| artifact | evaluated_by | mode | agreement vs x86 | SQNR vs x86 dB | SQNR vs float dB | kernels | pass |",
             "|---|---|---|---|---|---|---|---|"]
    for r in found:
        for c in r["arm64"]:
            db = lambda v: v if isinstance(v, str) else f"{v:.1f}"  # noqa: E731 - "inf" is stored as a string
            sq = "identical" if c["identical_to_x86"] else db(c["sqnr_vs_x86_db"])
            verdict = "yes" if c["passed"] else "NO: " + "; ".join(c["failures"])
            lines.append(f"| {label(r, with_head)} | {c['evaluated_by']} | {c['mode']} | {c['agreement_vs_x86']:.4f} | {sq} | "
                         f"{db(c['sqnr_vs_float_db'])} | {c['kernels']} | {verdict} |")
    return lines + [""]


def pareto_png(rows: list[dict[str, Any]], references: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if ran(r) and r.get("latency_ms")]
    with_head = len({r["head"] for r in rows}) > 1
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for r in timed:
        ax.scatter(r["latency_ms"]["median"], r["miou"], marker=marker(r["backend"]), color=PRECISION_COLORS.get(r["precision"], "k"),
                   s=50, zorder=3)
    for head, ref in references.items():
        ax.axhline(ref["miou"], color="grey", lw=0.8, ls="--")
        ax.annotate(f"float {head} ({ref['device']})", (0.01, ref["miou"]), xycoords=("axes fraction", "data"), fontsize=7, color="grey")
    skipped = sorted({label(r, with_head) for r in rows if not ran(r)})
    untimed = sorted({label(r, with_head) for r in rows if ran(r) and not r.get("latency_ms")})
    title = "mIoU vs median latency (lower-right is worse)"
    if skipped:
        title += f"\nnot run here: {', '.join(skipped)}"
    if untimed:
        title += f"\nno latency (MIL reference interpreter): {', '.join(untimed)}"
    ax.set(xlabel="median latency (ms)", ylabel="val mIoU", title=title)
    if timed:
        log_axes(ax, y=False)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    place_labels(ax, [(r["latency_ms"]["median"], r["miou"], label(r, with_head)) for r in timed])  # after the layout: final positions
    fig.savefig(path, format="png")
    plt.close(fig)


def colorize(mask: np.ndarray, colors: list[list[int]]) -> np.ndarray:
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = np.asarray(colors, np.uint8)
    return palette[np.asarray(mask, np.int64) % 256]


def samples_png(samples: dict[str, Any], path: Path) -> None:
    """`samples`: images (K,H,W,3 uint8), ground truth (K,H,W), colors, and rows [(title, masks K,H,W)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, truth, colors = samples["images"], samples["ground_truth"], samples["colors"]
    rows = [("input", None), ("ground truth", truth)] + list(samples["rows"])
    k = len(images)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.8 * k + 1.6, 1.8 * len(rows)), dpi=100, squeeze=False)
    for i, (title, masks) in enumerate(rows):
        for j in range(k):
            ax = axes[i][j]
            ax.imshow(images[j] if masks is None else colorize(masks[j], colors), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
