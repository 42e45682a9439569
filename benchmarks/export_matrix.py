"""Per-head export table: every head on the recipe's architecture -> PTQ -> all three backends.

For each head: train the float model (or reuse --checkpoint for the recipe's own head), PTQ with
the recipe's ptq: section, export ExecuTorch/TFLite fp32+int8 and Core ML fp16+int8, load the
.pte/.tflite back in their runtimes and compare on val images. Prints a markdown table and writes
OUT/export_matrix.json.

    python benchmarks/export_matrix.py --recipe default --epochs 3 --checkpoint runs/x/float.pt --out /tmp/matrix
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from aspp_edge import runtime
from aspp_edge.calibration.calibrate import calibration_batches
from aspp_edge.calibration.report import sqnr_db
from aspp_edge.config import load_recipe
from aspp_edge.data import build_dataset, calibration_dataset
from aspp_edge.export import export, from_checkpoint, from_quantized
from aspp_edge.formats.manifest import read_manifest
from aspp_edge.fileio import write_text_atomic
from aspp_edge.models import list_models
from aspp_edge.quantize import quantize
from aspp_edge.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--heads", default="all")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs for heads without a checkpoint")
    ap.add_argument("--checkpoint", default=None, help="float checkpoint of the recipe's own head")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    base = load_recipe(args.recipe)
    heads = list_models() if args.heads == "all" else args.heads.split(",")
    out = Path(args.out)
    val = build_dataset(base, "val")
    images = torch.stack([val[i][0] for i in range(args.images)])
    rows = []
    for head in heads:
        started = time.perf_counter()
        if head == base.model.head and args.checkpoint:
            recipe, ckpt, epochs = base, Path(args.checkpoint), base.train.epochs
        else:
            recipe, epochs = base.replace(model={"head": head}, train={"epochs": args.epochs}), args.epochs
            ckpt = train(recipe, out / head / "float", progress=False).checkpoint
        source = from_checkpoint(ckpt, recipe, name=f"{recipe.name}_{head}")
        calib_set, calib_split = calibration_dataset(recipe)
        calib = calibration_batches(calib_set, recipe.ptq.calib_size, recipe.ptq.batch_size, seed=recipe.ptq.seed, split=calib_split)
        q = quantize(source.model, recipe.ptq, calibration=calib)
        q.meta = {"recipe": recipe.to_dict(), "source_checkpoint_sha256": source.checkpoint_sha256}
        source = from_quantized(q.save(out / head, f"{recipe.name}_{head}_ptq"), source)
        with torch.no_grad():
            ref, qref = source.model(images).numpy(), source.program(images).numpy()
        row = {"head": head, "epochs": epochs}
        logits = {}
        for backend, precision in (("executorch", "fp32"), ("executorch", "int8"), ("tflite", "fp32"), ("tflite", "int8"),
                                   ("coreml", "fp16"), ("coreml", "int8")):
            path = export(source, backend, precision, out / head)
            manifest = read_manifest(path)
            key = f"{backend}_{precision}"
            row[f"{key}_mb"] = manifest["size_bytes"] / 1e6
            info = manifest["backend_info"]
            if backend == "executorch":
                row[f"{key}_conv_mac_delegated"] = info["conv_mac_fraction"]
                row[f"{key}_nodes_delegated"] = f"{info['nodes_delegated']}/{info['nodes_total']}"
            if backend == "tflite":
                row[f"{key}_qdq_inside"] = len(info["qdq_inside"])
                row[f"{key}_qdq_io"] = len(info["qdq_at_io"])
            if backend == "coreml":
                continue
            y = runtime.load(path).predict(images)
            logits[key] = y
            target = qref if precision == "int8" else ref
            row[f"{key}_max_abs"] = float(np.abs(y - target).max())
            row[f"{key}_agreement"] = float((y.argmax(1) == target.argmax(1)).mean())
            row[f"{key}_sqnr_db"] = sqnr_db(torch.from_numpy(target), torch.from_numpy(y))
        row["pte_vs_tflite_int8_agreement"] = float((logits["executorch_int8"].argmax(1) == logits["tflite_int8"].argmax(1)).mean())
        row["int8_program_vs_float_agreement"] = float((qref.argmax(1) == ref.argmax(1)).mean())
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_text_atomic(out / "export_matrix.json", json.dumps(rows, indent=2))
    print("\n| head | ET int8 conv MACs delegated | TFL int8 Q/DQ inside (at I/O) | ET fp32 max abs | TFL fp32 max abs "
          "| ET int8 agree / SQNR | TFL int8 agree / SQNR | pte vs tflite int8 | MB pte fp32/int8 | MB tflite fp32/int8 | MB mlpackage fp16/int8 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        delegated = r["executorch_int8_conv_mac_delegated"]
        print(f"| {r['head']} | {'unknown' if delegated is None else f'{100 * delegated:.0f}%'} | {r['tflite_int8_qdq_inside']} ({r['tflite_int8_qdq_io']}) "
              f"| {r['executorch_fp32_max_abs']:.1e} | {r['tflite_fp32_max_abs']:.1e} "
              f"| {r['executorch_int8_agreement']:.4f} / {r['executorch_int8_sqnr_db']:.1f} dB "
              f"| {r['tflite_int8_agreement']:.4f} / {r['tflite_int8_sqnr_db']:.1f} dB | {r['pte_vs_tflite_int8_agreement']:.4f} "
              f"| {r['executorch_fp32_mb']:.2f} / {r['executorch_int8_mb']:.2f} | {r['tflite_fp32_mb']:.2f} / {r['tflite_int8_mb']:.2f} "
              f"| {r['coreml_fp16_mb']:.2f} / {r['coreml_int8_mb']:.2f} |")


if __name__ == "__main__":
    main()
