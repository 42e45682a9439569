"""int8 against fp32 per convolution kind, on this CPU, in ExecuTorch/XNNPACK and LiteRT.

Issue 30 asks two questions this script answers with measurements:
1. Does int8 pay for depthwise convolutions here? Three stacked 3x3 depthwise convolutions (+ReLU)
   at each channel count and image size, fp32 and int8 (the shared scheme, minmax ranges on random
   images), exported as `.pte` and `.tflite` and timed each in its own process.
2. Why is ExecuTorch's int8 1x1 throughput below LiteRT's? The runtime-peak artifact (four 256->256
   1x1 convolutions at 64x64, `evaluate.latency.peak_artifacts`) timed at 1 and 2 threads in both
   runtimes, with the XNNPACK operators ExecuTorch's ETDump names for it.

Weights are random (speed does not depend on them); raw artifacts (no manifest), random inputs.
Writes OUT/conv_kernels.{json,md}.

    python benchmarks/conv_kernels.py --out /tmp/ck --runs 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from aspp_edge.config import PTQConfig
from aspp_edge.evaluate.latency import PEAK_CHANNELS, PEAK_LAYERS, PEAK_SIZE, etdump_kinds, measure, peak_artifacts, peak_macs
from aspp_edge.evaluate.report import machine_line, provenance
from aspp_edge.export import executorch as et
from aspp_edge.export import tflite as tfl
from aspp_edge.export.common import folded
from aspp_edge.fileio import write_text_atomic
from aspp_edge.quantize import quantize

DEPTHWISE_LAYERS = 3


def depthwise_stack(channels: int) -> nn.Module:
    layers = []
    for _ in range(DEPTHWISE_LAYERS):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def depthwise_artifacts(folder: Path, channels: int, size: int) -> dict[tuple[str, str], Path]:
    """(runtime, precision) -> the raw artifact of a depthwise stack, built once into `folder`."""
    paths = {(rt, dt): folder / f"dw{DEPTHWISE_LAYERS}x{channels}_{size}_{rt}_{dt}{ext}"
             for rt, ext in (("executorch", ".pte"), ("tflite", ".tflite")) for dt in ("fp32", "int8")}
    if all(p.exists() for p in paths.values()):
        return paths
    torch.manual_seed(0)
    model = depthwise_stack(channels)
    example = torch.randn(1, channels, size, size)
    program = quantize(model, PTQConfig(observer="minmax"), calibration=[torch.randn(2, channels, size, size)]).convert(fold_quantize=False)
    with torch.no_grad():
        build = {("executorch", "fp32"): lambda: et.to_pte(model, example)[0],
                 ("executorch", "int8"): lambda: et.to_pte(folded(program), example)[0],
                 ("tflite", "fp32"): lambda: tfl.convert(model, example, None, int8=False, scalar_input=False),
                 ("tflite", "int8"): lambda: tfl.convert(program, example, None, int8=True, scalar_input=False)}
        for key, path in paths.items():
            if not path.exists():
                write_bytes_atomic(path, build[key]())
    return paths


def write_bytes_atomic(path: Path, data: bytes) -> None:
    from aspp_edge.fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def etdump_kinds_of(path: Path, threads: int, runs: int = 5) -> dict[str, float]:
    """Median ms per XNNPACK operator kind (ETDump) of a raw `.pte` with a float input, at `threads`."""
    from executorch.extension.pybindings import portable_lib

    from aspp_edge.runtime.executorch import set_threads

    set_threads(threads)
    module = portable_lib._load_for_executorch(str(path), enable_etdump=True)
    x = torch.randn(tuple(module.method_meta("forward").input_tensor_meta(0).sizes()))
    return etdump_kinds(module, x, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", default="16,64,256")
    ap.add_argument("--sizes", default="32,128")
    ap.add_argument("--threads", type=int, default=2, help="threads of the depthwise timings (the 1x1 study uses 1 and 2)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    configs = [(int(c), int(s)) for c in args.channels.split(",") for s in args.sizes.split(",")]
    depthwise = []
    for channels, size in tqdm(configs, desc="depthwise", unit="config"):
        paths = depthwise_artifacts(out / "artifacts", channels, size)
        row = {"channels": channels, "size": size,
               "gmacs": DEPTHWISE_LAYERS * 9 * channels * size * size / 1e9}
        for (rt, dt), path in paths.items():
            row[f"{rt} {dt} ms"] = measure(path, threads=args.threads, runs=args.runs, warmup=3, raw=True).median_ms
        for rt in ("executorch", "tflite"):
            row[f"{rt} int8/fp32"] = row[f"{rt} int8 ms"] / row[f"{rt} fp32 ms"]
        depthwise.append(row)
        tqdm.write(json.dumps(row))
    pointwise = []
    peak = peak_artifacts(out / "peak")
    for threads in tqdm((1, 2), desc="1x1", unit="threads"):
        row = {"threads": threads}
        for (rt, dt), path in peak.items():
            ms = measure(path, threads=threads, runs=args.runs, warmup=3, raw=True).median_ms
            row[f"{rt} {dt} ms"], row[f"{rt} {dt} GMAC/s"] = ms, peak_macs() / 1e9 / (ms / 1e3)
        row["executorch int8 ops"] = etdump_kinds_of(peak["executorch", "int8"], threads)
        row["executorch fp32 ops"] = etdump_kinds_of(peak["executorch", "fp32"], threads)
        pointwise.append(row)
        tqdm.write(json.dumps(row))
    made = provenance()
    doc = {**made, "machine_line": machine_line(made["machine"]), "runs": args.runs, "depthwise_threads": args.threads,
           "note": "one run; each artifact timed in its own process (median of the runs); random weights and inputs",
           "depthwise": depthwise, "pointwise": pointwise, "seconds": time.perf_counter() - started}
    write_text_atomic(out / "conv_kernels.json", json.dumps(doc, indent=2))
    write_text_atomic(out / "conv_kernels.md", render(doc))
    print(render(doc))


def render(doc: dict) -> str:
    lines = ["# int8 against fp32 per convolution kind (ExecuTorch/XNNPACK and LiteRT)", "",
             f"- command: `{doc['command']}` (code {doc['git']})", f"- machine: {doc['machine_line']}; date {doc['date']}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in doc['versions'].items())}", f"- {doc['note']}; {doc['runs']} timed runs", "",
             f"## {DEPTHWISE_LAYERS} stacked 3x3 depthwise convolutions (+ReLU), {doc['depthwise_threads']} threads", "",
             "| channels | size | MMACs | ExecuTorch fp32 ms | int8 ms | int8/fp32 | LiteRT fp32 ms | int8 ms | int8/fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["depthwise"]:
        lines.append(f"| {r['channels']} | {r['size']} | {1e3 * r['gmacs']:.1f} | {r['executorch fp32 ms']:.3f} | {r['executorch int8 ms']:.3f} | "
                     f"{r['executorch int8/fp32']:.2f} | {r['tflite fp32 ms']:.3f} | {r['tflite int8 ms']:.3f} | {r['tflite int8/fp32']:.2f} |")
    lines += ["", f"## {PEAK_LAYERS} stacked {PEAK_CHANNELS}->{PEAK_CHANNELS} 1x1 convolutions at {PEAK_SIZE}x{PEAK_SIZE}", "",
              "| threads | ExecuTorch fp32 GMAC/s | int8 GMAC/s | LiteRT fp32 GMAC/s | int8 GMAC/s | ExecuTorch/LiteRT int8 | "
              "ExecuTorch int8 operators (ETDump, ms) | ExecuTorch fp32 operators (ETDump, ms) |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["pointwise"]:
        ops = ["; ".join(f"{k} {v:.3f}" for k, v in sorted(r[f"executorch {dt} ops"].items(), key=lambda kv: -kv[1])) for dt in ("int8", "fp32")]
        lines.append(f"| {r['threads']} | {r['executorch fp32 GMAC/s']:.0f} | {r['executorch int8 GMAC/s']:.0f} | {r['tflite fp32 GMAC/s']:.0f} | "
                     f"{r['tflite int8 GMAC/s']:.0f} | {r['executorch int8 GMAC/s'] / r['tflite int8 GMAC/s']:.2f} | {ops[0]} | {ops[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
