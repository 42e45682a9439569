"""Mixed precision vs full int8 vs float, per backend: the trade a `keep_float` list buys.

From one trained float checkpoint: the isolated layer sensitivity of the recipe's PTQ program
(`aspp-edge quantize --sensitivity`), a full int8 program and a mixed program (`keep_float: auto`
with `--max-drop`), each exported to all three backends beside the float artifacts, then every
artifact run in its runtime on the val split (Core ML: the MIL reference interpreter off macOS)
against the float model, and timed in a fresh process (ExecuTorch and LiteRT; Core ML latency
needs macOS). Only library functions are used: quantize_checkpoint, export, runtime.load,
evaluate.accuracy.evaluate, evaluate.latency.measure.

With `--deploy-size N` (e.g. 512) the same architecture is also built at NxN with seeded random
weights (latency does not depend on trained values; `aspp-edge sweep`'s convention), calibrated on 8
synthetic images, and its fp32, full int8 and mixed programs (the same float layers) exported for
ExecuTorch and LiteRT and timed in fresh processes: the latency cost of the kept layers where phones
run the model, not only at the recipe's small training size.

Prints the tables and writes OUT.json and OUT.md (command, machine, date, versions in both).

    python benchmarks/mixed_precision.py --recipe quick --checkpoint runs/quick/sep_aspp/float/float.pt \\
        --max-drop 0.1 --work /tmp/mixed --out benchmarks/results/mixed_precision_quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from aspp_edge import runtime
from aspp_edge.checkpoint import load_model
from aspp_edge.config import load_recipe
from aspp_edge.data import build_dataset
from aspp_edge.errors import AsppEdgeError
from aspp_edge.evaluate.accuracy import evaluate, float_reference
from aspp_edge.evaluate.latency import measure
from aspp_edge.export import artifact_size, export, from_checkpoint, from_quantized
from aspp_edge.evaluate.report import machine_line, provenance
from aspp_edge.fileio import write_text_atomic
from aspp_edge.formats.manifest import read_manifest
from aspp_edge.quantize.job import quantize_checkpoint

FLOAT = {"executorch": "fp32", "tflite": "fp32", "coreml": "fp16"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="default")
    p.add_argument("--checkpoint", required=True, help="the recipe's trained float.pt")
    p.add_argument("--max-drop", type=float, default=0.1, help="keep_float auto: val mIoU drop target, points")
    p.add_argument("--max-float-layers", type=int, default=None)
    p.add_argument("--work", required=True, help="folder for the programs and artifacts")
    p.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    p.add_argument("--runs", type=int, default=20, help="timed runs per artifact")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=10, help="sensitivity rows in the .md")
    p.add_argument("--deploy-size", type=int, default=None, help="also time fp32 / int8 / mixed of the architecture at NxN")
    p.add_argument("--keep-float", default=None, help="comma-separated layers for the mixed program instead of auto")
    args = p.parse_args()
    recipe = load_recipe(args.recipe)
    work = Path(args.work)

    t0 = time.perf_counter()
    full = quantize_checkpoint(recipe, args.checkpoint, "ptq", work, name=f"{recipe.name}_ptq", sensitivity=True, sensitivity_top=5)
    full_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.keep_float:  # an explicit list: the cost of keeping these layers, whatever the drop target
        mixed = quantize_checkpoint(recipe, args.checkpoint, "ptq", work, name=f"{recipe.name}_ptq_mixed",
                                    keep_float=tuple(n.strip() for n in args.keep_float.split(",") if n.strip()))
    else:
        mixed = quantize_checkpoint(recipe, args.checkpoint, "ptq", work, name=f"{recipe.name}_ptq_mixed", keep_float="auto",
                                    max_drop=args.max_drop, max_float_layers=args.max_float_layers)
    mixed_s = time.perf_counter() - t0
    print(full.sensitivity.table(args.top))
    print(f"keep_float {args.keep_float or f'auto (max_drop {args.max_drop})'}: {mixed.float_layers} -> program drop "
          f"{mixed.miou_drop_points:.3f} points")

    model, recipe, _ = load_model(args.checkpoint, recipe)
    val = build_dataset(recipe, "val")
    reference = float_reference(model, val, device="cpu")
    source = from_checkpoint(args.checkpoint, recipe)
    programs = {"int8": from_quantized(full.program, from_checkpoint(args.checkpoint, recipe)),
                "mixed": from_quantized(mixed.program, from_checkpoint(args.checkpoint, recipe))}
    rows, logits = [], {}
    for backend in ("executorch", "tflite", "coreml"):
        variants = [("float", source, FLOAT[backend]), ("int8", programs["int8"], "int8"), ("mixed", programs["mixed"], "int8")]
        for label, src, precision in variants:
            out_dir = work / "artifacts" / label
            path = export(src, backend, precision, out_dir)
            runner = runtime.load(path)
            acc = evaluate(runner, val, reference)
            logits[backend, label] = acc.masks
            try:
                lat = measure(path, threads=args.threads, runs=args.runs).median_ms
            except AsppEdgeError as exc:  # Core ML off macOS, and only that: another backend's failure stops the run
                if backend != "coreml":
                    raise
                lat, why = None, str(exc).split(":", 1)[0]
            manifest = read_manifest(path)
            rows.append({
                "backend": backend, "program": label, "precision": precision, "artifact": path.name,
                "float_layers": manifest.get("quantization", {}).get("float_layers"),
                "miou": acc.miou, "miou_drop": acc.miou_drop, "agreement": acc.agreement, "sqnr_db": acc.sqnr_db,
                "size_mb": artifact_size(path) / 1e6, "latency_ms": lat, "evaluated_by": acc.evaluated_by,
                "backend_info": {k: manifest["backend_info"][k] for k in ("qdq_inside", "undelegated_ops", "conv_mac_fraction")
                                 if k in manifest["backend_info"]},
            })
            print(f"{backend:<10} {label:<6} drop {acc.miou_drop:6.3f}  agreement {acc.agreement:.4f}  "
                  f"{rows[-1]['size_mb']:.3f} MB  {lat if lat is None else f'{lat:.2f} ms'}")
    cross = {}
    for label in ("int8", "mixed"):
        for a, b in (("executorch", "tflite"), ("executorch", "coreml"), ("tflite", "coreml")):
            cross[f"{label}: {a} vs {b}"] = float((logits[a, label] == logits[b, label]).mean())
    made = provenance()
    header = {
        **made, "machine": machine_line(made["machine"]),
        "recipe": recipe.name, "checkpoint": str(args.checkpoint), "float_miou": reference.miou, "val_images": len(val),
        "max_drop": None if args.keep_float else args.max_drop, "float_layers": mixed.float_layers,
        "keep_float_auto": mixed.keep_float_auto, "program_miou_drop": mixed.miou_drop_points,
        "seconds": {"quantize_full_with_sensitivity": full_s, "sensitivity": full.sensitivity.seconds,
                    "quantize_mixed_auto": mixed_s},
        "threads": args.threads, "runs": args.runs,
    }
    deploy = deploy_rows(recipe, mixed.float_layers, args.deploy_size, work / "deploy", args) if args.deploy_size else []
    result = {**header, "sensitivity": full.sensitivity.to_dict(), "rows": rows, "cross_backend_agreement": cross,
              "deploy_size": args.deploy_size, "deploy_rows": deploy}
    write_text_atomic(f"{args.out}.json", json.dumps(result, indent=2))
    write_text_atomic(f"{args.out}.md", render(result, full.sensitivity.table(args.top)))
    print(render(result, full.sensitivity.table(args.top)))


def deploy_rows(recipe, float_layers: list[str], size: int, work: Path, args) -> list[dict]:
    """fp32, full int8 and mixed (`float_layers` in float) of the recipe's architecture at size x size,
    random weights, exported for ExecuTorch and LiteRT and each timed in a fresh process."""
    import torch

    from aspp_edge.export import ExportSource
    from aspp_edge.models import model_from_recipe
    from aspp_edge.pipeline.latency import at_deploy_size
    from aspp_edge.quantize.job import calibrated_ptq

    drecipe = at_deploy_size(recipe, size, 8, name=f"{recipe.name}_{size}")
    torch.manual_seed(0)
    model = model_from_recipe(drecipe).eval()
    sources = {"float": ExportSource(drecipe, model=model, name=drecipe.name)}
    for label, keep in (("int8", []), ("mixed", list(float_layers))):
        q = calibrated_ptq(model, drecipe, drecipe.replace(ptq={"keep_float": keep}).ptq)
        q.meta["weights"] = "random (torch.manual_seed(0))"
        q.save(work, f"{drecipe.name}_{label}")
        sources[label] = from_quantized(work / f"{drecipe.name}_{label}_int8.pt2")
    rows = []
    for backend in ("executorch", "tflite"):
        for label, src in sources.items():
            path = export(src, backend, "fp32" if label == "float" else "int8", work / "artifacts" / label)
            lat = measure(path, threads=args.threads, runs=args.runs)
            rows.append({"backend": backend, "program": label, "artifact": path.name, "size_mb": artifact_size(path) / 1e6,
                         "latency_ms": lat.median_ms, "p90_ms": lat.p90_ms,
                         "float_layers": read_manifest(path).get("quantization", {}).get("float_layers")})
            print(f"deploy {size}: {backend:<10} {label:<6} {rows[-1]['size_mb']:.3f} MB  {lat.median_ms:.2f} ms")
    return rows


def render(r: dict, sensitivity_table: str) -> str:
    lines = [f"# Mixed precision vs full int8 vs float ({r['recipe']} recipe)", "",
             f"- command: `{r['command']}` (code {r['git']})", f"- machine: {r['machine']}; date {r['date']}; one run",
             f"- versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}",
             f"- float val mIoU {r['float_miou']:.4f} on {r['val_images']} val images; latency: median of {r['runs']} runs, "
             f"each artifact in a fresh process, {r['threads'] or 'default'} threads",
             f"- sensitivity: {r['seconds']['sensitivity']:.0f} s; quantize + sensitivity {r['seconds']['quantize_full_with_sensitivity']:.0f} s; "
             f"quantize with keep_float auto {r['seconds']['quantize_mixed_auto']:.0f} s", "",
             "## Isolated sensitivity, top rows", "", "```", sensitivity_table, "```", "",
             (f"## keep_float auto, max_drop {r['max_drop']} points" if r["max_drop"] is not None else "## keep_float: a given list"), "",
             f"Layers kept in float: {', '.join(r['float_layers']) or '(none needed)'}; program drop "
             f"{r['program_miou_drop']:.3f} points (PyTorch int8 program on val)"
             + (f" (met: {r['keep_float_auto']['met']})." if r.get("keep_float_auto") else "."), "",
             "| backend | program | precision | mIoU drop (pts) | agreement | SQNR dB | size MB | latency ms | cost vs int8 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    int8_lat = {row["backend"]: row["latency_ms"] for row in r["rows"] if row["program"] == "int8"}
    for row in r["rows"]:
        lat = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.2f}"
        cost = "-"
        if row["program"] == "mixed" and row["latency_ms"] is not None and int8_lat.get(row["backend"]) is not None:
            cost = f"{row['latency_ms'] - int8_lat[row['backend']]:+.2f}"
        lines.append(f"| {row['backend']} | {row['program']} | {row['precision']} | {row['miou_drop']:.3f} | {row['agreement']:.4f} | "
                     f"{row['sqnr_db']:.1f} | {row['size_mb']:.3f} | {lat} | {cost} |")
    lines += ["", "Cross-backend argmax agreement on val: " + "; ".join(f"{k} {v:.4f}" for k, v in r["cross_backend_agreement"].items()),
              "", "Core ML latency is measured on macOS only (here the package runs in the MIL reference interpreter)."]
    if r.get("deploy_rows"):
        n = r["deploy_size"]
        lines += ["", f"## Latency at deploy size: the same architecture at {n}x{n}, the same float layers", "",
                  "Seeded random weights, int8 calibrated on 8 synthetic images (latency does not depend on trained values); "
                  f"median of {r['runs']} runs, each artifact in a fresh process.", "",
                  "| backend | program | size MB | median ms | p90 ms | cost vs int8 ms |", "|---|---|---|---|---|---|"]
        base = {row["backend"]: row["latency_ms"] for row in r["deploy_rows"] if row["program"] == "int8"}
        for row in r["deploy_rows"]:
            cost = f"{row['latency_ms'] - base[row['backend']]:+.2f}" if row["program"] == "mixed" else "-"
            lines.append(f"| {row['backend']} | {row['program']} | {row['size_mb']:.3f} | {row['latency_ms']:.2f} | {row['p90_ms']:.2f} | {cost} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
