"""Why a Core ML W8A8 package agrees less with its int8 program than the .pte/.tflite of that program.

For one head and int8 method of a finished `aspp-edge run`, against the PyTorch int8 Q/DQ program
the artifacts were made from (argmax agreement and logits SQNR on val images with whole pixel
values, which is what the Core ML image input receives):

- the .pte and the .tflite (integer kernels: int32 accumulation, requantization),
- the shipped W8A8 package (an fp16 program: fp16 scales, weights and biases, fp16 tensors between
  ops), run by the MIL reference interpreter,
- the same package with its op results kept in float32 (its fp16 constants unchanged),
- the same int8 program converted with compute_precision FLOAT32 (fp32 constants and tensors).

Prints a table and writes OUT (JSON).

    python benchmarks/coreml_w8a8_precision.py runs/quick --recipe quick --images 64 --out F.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from aspp_edge import runtime
from aspp_edge.config import load_recipe
from aspp_edge.data import build_dataset
from aspp_edge.metrics import logits_sqnr_db, pixel_agreement
from aspp_edge.export import coreml
from aspp_edge.evaluate.report import provenance
from aspp_edge.fileio import write_text_atomic
from aspp_edge.quantize import load_quantized
from aspp_edge.runtime.mil import MILProgram


def whole_pixel_images(recipe, n: int) -> torch.Tensor:
    val = build_dataset(recipe, "val")
    images = torch.stack([val[i][0] for i in range(min(n, len(val)))])
    mean = torch.tensor(recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(recipe.data.std).view(1, 3, 1, 1)
    pixels = ((images * std + mean) * 255).round().clamp(0, 255)
    return (pixels / 255 - mean) / std


def folded(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The program with its weight quantize ops folded into int8 constants, as the exporter converts it."""
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint

    program = copy.deepcopy(program)
    constant_fold(program, _quant_node_constraint)
    return program


def fp16_census(program: MILProgram) -> dict[str, object]:
    """How much of the package is fp16: op results, and the dtypes of the quantize/dequantize scales."""
    results = Counter(np.dtype(dtype).name for _, _, _, outputs in program.ops for _, dtype, _ in outputs)
    scales = Counter()
    for op_type, _, inputs, _ in program.ops:
        if op_type in ("quantize", "dequantize"):
            for name in inputs.get("scale", []):
                value = program.constants.get(name) if isinstance(name, str) else name
                scales[np.asarray(value).dtype.name] += 1
    return {"op_result_dtypes": dict(results), "qdq_scale_dtypes": dict(scales)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="an `aspp-edge run` output folder")
    ap.add_argument("--recipe", default="default", help="the recipe the run was made with")
    ap.add_argument("--head", default=None, help="head (default: the recipe's)")
    ap.add_argument("--method", default="ptq", choices=("ptq", "qat"))
    ap.add_argument("--images", type=int, default=64, help="val images compared")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    recipe = load_recipe(args.recipe)
    head = args.head or recipe.model.head
    recipe = recipe.replace(model={"head": head})
    folder, prefix = args.run / head, f"{recipe.name}_{head}_{args.method}"
    images = whole_pixel_images(recipe, args.images)
    program = load_quantized(folder / "quant" / f"{prefix}_int8.pt2")
    with torch.no_grad():
        reference = program(images).numpy()
    package = folder / "artifacts" / f"{prefix}_coreml_int8.mlpackage"
    runner = runtime.load(package)
    if getattr(runner, "program", None) is None:
        raise SystemExit("this compares MIL reference interpreter variants: run it off macOS")
    rows, logits = [], {}
    for backend, ext in (("executorch", "pte"), ("tflite", "tflite")):
        logits[f".{ext} ({backend})"] = runtime.load(folder / "artifacts" / f"{prefix}_{backend}_int8.{ext}").predict(images)
    shipped = runner.program
    logits["W8A8 package as shipped (fp16 constants, fp16 tensors)"] = runner.predict(images)
    runner.program = MILProgram(package, fp16_values=False)
    logits["same package, op results kept in fp32 (fp16 constants)"] = runner.predict(images)
    with tempfile.TemporaryDirectory() as tmp:
        example = torch.randn(1, 3, recipe.data.resolution, recipe.data.resolution, generator=torch.Generator().manual_seed(0))
        fp32_package = Path(tmp) / "fp32_compute.mlpackage"
        coreml.convert(folded(program), example, recipe, precision="fp32").save(str(fp32_package))  # fp32 = FLOAT32 compute precision
        runner.program = MILProgram(fp32_package)
        logits["same program converted with FLOAT32 compute precision"] = runner.predict(images)
        fp32_census = fp16_census(runner.program)
    pte = next(iter(logits.values()))
    for name, y in logits.items():
        rows.append({"artifact": name, "agreement_vs_program": pixel_agreement(y, reference), "sqnr_db_vs_program": logits_sqnr_db(y, reference),
                     "agreement_vs_pte": pixel_agreement(y, pte)})
    result = {**provenance(), "run": str(args.run), "recipe": recipe.name, "head": head, "method": args.method, "images": len(images),
              "shipped_package": fp16_census(shipped), "fp32_package": fp32_census, "rows": rows}
    print(f"\n{head} {args.method}, {len(images)} val images; against the PyTorch int8 program\n")
    print("| artifact | agreement | SQNR dB | agreement vs .pte |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['artifact']} | {r['agreement_vs_program']:.4f} | {r['sqnr_db_vs_program']:.1f} | {r['agreement_vs_pte']:.4f} |")
    print("\nshipped package:", json.dumps(result["shipped_package"]), "\nFLOAT32 package:", json.dumps(fp32_census))
    write_text_atomic(args.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
