"""The float reference on CUDA vs on the CPU, and artifacts measured against each.

Runs where torch sees a GPU (it also runs without one, CPU only). Needs torch and, for the
artifacts, their runtimes; nothing from the export stack, so it runs on a GPU machine that has
only torch and ai-edge-litert:

    python benchmarks/cuda_reference.py --checkpoint runs/default/sep_aspp/float/float.pt \
        --artifacts runs/default/sep_aspp/artifacts/*.tflite --out cuda_reference.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from aspp_edge import runtime
from aspp_edge.checkpoint import load_model
from aspp_edge.data import build_dataset
from aspp_edge.evaluate.accuracy import evaluate, float_reference
from aspp_edge.metrics import logits_sqnr_db
from aspp_edge.evaluate.report import provenance
from aspp_edge.fileio import write_text_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--artifacts", nargs="*", default=[])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model, recipe, _ = load_model(args.checkpoint)
    val = build_dataset(recipe, "val")
    devices = ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
    refs, result = {}, {**provenance(), "checkpoint": args.checkpoint, "recipe": recipe.name, "images": len(val), "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "references": {}, "artifacts": []}
    for device in devices:
        started = time.perf_counter()
        refs[device] = float_reference(model, val, device=device, batch_size=recipe.train.batch_size)
        result["references"][device] = {"miou": refs[device].miou, "pixel_accuracy": refs[device].pixel_accuracy,
                                        "seconds": time.perf_counter() - started}
    if "cuda" in refs:
        cuda, cpu = refs["cuda"].logits, refs["cpu"].logits
        result["cuda_vs_cpu"] = {"sqnr_db": logits_sqnr_db(cuda, cpu), "max_abs": float(np.abs(cuda - cpu).max()),
                                 "agreement": float((cuda.argmax(1) == cpu.argmax(1)).mean()),
                                 "tf32_conv": torch.backends.cudnn.allow_tf32}
    for path in args.artifacts:
        runner = runtime.load(path)
        for device, ref in refs.items():
            acc = evaluate(runner, val, ref, batch_size=recipe.train.batch_size)
            result["artifacts"].append({"artifact": Path(path).name, "reference_device": device, **acc.to_dict()})
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
