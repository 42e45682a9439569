"""Deploy-size latency of int8 vs fp32 for chosen architectures, each artifact timed in a fresh process.

For each `head@backbone`: the recipe's model at the deploy configuration (resolution, width,
output stride), random weights (latency does not depend on trained values), PTQ with the shared
int8 scheme on the recipe's calibration images at that resolution, ExecuTorch and TFLite fp32 and
int8 exports, then `evaluate.latency.measure` per artifact (its own process, N timed runs).
Also records what each int8 artifact's runtime does with the graph: the .pte's delegated fraction,
the .tflite's Q/DQ inside and XNNPACK partitions. Writes OUT/deploy_latency.{json,md}.

    python benchmarks/deploy_latency.py --models lraspp@mobilenet_v3_large,sep_aspp@mobilenet_v3_large \
        --size 512 --width 1.0 --output-stride 8 --threads 2 --runs 20 --out /tmp/deploy
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from aspp_edge import create_model
from aspp_edge.calibration.calibrate import calibration_batches
from aspp_edge.config import load_recipe
from aspp_edge.data import calibration_dataset
from aspp_edge.evaluate.latency import measure
from aspp_edge.export import ExportSource, artifact_name, export
from aspp_edge.formats.manifest import read_manifest
from aspp_edge.evaluate.report import machine_line, provenance
from aspp_edge.fileio import write_text_atomic
from aspp_edge.models.stats import model_stats
from aspp_edge.quantize import quantize
from aspp_edge.runtime.litert import xnnpack_delegation


def build(base, key: str, args):
    head, _, backbone = key.partition("@")
    recipe = base.replace(
        model={"head": head, "backbone": backbone or base.model.backbone, "decoder": "lraspp" if head == "lraspp" else base.model.decoder,
               "output_stride": args.output_stride, "width_mult": args.width},
        data={"resolution": args.size}, ptq={"calib_size": args.calib, "batch_size": 4},
    )
    m = recipe.model
    torch.manual_seed(0)
    model = create_model(m.head, num_classes=recipe.num_classes, backbone=m.backbone, decoder=m.decoder, output_stride=m.output_stride,
                         width_mult=m.width_mult, head_channels=m.head_channels, dropout=m.dropout, input_size=args.size).eval()
    return recipe, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--models", default="lraspp@mobilenet_v3_large,sep_aspp@mobilenet_v3_large")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--output-stride", type=int, default=8)
    ap.add_argument("--calib", type=int, default=8, help="calibration images (ranges only: latency does not depend on them)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--reuse", action="store_true", help="time artifacts already exported into --out instead of exporting again")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    base = load_recipe(args.recipe)
    rows = []
    for key in args.models.split(","):
        started = time.perf_counter()
        recipe, model = build(base, key, args)
        stats = model_stats(model)
        calib_set, split = calibration_dataset(recipe)
        calib = calibration_batches(calib_set, recipe.ptq.calib_size, recipe.ptq.batch_size, seed=recipe.ptq.seed, split=split)
        q = quantize(model, recipe.ptq, calibration=calib)
        name = f"{key.replace('@', '_')}_os{args.output_stride}_{args.size}"
        source = ExportSource(recipe, model=model, program=q.convert(fold_quantize=False), method="ptq", name=name)
        for backend in ("executorch", "tflite"):
            for precision in ("fp32", "int8"):
                folder = out / key.replace("@", "_")
                existing = folder / artifact_name(source.int8_name if precision == "int8" else source.name, backend, precision)
                # --reuse: time the artifacts a previous run of the same configuration exported (e.g. again on a quiet machine)
                path = existing if args.reuse and existing.exists() else export(source, backend, precision, folder)
                info = read_manifest(path)["backend_info"]
                lat = measure(path, threads=args.threads, runs=args.runs)
                row = {"model": key, "backend": backend, "precision": precision, "gmacs": stats.macs / 1e9, "params_m": stats.params / 1e6,
                       "median_ms": lat.median_ms, "p90_ms": lat.p90_ms, "min_ms": lat.min_ms, "load_ms": lat.load_ms,
                       "peak_rss_mb": lat.peak_rss_mb, "size_mb": path.stat().st_size / 1e6, "evaluated_by": lat.evaluated_by}
                if backend == "executorch":
                    row["delegated_node_fraction"], row["undelegated_ops"] = info["node_fraction"], info["undelegated_ops"]
                else:
                    row["qdq_inside"] = len(info["qdq_inside"])
                    row["xnnpack"] = xnnpack_delegation(path)
                rows.append(row)
                print(json.dumps(row), flush=True)
        print(f"{key}: {time.perf_counter() - started:.0f} s", flush=True)
    made = provenance()
    header = {
        **made, "machine": machine_line(made["machine"]),
        "config": {"size": args.size, "width": args.width, "output_stride": args.output_stride, "threads": args.threads,
                   "runs": args.runs, "recipe": args.recipe, "classes": base.num_classes},
        "note": "one run; each artifact timed in its own process; random weights, PTQ ranges from the recipe's calib images",
    }
    write_text_atomic(out / "deploy_latency.json", json.dumps({**header, "rows": rows}, indent=2))
    write_text_atomic(out / "deploy_latency.md", render(header, rows))
    print(render(header, rows))


def render(header: dict, rows: list[dict]) -> str:
    lines = [f"# Deploy-size latency ({header['config']['size']}x{header['config']['size']}, width {header['config']['width']}, "
             f"OS{header['config']['output_stride']}, {header['config']['threads']} threads)", "",
             f"- command: `{header['command']}` (code {header['git']})", f"- machine: {header['machine']}; date {header['date']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in header['versions'].items())}", f"- {header['note']}", "",
             "| model | GMACs | runtime | fp32 ms | int8 ms | int8/fp32 | int8 graph |", "|---|---|---|---|---|---|---|"]
    by = {(r["model"], r["backend"], r["precision"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for backend in ("executorch", "tflite"):
            f, i = by[model, backend, "fp32"], by[model, backend, "int8"]
            graph = (f"{100 * i['delegated_node_fraction']:.0f}% of nodes in XNNPACK" if backend == "executorch" else
                     f"{i['qdq_inside']} Q/DQ inside, {i['xnnpack']['partitions']} XNNPACK partition(s), outside: {i['xnnpack']['ops_outside'] or 'none'}")
            lines.append(f"| {model} | {f['gmacs']:.2f} | {backend} | {f['median_ms']:.1f} | {i['median_ms']:.1f} | "
                         f"{i['median_ms'] / f['median_ms']:.2f} | {graph} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
