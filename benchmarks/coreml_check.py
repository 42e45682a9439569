"""Issue 6's per-variant table from a finished `aspp-edge run` folder, read from the files it wrote.

For each head and int8 method in the run: the Core ML packages run in the MIL reference
interpreter (or Core ML on macOS) against
- the PyTorch float model (fp16 package: argmax agreement),
- the PyTorch int8 Q/DQ program the package was converted from (W8A8: agreement and SQNR),
- the .pte and .tflite of the same program in their own runtimes (W8A8: agreement).
Prints a markdown table and writes OUT (JSON).

    python benchmarks/coreml_check.py runs/quick-ablation --recipe quick --out /tmp/coreml_check.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from aspp_edge import runtime
from aspp_edge.checkpoint import load_model
from aspp_edge.config import load_recipe
from aspp_edge.data import build_dataset
from aspp_edge.metrics import logits_sqnr_db, pixel_agreement
from aspp_edge.evaluate.report import provenance
from aspp_edge.fileio import write_text_atomic
from aspp_edge.quantize import load_quantized


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="an `aspp-edge run` output folder")
    ap.add_argument("--recipe", default="default", help="the recipe the run was made with")
    ap.add_argument("--images", type=int, default=64, help="val images compared")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    recipe = load_recipe(args.recipe)
    heads = sorted(p.parent.parent.name for p in args.run.glob("*/float/float.pt"))
    if not heads:
        raise SystemExit(f"{str(args.run)!r} holds no finished run (no <head>/float/float.pt)")
    val = build_dataset(recipe, "val")
    images = torch.stack([val[i][0] for i in range(min(args.images, len(val)))])
    rows = []
    for head in tqdm(heads, desc="heads"):
        folder, prefix = args.run / head, f"{recipe.name}_{head}"
        model, _, _ = load_model(folder / "float" / "float.pt", recipe.replace(model={"head": head}))
        with torch.no_grad():
            float_logits = model.eval()(images).numpy()
        fp16 = runtime.load(folder / "artifacts" / f"{prefix}_coreml_fp16.mlpackage")
        row = {"head": head, "evaluated_by": fp16.evaluated_by, "fp16_vs_float": pixel_agreement(fp16.predict(images), float_logits)}
        for method in ("ptq", "qat"):
            with torch.no_grad():
                program = load_quantized(folder / "quant" / f"{prefix}_{method}_int8.pt2")(images).numpy()
            w8a8 = runtime.load(folder / "artifacts" / f"{prefix}_{method}_coreml_int8.mlpackage").predict(images)
            row[f"{method}_vs_program"] = pixel_agreement(w8a8, program)
            row[f"{method}_sqnr_db"] = logits_sqnr_db(w8a8, program)
            for backend, ext in (("executorch", "pte"), ("tflite", "tflite")):
                other = runtime.load(folder / "artifacts" / f"{prefix}_{method}_{backend}_int8.{ext}").predict(images)
                row[f"{method}_vs_{backend}"] = pixel_agreement(w8a8, other)
        rows.append(row)

    print(f"\n{len(images)} val images of recipe {recipe.name!r}, Core ML by {rows[0]['evaluated_by']}\n")
    print("| head | fp16 vs float | W8A8 ptq vs program (SQNR dB) | ptq vs .pte / .tflite | W8A8 qat vs program (SQNR dB) | qat vs .pte / .tflite |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r['fp16_vs_float']:.4f}"]
        for m in ("ptq", "qat"):
            cells += [f"{r[f'{m}_vs_program']:.4f} ({r[f'{m}_sqnr_db']:.1f})", f"{r[f'{m}_vs_executorch']:.4f} / {r[f'{m}_vs_tflite']:.4f}"]
        print(f"| {r['head']} | " + " | ".join(cells) + " |")
    write_text_atomic(args.out, json.dumps({**provenance(), "run": str(args.run), "recipe": recipe.name, "images": len(images), "rows": rows},
                                           indent=2))


if __name__ == "__main__":
    main()
